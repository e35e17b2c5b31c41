"""Process control of the cluster soak (cluster_soak.py): its gchat nodes
and its redis-server (or Redis Cluster), each killed and started again by
the chaos, all of them killed with the soak.

Every child runs in a process group of its own (a node's --workers, if
any, go with it), is told to die with the soak (PR_SET_PDEATHSIG) and is
SIGKILLed at exit whatever happens (kill_all).  The waits are gevent's:
the soak's clients keep running while a process starts or stops.
redis-server is processes.RedisServer, as for the bench and the tests, and
a Redis Cluster processes.RedisCluster; Proc, RedisProc and
RedisClusterProc are each a Child (alive, CPU, exit codes, log, stop), so
the soak treats them alike.
"""

from __future__ import annotations

import abc
import atexit
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import gevent

from gchat_bench.processes import ClusterNode, RedisCluster, RedisServer, die_with_parent
from gchat_bench.servers import process_cpu_s

LISTENING_RE = re.compile(rb"listening on \[?([0-9.]+)\]?:(\d+)")
START_TIMEOUT = 30.0  # a process printing "listening on" / redis-server answering
STOP_TIMEOUT = 5.0  # SIGTERM, then SIGKILL

# The children running now: kill_all's list.
_LIVE: set[Child] = set()


def kill_all() -> None:
    """SIGKILL every child still running, without waiting for it: at exit,
    or from a signal handler, where the gevent loop must not run."""
    for proc in list(_LIVE):
        proc.send_signal(signal.SIGKILL)


atexit.register(kill_all)


def stop_all(timeout: float = 2.0) -> None:
    """SIGKILL every child still running and reap it: the end of a soak
    that did not stop them itself (it failed)."""
    for proc in list(_LIVE):
        proc.stop(signal.SIGKILL, timeout=timeout)


class Child(abc.ABC):
    """What the soak asks of a child, whichever: its pid while it runs,
    whether it does, how it ended, its log; the CPU of all its
    incarnations; a signal to its process group (each child leads one: its
    own session); stop() to kill it (SIGKILL) or end it (SIGTERM)."""

    name: str
    cpu_done = 0.0  # CPU seconds of the incarnations that ended

    @property
    @abc.abstractmethod
    def pid(self) -> Optional[int]: ...

    @property
    @abc.abstractmethod
    def returncode(self) -> Optional[int]: ...

    @abc.abstractmethod
    def alive(self) -> bool: ...

    @abc.abstractmethod
    def stop(self, sig: int = signal.SIGKILL, timeout: float = STOP_TIMEOUT) -> None: ...

    @abc.abstractmethod
    def log_tail(self, lines: int = 15) -> str: ...

    def cpu(self) -> float:
        """CPU seconds of every incarnation so far."""
        pid = self.pid if self.alive() else None
        now = process_cpu_s(pid) if pid is not None else None
        return round(self.cpu_done + (now or 0.0), 3)

    def send_signal(self, sig: int) -> None:
        pid = self.pid if self.alive() else None
        if pid is None:
            return
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class Proc(Child):
    """One child (a node) and its successive incarnations, each logging to
    NAME.N.log in logdir."""

    def __init__(self, name: str, logdir: str):
        self.name = name
        self.logdir = logdir
        self.popen: Optional[subprocess.Popen] = None
        self.starts = 0
        self.log_path: Optional[str] = None
        self.exit_codes: list = []

    def start(self, argv: list) -> None:
        self.starts += 1
        self.log_path = os.path.join(self.logdir, "%s.%d.log" % (self.name, self.starts))
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        _LIVE.add(self)

    @property
    def pid(self) -> Optional[int]:
        return self.popen.pid if self.popen is not None else None

    @property
    def returncode(self) -> Optional[int]:
        return self.popen.poll() if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGKILL, timeout: float = STOP_TIMEOUT) -> None:
        """Signal the process group (its CPU time read first) and reap it;
        SIGKILL if it outlives timeout."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.cpu_done += process_cpu_s(self.popen.pid) or 0.0
            self.send_signal(sig)
            deadline = time.monotonic() + timeout
            while self.popen.poll() is None and time.monotonic() < deadline:
                gevent.sleep(0.02)
            if self.popen.poll() is None:
                self.send_signal(signal.SIGKILL)
                while self.popen.poll() is None:
                    gevent.sleep(0.02)
        self.exit_codes.append(self.popen.returncode)
        self.popen = None
        _LIVE.discard(self)

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_listening(self, timeout: float = START_TIMEOUT) -> int:
        """The port of the node's "listening on HOST:PORT" line."""
        assert self.log_path is not None, "wait_listening() before start()"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                m = LISTENING_RE.search(f.read())
            if m:
                return int(m.group(2))
            if not self.alive():
                break
            gevent.sleep(0.05)
        raise RuntimeError(
            "%s did not print 'listening on' (exit %s):\n%s"
            % (self.name, self.returncode, self.log_tail())
        )


class RedisProc(Child):
    """The soak's redis-server: a processes.RedisServer that runs (and logs)
    in the soak's log directory, waits cooperatively, comes back on the
    same port after each kill, and adds up the CPU of every incarnation."""

    name = "redis"

    def __init__(self, executable: str, logdir: str):
        self.server = RedisServer(
            executable, workdir=os.path.join(logdir, "redis"), sleep=gevent.sleep
        )

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> Optional[int]:
        return self.server.pid

    @property
    def returncode(self) -> Optional[int]:
        return self.server.proc.poll() if self.server.proc is not None else None

    @property
    def exit_codes(self) -> list:
        return self.server.exit_codes

    def alive(self) -> bool:
        return self.server.alive()

    def start(self) -> None:
        """Start it (again) and wait until it answers."""
        self.server.start(START_TIMEOUT)
        _LIVE.add(self)

    def stop(self, sig: int = signal.SIGKILL, timeout: float = STOP_TIMEOUT) -> None:
        """SIGKILL: a crash, start() brings it back.  SIGTERM: the end
        (SIGKILL if it outlives timeout).  Its CPU time is read first."""
        pid = self.pid if self.alive() else None
        if pid is not None:
            self.cpu_done += process_cpu_s(pid) or 0.0
        if sig == signal.SIGKILL:
            self.server.kill()
        else:
            self.server.stop(timeout)
        _LIVE.discard(self)

    def log_tail(self, lines: int = 15) -> str:
        return self.server.log_tail(lines)


class SoakRedisCluster(RedisCluster):
    """A RedisCluster whose redis-cli runs (create, reshard) wait
    cooperatively: each runs in a thread of gevent's pool, so that the
    soak's clients keep reading and sending meanwhile (a reshard of 1,000
    slots with their keys takes seconds).  Its polls sleep with
    gevent.sleep; its questions to the nodes are immediate answers over
    loopback.  Nodes are started from the main thread (their
    PR_SET_PDEATHSIG is that thread's); redis-cli only from the pool, and
    the pool thread waits for it."""

    def _cli(self, subcommand: str, *args: str) -> str:
        return gevent.get_hub().threadpool.apply(RedisCluster._cli, (self, subcommand, *args))


class RedisClusterProc(Child):
    """The soak's Redis Cluster (--redis-cluster MxR): M masters with R
    replicas each, running and logging in the soak's log directory
    (redis-cluster/nodeK/redis.log).  As a Child it is all of its nodes:
    alive when every node is, its CPU that of every incarnation of every
    node, a signal goes to each.  kill(node) crashes one node (its CPU read
    first); the waits for a failover, a rejoin, a reshard are the
    RedisCluster's (with deadlines)."""

    name = "redis"

    def __init__(self, executable: str, logdir: str, masters: int, replicas: int):
        self.cluster = SoakRedisCluster(
            masters,
            replicas,
            executable=executable,
            workdir=os.path.join(logdir, "redis-cluster"),
            sleep=gevent.sleep,
        )
        self._cpu_done: dict = {}  # node name -> CPU of its ended incarnations

    @property
    def pid(self) -> Optional[int]:
        return self.cluster.nodes[0].pid if self.cluster.nodes else None

    @property
    def returncode(self) -> Optional[int]:
        codes = [n.exit_codes[-1] for n in self.cluster.nodes if not n.alive() and n.exit_codes]
        return codes[0] if codes else None

    @property
    def exit_codes(self) -> list:
        """ "nodeK:CODE" for every exit of every node, node by node."""
        return ["%s:%s" % (n.name, c) for n in self.cluster.nodes for c in n.exit_codes]

    @property
    def url(self) -> str:
        return self.cluster.url

    def url_for(self, index: int) -> str:
        """The URL gchat node index is given: master index % M of those
        alive now (gchat finds the others from it)."""
        masters = self.cluster.masters()
        return masters[index % len(masters)].url

    def alive(self) -> bool:
        return bool(self.cluster.nodes) and all(n.alive() for n in self.cluster.nodes)

    def start(self) -> None:
        """Start the nodes, join them, wait until the cluster has formed."""
        _LIVE.add(self)
        self.cluster.start()

    def kill(self, node: ClusterNode) -> None:
        """A crash of one node (SIGKILL); its CPU time is read first."""
        if node.alive() and node.pid is not None:
            self._cpu_done[node.name] = self._cpu_done.get(node.name, 0.0) + (
                process_cpu_s(node.pid) or 0.0
            )
        self.cluster.kill(node)

    def cpu(self) -> float:
        total = sum(self._cpu_done.values())
        for n in self.cluster.nodes:
            if n.alive() and n.pid is not None:
                total += process_cpu_s(n.pid) or 0.0
        return round(total, 3)

    def send_signal(self, sig: int) -> None:
        for n in self.cluster.nodes:
            if n.alive() and n.pid is not None:
                try:
                    os.killpg(n.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    def stop(self, sig: int = signal.SIGKILL, timeout: float = STOP_TIMEOUT) -> None:
        """SIGKILL: every node crashes.  SIGTERM: the end (RedisCluster.stop;
        the logs stay).  Their CPU time is read first."""
        for n in self.cluster.nodes:
            if n.alive() and n.pid is not None:
                self._cpu_done[n.name] = self._cpu_done.get(n.name, 0.0) + (
                    process_cpu_s(n.pid) or 0.0
                )
        if sig == signal.SIGKILL:
            self.cluster.kill_all()
        self.cluster.stop()
        _LIVE.discard(self)

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(
            "--- %s (%s) ---\n%s"
            % (n.name, "alive" if n.alive() else "down", n.log_tail(max(3, lines // 3)))
            for n in self.cluster.nodes
        )


class Node:
    """A gchat node of the soak: its process, its port once it listens, and
    whether clients may go to it (up)."""

    def __init__(self, index: int, logdir: str):
        self.index = index
        self.proc = Proc("node%d" % index, logdir)
        self.port: Optional[int] = None
        self.up = False

    def start(self, argv: list) -> None:
        self.proc.start(argv)
        self.port = self.proc.wait_listening()
        self.up = True


def gchat_command() -> list:
    """The gchat console script next to this Python, else python -m gchat."""
    script = Path(sys.executable).parent / "gchat"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gchat"]
