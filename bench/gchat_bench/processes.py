"""Child processes for the bench and the tests alike: a free loopback port,
children that die with this process, and redis-server.

Process control lives here once.  The bench's clusters (servers.py), the
bus cost probe (bus_cost.py), the chaos soak (soak_procs.py) and the
tests' ``redis_server`` fixture all start redis-server through
RedisServer, so a fix to how one is started, awaited or stopped reaches
them all.

RedisServer holds everything one redis-server needs: its command line
(``_argv``), where it runs (workdir), readiness, a crash, a restart on
the same port, a clean stop.  A Redis Cluster is a group of these, each
with ``--cluster-enabled yes`` and a workdir of its own for its
nodes.conf, that ``redis-cli --cluster create`` joins: it belongs beside
RedisServer here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from typing import Callable, Optional

HOST = "127.0.0.1"
# redis-server starts in milliseconds; a busy machine with a cold disk can
# take seconds, never this long.
START_TIMEOUT = 30.0
# SIGTERM, then this long for redis-server to exit before SIGKILL.
STOP_TIMEOUT = 5.0
# Polling for an answer and for an exit: redis-server tells nothing we could
# wait on instead (its log is a file, its exit has no event to wait for
# under gevent without monkey-patching).
POLL_INTERVAL = 0.02
# The end of a log that log_tail() reads: enough for its last lines.
LOG_TAIL_BYTES = 64 * 1024
# In the reply to INFO server.
PROCESS_ID_RE = re.compile(rb"\r\nprocess_id:(\d+)\r\n")


class StartError(RuntimeError):
    """A child process could not be started or did not get ready."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now, for a server
    that cannot be given port 0.  Bound then released: another program may
    take it meanwhile, so a caller that starts a server on it must be ready
    to retry (RedisServer.start does)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the process that started it dies.

    A bench or a test run killed hard must not leave a server behind
    (Linux prctl PR_SET_PDEATHSIG, which is per thread: start children
    from the thread that lives as long as they should; elsewhere a no-op).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except Exception:
        pass


def redis_executable(path: Optional[str] = None) -> str:
    """path if given, else redis-server on PATH or where Debian puts it
    (/usr/bin, or /usr/sbin, which a non-root PATH may not hold)."""
    cands = (
        [path]
        if path
        else [shutil.which("redis-server"), "/usr/bin/redis-server", "/usr/sbin/redis-server"]
    )
    for cand in cands:
        if cand and os.access(cand, os.X_OK):
            return cand
    raise StartError(
        "no redis-server at %s" % path
        if path
        else "no redis-server on PATH (apt-get install redis-server)"
    )


def _command(*args: bytes) -> bytes:
    """A Redis command in RESP (any bytes in its arguments, a password's)."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class RedisServer:
    """One redis-server, a child of this process, on a free port of
    127.0.0.1, with no persistence (``--save '' --appendonly no``): a
    restart comes back empty, as after a crash without AOF.

    start() waits until it answers; kill() is a crash (SIGKILL);
    start() again comes back on the same port (its clients know that
    one); stop() ends it for good.  The exit status of every process it
    ran is in exit_codes, in order; log_tail() is the end of their log.

    workdir: a directory to run in (created if need be), where its log is
    redis.log and stays (the soak keeps its logs with the others').
    Without one it leaves no file, even when this process is killed hard
    (a benchmark's cluster): it runs in the shared temporary directory
    with a dump file name of its own, which it never writes and so never
    loads (where a dump.rdb someone left would be loaded), and logs to an
    unlinked temporary file.

    sleep: how to wait between polls; gevent.sleep in a gevent program
    that does not monkey-patch, so that its other greenlets run meanwhile.
    """

    host = HOST

    def __init__(
        self,
        executable: Optional[str] = None,
        *,
        password: Optional[str] = None,
        tls: Optional[Sequence] = None,
        workdir: Optional[str] = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """tls: (certificate, key, CA) files: it then speaks TLS only
        (rediss://), on its one port, without asking clients for theirs."""
        self.executable = redis_executable(executable)
        self.password = password
        self.tls = tls
        self.sleep = sleep
        self.port = free_port()
        self.dbfilename = "gchat-redis-%s.rdb" % uuid.uuid4().hex
        if workdir is None:
            self.dir = tempfile.gettempdir()
            self._log = tempfile.TemporaryFile()
        else:
            self.dir = workdir
            os.makedirs(workdir, exist_ok=True)
            self._log = open(os.path.join(workdir, "redis.log"), "a+b")
        self.proc: Optional[subprocess.Popen] = None
        self.exit_codes: list = []
        self._port_known = False  # started once: clients have self.port, keep it

    @property
    def url(self) -> str:
        auth = ":%s@" % self.password if self.password else ""
        if self.tls:
            return "rediss://%s%s:%d/0?ssl_ca_certs=%s" % (auth, self.host, self.port, self.tls[2])
        return "redis://%s%s:%d/0" % (auth, self.host, self.port)

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> RedisServer:
        """Start it and wait until it answers.  Before its first start
        a port taken since free_port() picked it is swapped for another;
        after, the same port is tried again until timeout (the one that
        took it may let go)."""
        if self.alive():
            raise StartError("redis-server is already running on port %d" % self.port)
        deadline = time.monotonic() + timeout
        while True:
            self._spawn()
            if self._wait_ready(deadline):
                self._port_known = True
                return self
            self._reap()
            if "in use" not in self.log_tail(5):
                raise StartError(
                    "redis-server exited (exit %s) on port %d:\n%s"
                    % (self.exit_codes[-1], self.port, self.log_tail())
                )
            if time.monotonic() >= deadline:
                raise StartError(
                    "redis-server found port %d taken until the timeout:\n%s"
                    % (self.port, self.log_tail())
                )
            if not self._port_known:
                self.port = free_port()
            self.sleep(POLL_INTERVAL)

    def _argv(self) -> list:
        if self.tls:
            cert, key, ca = self.tls
            listen = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(cert),
                "--tls-key-file",
                str(key),
                "--tls-ca-cert-file",
                str(ca),
                "--tls-auth-clients",
                "no",
            ]
        else:
            listen = ["--port", str(self.port)]
        argv = [
            self.executable,
            *listen,
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--dbfilename",
            self.dbfilename,
            "--logfile",
            "",
            "--daemonize",
            "no",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    def _spawn(self) -> None:
        # --logfile "": it logs to stdout, our log file, with what it
        # prints before it would open a log file (a bad option).  Its own
        # session: a Ctrl-C at the terminal reaches this process only,
        # which then stops redis-server in its turn (after the nodes of a
        # cluster, so that they leave while it is there).
        try:
            self.proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        except OSError as e:
            raise StartError("cannot start %s: %s" % (self.executable, e)) from None

    def _wait_ready(self, deadline: float) -> bool:
        """True once it answers; False if it exited first."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self._answering_pid() == self.proc.pid:
                return True
            self.sleep(POLL_INTERVAL)
        self.kill()
        raise StartError(
            "redis-server on port %d did not answer:\n%s" % (self.port, self.log_tail())
        )

    def _answering_pid(self) -> Optional[int]:
        """The pid of the redis-server that answers on self.port (INFO
        server), None if none does.  Not just PING: another redis-server
        that took the port first would answer PONG while ours, unable to
        bind, is still on its way out.  A blocking socket: a connection
        to loopback is refused or accepted at once, and a ready server
        answers at once."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=1.0)
        except OSError:
            return None
        try:
            if self.tls:
                ctx = ssl.create_default_context(cafile=str(self.tls[2]))
                sock = ctx.wrap_socket(sock, server_hostname=self.host)
            request = _command(b"INFO", b"server")
            if self.password:
                request = _command(b"AUTH", self.password.encode()) + request
            sock.sendall(request)
            reply = b""
            while not reply.startswith(b"-"):  # an error: not (yet) serving us
                m = PROCESS_ID_RE.search(reply)
                if m:
                    return int(m.group(1))
                data = sock.recv(4096)
                if not data:
                    break
                reply += data
        except OSError:  # ssl.SSLError and the 1 s timeout included
            pass
        finally:
            sock.close()
        return None

    def kill(self) -> None:
        """A crash: SIGKILL, and reap it."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
        self._reap()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """End it for good: SIGTERM (SIGKILL if it outlives timeout), and
        close its log.  Also after kill()."""
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                self.sleep(POLL_INTERVAL)
            if self.proc.poll() is None:
                self.proc.kill()
        self._reap()
        self._log.close()

    def _reap(self) -> None:
        """Wait for the ended process (at once after SIGKILL or an exit) and
        keep its status."""
        if self.proc is None:
            return
        self.exit_codes.append(self.proc.wait())
        self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        if self._log.closed:
            return "(log closed)"
        # pread: redis-server writes at the offset it shares with our file
        # object (the unlinked file is not opened for appending); reading
        # must not move it.
        fd = self._log.fileno()
        size = os.fstat(fd).st_size
        data = os.pread(fd, min(size, LOG_TAIL_BYTES), max(0, size - LOG_TAIL_BYTES))
        return b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")
