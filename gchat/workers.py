"""--workers N: a supervisor that runs N gchat processes on one port.

One gchat process is one event loop on one core.  `gchat --workers N
--redis URL` runs N of them on this machine: each worker is a node of the
cluster (the Redis bus lets a client on one worker see a client on
another), and they share the listening ports with SO_REUSEPORT.  The
supervisor itself serves no client.  It is stdlib only: no gevent, no hub.

Design, and why:

* SO_REUSEPORT, not one listening socket inherited by every worker.  Each
  worker binds its own socket (`--reuse-port`, server._Listener) and the
  kernel hashes each new connection to one of them.  Each worker has its
  own accept queue: no herd of workers woken for one connection, and no
  worker takes more than its share because it happened to wake first (the
  imbalance of a shared queue).  And a worker is an ordinary gchat
  process: nothing here knows how gchat serves.  The cost: connections
  still waiting in a dying worker's queue are reset; they reconnect, as
  that worker's clients must anyway.

* Ports first.  With --port 0 (or --http/--admin 0) each worker would pick
  a port of its own.  The supervisor binds a placeholder socket with
  SO_REUSEPORT on each port, and does not listen() on it: a bound socket
  that does not listen takes no connection, but it fixes port 0's pick,
  and it holds the port for the supervisor's life, so that a restarted
  worker finds its port free even if every other worker is gone.  A port
  in use by another program fails here, before any worker starts.

* A worker is `python -m gchat` with the supervisor's own argv, followed
  by --port P --reuse-port --workers 0 (and --http, --admin with their
  concrete ports).  argparse keeps an option's last occurrence and the
  command line beats --config's file, so everything else the user gave
  applies to each worker unchanged; `--workers 0` also beats a config
  file's `workers =`, so that a worker never supervises.

* A link per worker: a socketpair, whose one end the worker inherits
  (LINK_ENV names its descriptor; WORKER_ENV its index, which names the
  worker in its log).
  - Readiness: the worker writes one byte on it once it serves (the moment
    a lone gchat says READY=1 to systemd).  The supervisor logs "listening
    on" only when every worker has, so whoever waits for that line
    (scripts, tests, READY=1 to systemd, which the supervisor sends) can
    connect at once, whichever worker the kernel picks.  Workers log
    "serving on" instead, so that "listening on" stays the one to wait for.
  - Lifeline: a worker stops, gracefully, when its end reads end-of-file,
    that is when the supervisor is gone, even by SIGKILL, so that no
    orphan keeps serving the port.  (prctl(PR_SET_PDEATHSIG) would need
    Linux and a preexec_fn, and would not say why the worker stopped.)

* Restarts.  A worker that exits without being asked to is logged and
  started again with the same arguments after RESTART_DELAY_MIN, a delay
  that doubles up to RESTART_DELAY_MAX while it keeps dying soon after its
  start.  The other workers serve meanwhile; the dead one's clients lost
  their connections and reconnect to any worker, and the bus declares the
  dead node lost, so that everyone else sees them leave, then come back.
  A worker that exits before the whole set has ever served is not
  restarted: at start an exit means a wrong option or an unreachable
  Redis, which a restart loop would only repeat.  The supervisor then
  stops the others and exits with that worker's status, after the
  worker's own error line (the workers write to the supervisor's stderr).

* Signals.  SIGTERM and SIGINT: SIGTERM to every worker, each of which
  stops as a lone gchat does (clients are told, output is flushed for up
  to --shutdown-timeout); the supervisor waits for them all, kills any
  still running after stop_grace(), and exits 0.  SIGHUP is passed on
  (the workers reload their TLS certificates).  Signals are read off
  signal.set_wakeup_fd in the selectors loop: the byte written is the
  signal's number, so no work is done in a signal handler and no signal
  is missed between two checks.

* systemd: with Type=notify the supervisor says READY=1 (once every worker
  serves) and STOPPING=1, and pings a WatchdogSec= watchdog itself, which
  then watches the supervisor only.  The workers get no NOTIFY_SOCKET.
  Socket activation is refused by the CLI: the sockets systemd passes are
  one listening socket per port, which SO_REUSEPORT workers cannot share.
"""

import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Optional

from gchat import __version__, logs, systemd
from gchat.protocol import format_address

log = logging.getLogger("gchat")

# The environment of a worker: its index (1..N), and the descriptor of its
# end of the link to the supervisor.
WORKER_ENV = "GCHAT_WORKER"
LINK_ENV = "GCHAT_WORKER_FD"
# What a worker writes on its link once it serves.
READY = b"R"
# The node id of the worker that last ran in a slot, given to the one that
# replaces it, which declares it lost at once (bus/room_bus.py: retire):
# its clients are reconnecting, and must find their names free, not wait
# --node-timeout for the heartbeat to expire.
PREDECESSOR_ENV = "GCHAT_PREDECESSOR"

# A worker that dies is started again after this long: a one-off death (an
# OOM kill, a stray kill -9) is repaired at once.
RESTART_DELAY_MIN = 0.1
# The delay doubles, up to this, while a worker keeps dying soon after its
# start (Redis gone, a full disk): a retry every few seconds notices the
# fix soon enough, where a tight loop would burn a core on Python start-ups
# (a few tenths of a second of CPU each) and flood the log.
RESTART_DELAY_MAX = 5.0
# A worker that ran this long before dying died of something new, not of
# what killed its predecessor: its delay starts again from the minimum.
STABLE_AFTER = 10.0
# On top of what a worker's own graceful stop may take (stop_grace()): the
# bus's last words, closing, and the interpreter's exit.
STOP_MARGIN = 3.0
# The loop wakes at least this often, whatever it waits for: a safety net,
# since SIGCHLD and the links already wake it for every event.
POLL_INTERVAL = 1.0

# Variables a worker must not inherit: the supervisor alone talks to
# systemd, and the listening sockets are not passed on.
_NOT_FOR_WORKERS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID") + systemd.LISTEN_VARIABLES


def supervise(config, argv, count: int, environ) -> int:
    """Run count workers of `gchat argv` (argv: the command line, without
    the program) until SIGTERM or SIGINT; the exit status."""
    return Supervisor(config, argv, count, environ).run()


def stop_grace(config) -> float:
    """Seconds a worker gets to stop after SIGTERM before it is killed:
    ChatServer.stop() waits for the hub, then for the connections, each up
    to --shutdown-timeout plus a second; STOP_MARGIN on top."""
    return 2 * (config.shutdown_flush_timeout + 1.0) + STOP_MARGIN


def reserve_port(host: str, port: int) -> socket.socket:
    """A placeholder for (host, port): bound with SO_REUSEPORT, not
    listening.  It takes no connection, but port 0 becomes a concrete port
    (getsockname) and the port stays this user's while it is open."""
    # gevent's rule (baseserver.parse_address) for the family of a listener
    # on (host, port), so that the workers' sockets bind what this one does.
    family = socket.AF_INET6 if not host or ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        # "cannot listen on HOST:PORT: ...", as a lone gchat says it.
        raise OSError(err.errno, f"on {format_address(host, port)}: {err.strerror}") from None
    return sock


def describe_exit(returncode: int) -> str:
    """ "exit code 1", "killed by signal 9 (SIGKILL)"."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"killed by signal {-returncode}"
    return f"killed by signal {-returncode} ({name})"


class Worker:
    """One worker slot: its index, and its current process and link."""

    def __init__(self, index: int):
        self.index = index
        self.proc: Optional[subprocess.Popen[bytes]] = None  # while it runs
        self.link: Optional[socket.socket] = None  # the supervisor's end of the socketpair
        self.ready = False  # it said it serves
        self.node: Optional[str] = None  # its cluster node id, as it said when ready
        self.started = 0.0  # time.monotonic() at its start
        self.delay = RESTART_DELAY_MIN  # before the next restart
        self.due: Optional[float] = None  # time.monotonic() of a pending restart

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None


class Supervisor:
    def __init__(self, config, argv, count: int, environ):
        if count < 1:
            raise ValueError("count must be at least 1")
        self.config = config
        self.argv = list(argv)
        self.environ = environ
        self.workers = [Worker(index) for index in range(1, count + 1)]
        self.selector = selectors.DefaultSelector()
        # "line", "http", "admin" -> bound socket
        self.placeholders: dict[str, socket.socket] = {}
        self.command: Optional[list[str]] = None  # set by run()
        self.serving = False  # every worker has been ready once
        self.stopping = False
        self.stop_deadline: Optional[float] = None  # set with stopping
        self.killed = False  # stragglers were killed at the deadline
        self.exit_code = 0
        self.notifier = systemd.Notifier(systemd.notify_address(environ.get("NOTIFY_SOCKET")))
        try:
            self.watchdog = systemd.watchdog_interval(environ, os.getpid())
        except ValueError as err:
            log.warning("systemd watchdog off: %s", err)
            self.watchdog = None
        self.next_ping = time.monotonic()

    # The run --------------------------------------------------------------

    def run(self) -> int:
        try:
            extra = self._reserve_ports()
        except OSError as err:
            log.error("cannot listen %s", err.strerror)
            self._close_placeholders()
            return 1
        self.command = [sys.executable, "-m", "gchat", *self.argv, *extra]
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self.selector.register(wake_r, selectors.EVENT_READ, None)
        previous_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        previous = {
            signum: signal.signal(signum, _wake_only)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        }
        try:
            for worker in self.workers:
                self._start(worker)
            while not (self.stopping and not self._running()):
                self._step(wake_r)
            log.info("stopped: %d workers", len(self.workers))
            return self.exit_code
        finally:
            self._kill_all()  # after a fault here; a no-op after a clean stop
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_fd)
            self.selector.close()
            wake_r.close()
            wake_w.close()
            self._close_placeholders()
            self.notifier.close()

    def _reserve_ports(self) -> list:
        """Placeholders for the line port and the HTTP ports; the options
        that give the workers the concrete ports."""
        config = self.config
        line = self.placeholders["line"] = reserve_port(config.host, config.port)
        extra = ["--port", str(line.getsockname()[1]), "--reuse-port", "--workers", "0"]
        for name, address in (("http", config.http), ("admin", config.admin)):
            if address is not None:
                sock = self.placeholders[name] = reserve_port(*address)
                extra += [f"--{name}", format_address(address[0], sock.getsockname()[1])]
        return extra

    def _step(self, wake_r):
        for key, _ in self.selector.select(self._timeout()):
            if key.fileobj is wake_r:
                self._signals(wake_r)
            else:
                self._link_readable(key.data)
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is not None:
                self._exited(worker)
        now = time.monotonic()
        for worker in self.workers:
            if worker.due is not None and now >= worker.due:
                worker.due = None
                self._start(worker)
        if not self.serving and not self.stopping and all(w.ready for w in self.workers):
            self._announce()
        # (stop_deadline is set whenever stopping is.)
        if self.stopping and not self.killed and now >= self.stop_deadline:  # type: ignore[operator]
            self._kill_stragglers()
        if self.watchdog is not None and now >= self.next_ping:
            self.notifier.watchdog()
            self.next_ping = now + self.watchdog

    def _timeout(self) -> float:
        now = time.monotonic()
        times = [w.due for w in self.workers if w.due is not None]
        if self.stopping and not self.killed:
            times.append(self.stop_deadline)  # type: ignore[arg-type]  # set with stopping
        if self.watchdog is not None:
            times.append(self.next_ping)
        return max(0.0, min([now + POLL_INTERVAL, *times]) - now)

    def _running(self) -> bool:
        return any(w.proc is not None for w in self.workers)

    # Workers --------------------------------------------------------------

    def _start(self, worker: Worker):
        mine, theirs = socket.socketpair()
        env = {k: v for k, v in self.environ.items() if k not in _NOT_FOR_WORKERS}
        env[WORKER_ENV] = str(worker.index)
        env[LINK_ENV] = str(theirs.fileno())
        if worker.node is not None:
            env[PREDECESSOR_ENV] = worker.node
        try:
            # (self.command is set by run() before any worker starts.)
            worker.proc = subprocess.Popen(
                self.command,  # type: ignore[arg-type]
                stdin=subprocess.DEVNULL,
                env=env,
                pass_fds=(theirs.fileno(),),
            )
        except OSError as err:
            mine.close()
            log.error("cannot start worker %d: %s", worker.index, err)
            if not self.serving:
                self.exit_code = 1
                self._begin_stop()
            else:
                self._schedule_restart(worker)
            return
        finally:
            theirs.close()
        mine.setblocking(False)
        worker.link = mine
        worker.ready = False
        worker.started = time.monotonic()
        self.selector.register(mine, selectors.EVENT_READ, worker)
        log.info("worker %d (pid %d) started", worker.index, worker.pid)

    def _link_readable(self, worker: Worker):
        try:
            data = worker.link.recv(64)  # type: ignore[union-attr]  # registered with its link
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # The worker is exiting; its exit is reaped by poll().
            self._close_link(worker)
            return
        if data.startswith(READY) and not worker.ready:
            worker.ready = True
            node = data[len(READY) :].strip().decode("ascii", "replace")
            worker.node = node or None
            if self.serving:
                log.info("worker %d (pid %d) serving again", worker.index, worker.pid)

    def _close_link(self, worker: Worker):
        if worker.link is not None:
            self.selector.unregister(worker.link)
            worker.link.close()
            worker.link = None

    def _exited(self, worker: Worker):
        # (Called once poll() found its process exited: proc is not None.)
        pid, returncode = worker.proc.pid, worker.proc.returncode  # type: ignore[union-attr]
        worker.proc = None
        worker.ready = False
        self._close_link(worker)
        how = describe_exit(returncode)
        if self.stopping:
            # SIGTERM's default action ends a worker that had not yet set up
            # its handlers: a normal stop too.
            (log.info if returncode in (0, -signal.SIGTERM) else log.warning)(
                "worker %d (pid %d) stopped: %s", worker.index, pid, how
            )
        elif not self.serving:
            log.error(
                "worker %d (pid %d) exited before it was ready (%s); stopping",
                worker.index,
                pid,
                how,
            )
            self.exit_code = returncode if returncode > 0 else 1
            self._begin_stop()
        else:
            if time.monotonic() - worker.started >= STABLE_AFTER:
                worker.delay = RESTART_DELAY_MIN
            log.error(
                "worker %d (pid %d) died: %s; restarting in %.1f s",
                worker.index,
                pid,
                how,
                worker.delay,
            )
            self._schedule_restart(worker)

    def _schedule_restart(self, worker: Worker):
        worker.due = time.monotonic() + worker.delay
        worker.delay = min(worker.delay * 2, RESTART_DELAY_MAX)

    def _announce(self):
        """Every worker serves: the lines a lone gchat logs once listening
        (run() in cli.py), the HTTP ports first, then READY=1."""
        self.serving = True
        for name in ("http", "admin"):
            if name in self.placeholders:
                where = format_address(*self.placeholders[name].getsockname()[:2])
                log.info("%s listening on %s", name, where, extra=logs.fields(addr=where))
        where = format_address(*self.placeholders["line"].getsockname()[:2])
        count = len(self.workers)
        log.info(
            "gchat %s listening on %s%s (%d workers)",
            __version__,
            where,
            " (--compat)" if self.config.compat else "",
            count,
            extra=logs.fields(addr=where),
        )
        self.notifier.ready(f"{count} workers")

    # Stopping -------------------------------------------------------------

    def _signals(self, wake_r):
        try:
            numbers = wake_r.recv(4096)
        except BlockingIOError:
            return
        for signum in numbers:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info(
                        "%s: stopping %d workers",
                        signal.Signals(signum).name,
                        sum(1 for w in self.workers if w.proc is not None),
                    )
                self._begin_stop()
            elif signum == signal.SIGHUP:
                self._send_all(signal.SIGHUP)
            # SIGCHLD only wakes the loop, which then reaps.

    def _begin_stop(self):
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + stop_grace(self.config)
        for worker in self.workers:
            worker.due = None
        self._send_all(signal.SIGTERM)
        self.notifier.stopping(f"stopping {len(self.workers)} workers")

    def _send_all(self, signum):
        for worker in self.workers:
            if worker.proc is not None:
                worker.proc.send_signal(signum)  # a no-op for one already reaped

    def _kill_stragglers(self):
        self.killed = True
        for worker in self.workers:
            if worker.proc is not None:
                log.warning(
                    "worker %d (pid %d) did not stop within %.0f s; killing it",
                    worker.index,
                    worker.pid,
                    stop_grace(self.config),
                )
                worker.proc.kill()
                self.exit_code = self.exit_code or 1

    def _kill_all(self):
        for worker in self.workers:
            if worker.proc is not None:
                worker.proc.kill()
                worker.proc.wait()
                worker.proc = None

    def _close_placeholders(self):
        for sock in self.placeholders.values():
            sock.close()
        self.placeholders = {}


def _wake_only(signum, frame):
    """The handler of the supervisor's signals: none of them may kill it
    (SIGCHLD must be caught at all to be seen), and the loop reads their
    numbers off the wakeup descriptor."""


class WorkerLink:
    """The worker's end of its link to the supervisor (used by cli.run)."""

    def __init__(self, index: int, fd: int):
        self.index = index
        self.sock = socket.socket(fileno=fd)
        self.sock.set_inheritable(False)
        self._watcher: Any = None  # a gevent io watcher, once on_supervisor_gone() makes it

    @classmethod
    def from_environ(cls, environ):
        """The link the supervisor passed (and its variables are removed
        from environ, so that nothing this process starts takes it); None
        when this process is no worker."""
        index, fd = environ.pop(WORKER_ENV, None), environ.pop(LINK_ENV, None)
        if index is None or fd is None:
            return None
        return cls(int(index), int(fd))

    def ready(self, node=None):
        """Tell the supervisor this worker serves (as cluster node node)."""
        try:
            self.sock.send(READY + (node or "").encode("ascii") + b"\n")
        except OSError:
            pass  # the supervisor is gone; on_supervisor_gone() says so

    def on_supervisor_gone(self, callback):
        """callback() from the event loop once the supervisor's end closes."""
        import gevent

        def gone():
            self._watcher.stop()
            log.warning("the supervisor is gone; stopping")
            callback()

        self._watcher = gevent.get_hub().loop.io(self.sock.fileno(), 1)
        self._watcher.start(gone)
