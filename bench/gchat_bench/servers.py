"""The server under test: spawned (gchat or a baseline) or already running.

A spawned server gets a free port (``--port 0``) and tells it on stderr
("listening on HOST:PORT"); its stderr is then drained by a thread for the
whole run (a server that logs every connection must never block on a full
pipe) and the last lines are kept for error messages.  CPU time and RSS
come from psutil with the server's pid: CPU time per delivery is the
figure that stays steady on a shared machine, wall time is not.

A cluster (several gchat nodes on one redis-server or on a Redis Cluster,
each node possibly a ``--workers`` supervisor with its worker processes)
is one ``Cluster``: it answers the same questions as a ``Server`` (where to
connect, CPU, RSS, alive?) summed over all of its processes, and also node
by node (its Redis is one part, "redis", however many redis-servers).
"""

from __future__ import annotations

import collections
import importlib.util
import ipaddress
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import psutil

from gchat_bench.processes import (
    RedisCluster,
    RedisServer,
    StartError,
    die_with_parent,
    redis_executable,
)

HTTP_RE = re.compile(r"\bhttp\s*$")
LISTENING_RE = re.compile(r"listening on \[?([0-9A-Za-z.:_-]+?)\]?:(\d+)\b")
# How long a server may take to print "listening on": imports of gevent
# and a cold disk on a busy machine take seconds, not minutes.
START_TIMEOUT = 30.0
# SIGTERM, then this long for a graceful exit before SIGKILL.
STOP_TIMEOUT = 10.0
# The child processes of a --workers supervisor are looked up again at most
# this often for RSS samples (psutil walks /proc: ~2 ms a time); CPU
# readings at the edges of a measured phase always look them up afresh.
CHILDREN_CACHE_S = 1.0
# Polling interval while waiting for a supervisor's workers to listen.
LISTEN_POLL_S = 0.05


def process_cpu_s(pid: int) -> Optional[float]:
    """CPU seconds (user + system) a process has used so far.

    Linux's /proc/PID/task/*/schedstat counts nanoseconds on the CPU; the
    user/system times of /proc/PID/stat (what psutil reads) count whole
    clock ticks (10 ms), too coarse for a short run of a small benchmark.
    Falls back to psutil where schedstat is missing.
    """
    try:
        total = 0
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/schedstat" % (pid, task)) as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


class BenchError(RuntimeError):
    """A benchmark could not run as asked (not a measured result)."""


def check_loopback(host: str) -> None:
    """Refuse targets off this machine: load goes to 127.0.0.0/8 or ::1 only."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise BenchError("refusing to load %s: only loopback targets (127.0.0.0/8, ::1)" % host)


def gchat_command() -> list:
    """How to start gchat from this Python: ``python -m gchat`` if it can."""
    try:
        if importlib.util.find_spec("gchat.__main__") is not None:
            return [sys.executable, "-m", "gchat"]
    except (ImportError, ValueError):
        pass
    for cand in (Path(sys.executable).parent / "gchat", shutil.which("gchat")):
        if cand and Path(cand).exists():
            return [str(cand)]
    raise BenchError(
        "gchat is not installed (no gchat.__main__, no gchat script); use --target or --server-cmd"
    )


def baseline_command(module: str) -> list:
    """The command line of a baseline server module."""
    return [sys.executable, "-m", module]


_help_cache: dict = {}


def help_text(cmd: list) -> str:
    """The --help output of a server command (cached per command)."""
    key = tuple(cmd)
    if key not in _help_cache:
        try:
            out = subprocess.run(
                list(cmd) + ["--help"], capture_output=True, text=True, timeout=START_TIMEOUT
            )
            _help_cache[key] = out.stdout + out.stderr
        except (OSError, subprocess.TimeoutExpired):
            _help_cache[key] = ""
    return _help_cache[key]


def spawn_argv(cmd: list, options: str, compat: bool, host: str = "127.0.0.1") -> list:
    """The full argv to start a server with the user's --spawn OPTIONS.

    In name mode a server that has --flood-rate gets ``--flood-rate 0``
    (unless OPTIONS set it): gchat's per-client flood limit is on by
    default there and would rate-limit the benchmark instead of measuring
    the server.  --compat is added when the benchmark speaks the seed
    protocol, OPTIONS do not say so already and the server has the option
    (a baseline speaks only the seed protocol).
    """
    opts = shlex.split(options or "")
    argv = list(cmd) + ["--host", host, "--port", "0"]
    if compat and "--compat" not in opts and "--compat" in help_text(cmd):
        opts = ["--compat"] + opts
    set_flood = any(o == "--flood-rate" or o.startswith("--flood-rate=") for o in opts)
    if not compat and not set_flood and "--flood-rate" in help_text(cmd):
        opts += ["--flood-rate", "0"]
    return argv + opts


def _watch_log(
    proc: subprocess.Popen, stream, name: str, tail: collections.deque, on_line
) -> threading.Event:
    """Read a child's log for its whole life in a thread (a server that logs
    every connection must never block on a full pipe), keep the last lines
    in tail, call on_line(line) on each; the event is set by on_line or at
    end of file."""
    done = threading.Event()

    def drain():
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            tail.append(line)
            if not done.is_set() and on_line(line):
                done.set()
        done.set()

    threading.Thread(target=drain, daemon=True, name="log-" + name).start()
    return done


class Server:
    """A server under test: where it listens and, if known, its pid.

    tree: the server is a process tree (a ``gchat --workers`` supervisor
    and its workers): CPU and RSS are summed over the pid and all its
    descendants, and stop() kills any descendant left behind.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        pid: Optional[int] = None,
        proc: Optional[subprocess.Popen] = None,
        argv: Optional[list] = None,
        tree: bool = False,
    ):
        self.name = name
        self.host = host
        self.port = port
        self.pid = pid
        self.proc = proc
        self.argv = argv
        self.tree = tree
        self.exit_code: Optional[int] = None
        self.http_port: Optional[int] = None  # gchat --http: its port
        self.stderr_tail: collections.deque = collections.deque(maxlen=30)
        self._ps = None
        self._signalled = False
        # tree: descendants as psutil.Process objects (they check the pid's
        # start time, so a reused pid is never mistaken for ours), every pid
        # seen (a worker restarted by its supervisor is a new pid).
        self._children: list = []
        self._children_at = -1e9
        self.seen_pids: set = set()
        if pid is not None:
            try:
                self._ps = psutil.Process(pid)
            except psutil.Error:
                raise BenchError("no process with --server-pid %d" % pid) from None

    @classmethod
    def spawn(cls, name: str, argv: list, tree: bool = False) -> Server:
        """Start argv and wait for its "listening on HOST:PORT" line."""
        return cls.launch(name, argv, tree)()

    @classmethod
    def launch(cls, name: str, argv: list, tree: bool = False):
        """Start argv; return a function that waits for its "listening on
        HOST:PORT" line and returns the Server (so that several servers
        start at once).  Call it from the thread that called launch: the
        child dies with that thread (PR_SET_PDEATHSIG is per thread)."""
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=die_with_parent,
            )
        except OSError as e:
            raise BenchError("cannot start %s: %s" % (shlex.join(argv), e)) from None
        tail: collections.deque = collections.deque(maxlen=30)
        found: dict = {}
        http: dict = {}

        def on_line(line: str) -> bool:
            m = LISTENING_RE.search(line)
            if m and HTTP_RE.search(line[: m.start()]):
                # gchat's "http listening on" comes before the line port's.
                http["port"] = int(m.group(2))
            elif m and not re.search(r"\badmin\s*$", line[: m.start()]):
                found["host"], found["port"] = m.group(1), int(m.group(2))
                return True
            return False

        ready = _watch_log(proc, proc.stderr, name, tail, on_line)
        t0 = time.monotonic()

        def wait() -> Server:
            ready.wait(max(0.0, START_TIMEOUT - (time.monotonic() - t0)))
            if not found:
                proc.kill()
                proc.wait()
                raise BenchError(
                    "%s did not print 'listening on HOST:PORT' (exit %s): %s\n%s"
                    % (name, proc.returncode, shlex.join(argv), "\n".join(tail))
                )
            srv = cls(
                name, found["host"], found["port"], pid=proc.pid, proc=proc, argv=argv, tree=tree
            )
            srv.stderr_tail = tail
            srv.http_port = http.get("port")
            return srv

        wait.proc = proc
        return wait

    def check_alive(self) -> None:
        """Raise if a spawned server has died under load."""
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(
                "server %s exited with code %s during the run:\n%s"
                % (self.name, self.proc.returncode, "\n".join(self.stderr_tail))
            )

    def children(self, fresh: bool = True) -> list:
        """tree: the live descendants (psutil.Process); [] otherwise.
        fresh=False may answer from a list at most CHILDREN_CACHE_S old."""
        if not self.tree or self._ps is None:
            return []
        now = time.monotonic()
        if fresh or now - self._children_at > CHILDREN_CACHE_S:
            try:
                self._children = self._ps.children(recursive=True)
            except psutil.Error:
                self._children = []
            self._children_at = now
            self.seen_pids.update(c.pid for c in self._children)
        return self._children

    def cpu_by_pid(self) -> dict:
        """{pid: CPU seconds so far} of the server's processes ({} if unknown)."""
        if self.pid is None:
            return {}
        out = {}
        for pid in [self.pid] + [c.pid for c in self.children()]:
            cpu = process_cpu_s(pid)
            if cpu is not None:
                out[pid] = cpu
        return out

    def cpu_s(self) -> Optional[float]:
        """User+system CPU seconds of the server so far (None if unknown)."""
        if self.pid is None:
            return None
        if self.tree:
            by_pid = self.cpu_by_pid()
            return sum(by_pid.values()) if by_pid else None
        return process_cpu_s(self.pid)

    def rss_bytes(self) -> Optional[int]:
        """Resident set size of the server now (None if unknown)."""
        if self._ps is None:
            return None
        try:
            total = self._ps.memory_info().rss
        except psutil.Error:
            return None
        for c in self.children(fresh=False):
            try:
                total += c.memory_info().rss
            except psutil.Error:
                pass
        return total

    def wait_workers_listening(self, k: int, timeout: float = START_TIMEOUT) -> None:
        """tree: wait until k descendants of the supervisor listen on the
        line port (each worker binds it with SO_REUSEPORT, or inherits the
        socket): before that the kernel would send a client to a worker
        that is not there yet, or the load would fall on fewer workers."""
        deadline = time.monotonic() + timeout
        while True:
            listening = 0
            for c in self.children():
                try:
                    conns = c.net_connections(kind="tcp")
                except psutil.Error:
                    continue
                if any(
                    x.status == psutil.CONN_LISTEN and x.laddr and x.laddr.port == self.port
                    for x in conns
                ):
                    listening += 1
            if listening >= k:
                return
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(
                    "%s: %d of %d workers listen on port %d after %.0f s:\n%s"
                    % (self.name, listening, k, self.port, timeout, "\n".join(self.stderr_tail))
                )
            time.sleep(LISTEN_POLL_S)

    def terminate(self) -> None:
        """Send SIGTERM once (stop() then waits); no-op if not spawned."""
        if self.proc is None or self._signalled or self.proc.poll() is not None:
            return
        self.children()  # know every descendant before they may be orphaned
        self._signalled = True
        try:
            os.kill(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """SIGTERM a spawned server, wait for it, record its exit code;
        tree: then SIGKILL any descendant still running."""
        if self.proc is None or self.exit_code is not None:
            return
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode
        for c in self._children:
            try:
                c.kill()  # psutil: only if it is still the same process
            except psutil.Error:
                pass


class ClusterRedis(Server):
    """A cluster's own redis-server as a part of the server under test:
    processes.RedisServer starts and stops it (a free loopback port, no
    persistence, no file left behind even if the bench is killed hard); as
    a Server it is measured like the nodes (CPU, alive?)."""

    def __init__(self, redis: RedisServer, name: str = "redis"):
        super().__init__(name, redis.host, redis.port, pid=redis.pid, proc=redis.proc)
        self.redis = redis
        self.url = redis.url

    @classmethod
    def spawn_redis(cls, executable: Optional[str] = None) -> ClusterRedis:
        """Start redis-server (executable, else the one on PATH) and wait
        until it answers."""
        try:
            exe = redis_executable(executable)
        except StartError as e:
            raise BenchError(
                "%s (the cluster forms spawn one: apt-get install redis-server, "
                "or --redis-server PATH)" % e
            ) from None
        try:
            return cls(RedisServer(exe).start(START_TIMEOUT))
        except StartError as e:
            raise BenchError(str(e)) from None

    def url_for(self, index: int) -> str:
        """The URL gchat node index is given: the one redis-server's."""
        return self.url

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(
                "redis-server exited with code %s during the run:\n%s"
                % (self.proc.returncode, self.redis.log_tail())
            )

    def stop(self) -> None:
        if self.exit_code is None:
            self.redis.stop(STOP_TIMEOUT)
            self.exit_code = self.redis.exit_codes[-1]


def parse_redis_cluster(spec) -> tuple:
    """--redis-cluster ``M[xR]`` (or an int M, or (M, R)) -> (M, R): M
    masters with R replicas each (R defaults to 0).  M >= 3, as redis-cli
    --cluster create wants."""
    if isinstance(spec, tuple):
        masters, replicas = spec
    elif isinstance(spec, int):
        masters, replicas = spec, 0
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(spec))
        if not m:
            raise BenchError(
                "--redis-cluster wants M or MxR (M masters, R replicas each), got %r" % spec
            )
        masters, replicas = int(m.group(1)), int(m.group(2) or 0)
    if masters < 3:
        raise BenchError(
            "--redis-cluster needs at least 3 masters (redis-cli --cluster create "
            "wants 3), got %d" % masters
        )
    if replicas < 0:
        raise BenchError("--redis-cluster: replicas must not be negative")
    return masters, replicas


class ClusterRedisCluster(Server):
    """A cluster's own Redis Cluster (--redis-cluster MxR) as one part of the
    server under test, "redis": processes.RedisCluster starts and stops its
    M x (1 + R) redis-servers (free loopback ports, no persistence, a
    temporary directory removed at stop).  As a Server its pid is the first
    node's and its "children" are the others, so its CPU, RSS, process
    count and pids are those of every redis-server together.

    url_for(i): the URL gchat node i is given, that of master i % M, so
    that the nodes start from different masters (each finds the others).
    master_stats(): {master name: (port, slots, {command: calls})}, for
    the per-master commands of a run.
    """

    def __init__(self, cluster: RedisCluster, name: str = "redis"):
        first = cluster.nodes[0]
        super().__init__(name, first.host, first.port, pid=first.pid, proc=first.proc)
        self.cluster = cluster
        self.masters = cluster.n_masters
        self.replicas = cluster.n_replicas
        self._urls = [m.url for m in cluster.masters()]
        self.url = self._urls[0]
        self._ps_nodes: dict = {}

    @classmethod
    def spawn_cluster(
        cls, masters: int, replicas: int = 0, executable: Optional[str] = None
    ) -> ClusterRedisCluster:
        """Start a Redis Cluster of masters x (1 + replicas) nodes and wait
        until it has formed."""
        try:
            exe = redis_executable(executable)
        except StartError as e:
            raise BenchError(
                "%s (--redis-cluster spawns a Redis Cluster: apt-get install "
                "redis-server, or --redis-server PATH)" % e
            ) from None
        try:
            return cls(RedisCluster(masters, replicas, executable=exe).start())
        except StartError as e:  # ClusterError too
            raise BenchError(str(e)) from None

    def url_for(self, index: int) -> str:
        return self._urls[index % len(self._urls)]

    def children(self, fresh: bool = True) -> list:
        """The redis-servers but the first (psutil.Process, cached per pid)."""
        out = []
        for node in self.cluster.nodes[1:]:
            pid = node.pid
            if pid is None:
                continue
            ps = self._ps_nodes.get(pid)
            if ps is None:
                try:
                    ps = self._ps_nodes[pid] = psutil.Process(pid)
                except psutil.Error:
                    continue
            out.append(ps)
        self.seen_pids.update(p.pid for p in out)
        return out

    def check_alive(self) -> None:
        dead = [n for n in self.cluster.nodes if not n.alive()]
        if dead:
            n = dead[0]
            raise BenchError(
                "redis-server %s of the Redis Cluster exited during the run:\n%s"
                % (n.name, n.log_tail())
            )

    def master_stats(self) -> dict:
        """{master name: (port, slots, {command: calls})} of every master
        now (INFO commandstats, CLUSTER NODES)."""
        slots = self.cluster.slot_counts()
        return {
            m.name: (m.port, slots.get(m, 0), calls)
            for m, calls in self.cluster.commandstats().items()
        }

    def stop(self) -> None:
        if self.exit_code is None:
            self.cluster.stop()
            codes = [n.exit_codes[-1] for n in self.cluster.nodes if n.exit_codes]
            bad = [c for c in codes if c not in (None, 0)]
            self.exit_code = bad[0] if bad else 0


def master_commands(before: dict, after: dict) -> dict:
    """Per-master commands between two ClusterRedisCluster.master_stats()
    snapshots, for a result: ``redis_masters`` [{node, port, slots,
    commands, commandstats}] (commands: the sum of commandstats; INFO, which
    the bench asks itself, left out), ``redis_master_commands`` [commands
    per master], and ``redis_master_balance`` [min, max] of each master's
    commands over their mean (1.0 each when even; 0.5-2 is the goal)."""
    masters = []
    for name, (port, slots, calls) in after.items():
        was = before.get(name, (port, slots, {}))[2]
        delta = {
            cmd: n - was.get(cmd, 0)
            for cmd, n in sorted(calls.items())
            if cmd != "info" and n - was.get(cmd, 0) > 0
        }
        masters.append(
            {
                "node": name,
                "port": port,
                "slots": slots,
                "commands": sum(delta.values()),
                "commandstats": delta,
            }
        )
    counts = [m["commands"] for m in masters]
    mean = sum(counts) / len(counts) if counts else 0
    return {
        "redis_masters": masters,
        "redis_master_commands": counts,
        "redis_master_balance": (
            [min(counts) / mean, max(counts) / mean] if mean else [None, None]
        ),
    }


class Cluster:
    """Several processes that together are the server under test: gchat
    nodes (each a Server; a ``--workers`` supervisor is one node whose CPU
    and RSS include its workers) and, if known, their redis-server.

    It has what the runner asks of a Server: name, host/port/http_port
    (node 0's), check_alive, cpu_s and rss_bytes (sums: CPU over nodes and
    redis-server, RSS over the gchat processes), stop, exit_code; plus
    addresses() for every node and cpu_by_part() for the CPU of each.
    """

    def __init__(
        self, name: str, nodes: list, redis: Optional[Server] = None, server_workers: int = 0
    ):
        if not nodes:
            raise BenchError("a cluster needs at least one node")
        self.name = name
        self.nodes = nodes
        self.redis = redis
        self.server_workers = server_workers
        n0 = nodes[0]
        self.host, self.port, self.http_port = n0.host, n0.port, n0.http_port
        self.proc, self.pid = n0.proc, n0.pid
        self.stderr_tail = n0.stderr_tail
        self.exit_code: Optional[int] = None
        self.exit_codes: dict = {}

    @classmethod
    def spawn(
        cls,
        name: str,
        argv: list,
        nodes: int,
        server_workers: int = 0,
        redis_path: Optional[str] = None,
        redis_cluster: Optional[tuple] = None,
    ) -> Cluster:
        """Start redis-server (or, redis_cluster=(M, R), a Redis Cluster of
        M masters with R replicas each), then `nodes` copies of argv with
        ``--redis URL`` (and ``--workers K`` if server_workers), each on
        its own port (argv has --port 0), all at once; wait until every node
        listens (and, with workers, until each node's K workers do).  Over
        a Redis Cluster node i is given master i % M's URL."""
        if redis_cluster:
            redis = ClusterRedisCluster.spawn_cluster(*redis_cluster, executable=redis_path)
        else:
            redis = ClusterRedis.spawn_redis(redis_path)
        started: list = []
        waits: list = []
        try:
            extra = []
            if server_workers:
                extra += ["--workers", str(server_workers)]
            # All nodes start at once (gevent's imports take a second each).
            for i in range(nodes):
                url = redis.url_for(i)
                waits.append(
                    Server.launch(
                        "%s/node%d" % (name, i),
                        argv + ["--redis", url] + extra,
                        tree=bool(server_workers),
                    )
                )
            errors = []
            for w in waits:
                try:
                    started.append(w())
                except BenchError as e:
                    errors.append(e)
            if errors:
                raise errors[0]
            if server_workers:
                for n in started:
                    n.wait_workers_listening(server_workers)
            return cls(name, started, redis, server_workers)
        except BaseException:
            for n in started:
                n.terminate()
            for n in started:
                n.stop()
            for w in waits:  # launched, not yet (or never) listening
                if w.proc.poll() is None:
                    w.proc.kill()
                    w.proc.wait()
            redis.stop()
            raise

    def parts(self) -> list:
        """[(name, Server)]: node0, node1, ..., then redis if known."""
        out = [("node%d" % i, n) for i, n in enumerate(self.nodes)]
        if self.redis is not None:
            out.append(("redis", self.redis))
        return out

    def addresses(self, http: bool = False) -> list:
        """(host, port) of every node in order; http: of their --http ports
        (None for a node that has none)."""
        return [(n.host, n.http_port if http else n.port) for n in self.nodes]

    def check_alive(self) -> None:
        for _, p in self.parts():
            p.check_alive()

    def cpu_by_part(self) -> dict:
        """{part: {pid: CPU seconds}} ({} for a part whose pid is unknown)."""
        return {name: p.cpu_by_pid() for name, p in self.parts()}

    def cpu_s(self) -> Optional[float]:
        """CPU seconds of every node and of redis-server together; None if
        a part's pid is unknown (a partial sum would flatter the server)."""
        parts = self.cpu_by_part()
        if any(not v for v in parts.values()):
            return None
        return sum(sum(v.values()) for v in parts.values())

    def rss_bytes(self) -> Optional[int]:
        """RSS of the gchat processes (every node, every worker), summed."""
        vals = [n.rss_bytes() for n in self.nodes]
        if any(v is None for v in vals):
            return None
        return sum(vals)

    def processes(self) -> dict:
        """{part: number of processes now} (a supervisor plus its workers)."""
        return {
            name: (1 + len(p.children())) if p.pid is not None else None for name, p in self.parts()
        }

    def pids(self) -> dict:
        """{part: [pids]}: each part's process and every descendant seen."""
        return {
            name: [p.pid] + sorted(p.seen_pids - {p.pid})
            for name, p in self.parts()
            if p.pid is not None
        }

    def stop(self) -> None:
        """SIGTERM every node at once, wait for them, then stop redis-server
        (nodes leave the cluster while it is still there)."""
        for n in self.nodes:
            n.terminate()
        for n in self.nodes:
            n.stop()
        if self.redis is not None:
            self.redis.stop()
        self.exit_codes = {name: p.exit_code for name, p in self.parts() if p.proc is not None}
        bad = [c for c in self.exit_codes.values() if c not in (None, 0)]
        self.exit_code = bad[0] if bad else (0 if self.exit_codes else None)


class RssSampler:
    """Samples a server's RSS in a thread; keeps the peak."""

    def __init__(self, server: Server, interval: float = 0.2):
        self.server = server
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            r = self.server.rss_bytes()
            if r:
                self.peak = max(self.peak, r)
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        r = self.server.rss_bytes()
        if r:
            self.peak = max(self.peak, r)
