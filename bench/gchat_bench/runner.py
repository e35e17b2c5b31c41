"""The scenarios: drive the worker processes against one server, measure.

The parent process does no network I/O of its own.  It starts the worker
processes (``python -m gchat_bench.worker``), hands each a share of the
clients, moves them through the phases together (connect, settle, send,
drain) and turns their counts into one result dict per run.  Around each
measured phase it reads the CPU time of the server, of every worker and of
the whole machine, so a result says whether the generator was the limit.
Against a cluster (servers.Cluster) the clients are dealt over its nodes
(cluster.node_of: each room over every node, or each room on one node with
--local-rooms) and the server's CPU is also reported node by node and for
redis-server.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import selectors
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

import psutil
from tqdm import tqdm

from gchat_bench.cluster import expected_deliveries, part_cpu, room_members, spread
from gchat_bench.processes import ReplyError, die_with_parent
from gchat_bench.servers import (
    BenchError,
    Cluster,
    ClusterRedisCluster,
    RssSampler,
    Server,
    master_commands,
    process_cpu_s,
)
from gchat_bench.stats import MIN_SIZE, SCAN_IMPL, merge_encoded, percentiles_ms
from gchat_bench.transports import TRANSPORTS

SCENARIOS = ("fanout", "saturate", "join", "idle", "slow")
# Scenarios that can spread the clients over rooms (--rooms).
ROOM_SCENARIOS = ("fanout", "saturate", "join", "idle")

# A worker that used this share of one core during a measured phase was
# (near enough) busy all the time: its clients' latencies include its own
# queueing, so the result says generator_saturated.
SATURATED_CPU = 0.90
# The machine counts as full above this share of all its cores.  If it is
# full and the server did not use a whole core, the generator took the CPU
# the server could have used: the generator was (part of) the limit.
HOST_FULL = 0.90
# ... and the generator used at least this many cores in that time.
GENERATOR_SIGNIFICANT = 0.5
# Open loop: a send count this far below the schedule is a shortfall.
SHORTFALL = 0.97
# Above this many clients per source address, spread clients over several
# 127.0.0.x addresses: the ephemeral range here is ~28,000 ports per
# (source, destination) pair and TIME_WAIT from the previous run eats some.
CLIENTS_PER_SOURCE = 10000
# Workers start the first send this long after the command, so that all of
# them have read it and start together.
START_LEAD_S = 0.3
# Descriptors a worker keeps for itself (epoll, pipes, the interpreter's
# files) besides one per client: with more clients than the open-file limit
# minus this per worker, the default number of workers grows.
WORKER_SPARE_FDS = 1000


@dataclass
class Options:
    """One run's parameters (the CLI fills these; tests build them)."""

    scenario: str = "fanout"
    clients: int = 1000
    senders: int = 10
    rate: float = 100.0  # messages/s, all senders together (open loop)
    duration: float = 10.0  # seconds of sending (idle: of holding)
    size: int = 64  # bytes per chat line sent, "\n" excluded
    window: int = 4  # saturate: messages in flight per sender
    slow_clients: int = 10  # slow: clients that never read
    workers: int = 0  # 0: one per core, at most one per 50 clients
    compat: bool = False
    rooms: int = 0  # >0: clients spread over this many rooms (name mode)
    local_rooms: bool = False  # a cluster: each room's members on one node
    sessions: bool = False  # every client asks for /session once ready (ids on its lines)
    auth_secret: Optional[str] = None  # clients sign in with /auth TOKEN (HS256, this secret)
    source_addrs: int = 0  # 0: automatic
    connect_concurrency: int = 200  # handshakes in progress per worker
    connect_timeout: float = 60.0
    settle_timeout: float = 300.0  # join storm: arrivals to deliver to all
    drain_quiet: float = 5.0
    drain_timeout: float = 60.0
    progress: Optional[bool] = None  # None: when stderr is a terminal
    transport: str = "tcp"  # "tcp", "ws" (gchat's --http port) or "tls"
    scrape_metrics: float = 0.0  # >0: GET /metrics on the --http port this often (s)

    def validate(self) -> None:
        if self.scenario not in SCENARIOS:
            raise BenchError("unknown scenario %r" % self.scenario)
        if (self.sessions or self.auth_secret is not None) and self.compat:
            raise BenchError("--sessions and --auth-secret speak gchat's name mode, not --compat")
        if self.clients < 1:
            raise BenchError("--clients must be at least 1")
        if self.scenario in ("fanout", "saturate", "slow"):
            if not 1 <= self.senders <= self.clients:
                raise BenchError("--senders must be between 1 and --clients")
            if self.duration <= 0:
                raise BenchError("--duration must be positive")
        if self.scenario in ("fanout", "slow") and self.rate <= 0:
            raise BenchError("--rate must be positive")
        if self.transport not in TRANSPORTS:
            raise BenchError("unknown transport %r" % self.transport)
        if self.transport != "tcp" and self.compat:
            raise BenchError("--ws and --tls speak gchat's name mode, not --compat")
        if self.size < MIN_SIZE:
            raise BenchError("--size must be at least %d (the marker needs room)" % MIN_SIZE)
        if self.rooms:
            if self.compat:
                raise BenchError(
                    "--rooms needs name mode: the seed protocol (--compat, "
                    "and compare, which runs it) has no rooms"
                )
            if self.scenario not in ROOM_SCENARIOS:
                raise BenchError(
                    "--rooms works with %s, not %s" % (", ".join(ROOM_SCENARIOS), self.scenario)
                )
            if not 1 <= self.rooms <= self.clients:
                raise BenchError(
                    "--rooms must be between 1 and --clients (every room needs a member)"
                )
        elif self.local_rooms:
            raise BenchError("--local-rooms puts each room's members on one node: it needs --rooms")


def wait_for_idle(busy_pct: float = 15.0, window: float = 5.0, timeout: float = 600.0) -> float:
    """Wait until the whole machine was under busy_pct % busy for `window`
    seconds (at most `timeout`); return the seconds waited.  On a shared
    machine someone else's load shows up as the server's latency."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if psutil.cpu_percent(interval=window) < busy_pct:
            break
    return time.monotonic() - t0


def cpu_of(pids: list) -> list:
    """User+system CPU seconds of each pid (0.0 for one that is gone)."""
    return [process_cpu_s(pid) or 0.0 for pid in pids]


def host_busy() -> tuple:
    """(busy CPU seconds of all cores, number of cores) of the machine.

    Busy is user+nice+system+irq+softirq: loopback TCP does much of its
    work in softirq, which no process is charged for.  Steal (time the
    hypervisor gave to other guests) is not ours and is left out; guest
    time is already inside user.
    """
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, psutil.cpu_count() or 1


def per_worker_clients() -> int:
    """Clients one worker process can hold: its open-file limit (the hard
    one: workers raise theirs to it) minus what it needs for itself."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 1 << 30
    return max(hard - WORKER_SPARE_FDS, 1)


def node_addresses(server, transport: str) -> list:
    """[(host, port)] the clients connect to: one per node of a cluster.

    --ws: a spawned gchat's --http port (read from its log); a --target is
    that port already.
    """
    nodes = server.nodes if isinstance(server, Cluster) else [server]
    out = []
    for node in nodes:
        port = node.port
        if transport == "ws" and node.proc is not None:
            if node.http_port is None:
                raise BenchError(
                    "--ws: the server printed no 'http listening on' line "
                    "(spawn gchat with --http 0; with --target give the "
                    "--http port)"
                )
            port = node.http_port
        out.append((node.host, port))
    return out


class WorkerPool:
    """The worker processes of one run and the line protocol to them."""

    def __init__(self, server: Server, opts: Options, n_slow: int = 0):
        self.server = server
        self.opts = opts
        n = opts.clients
        total = n + n_slow
        nw = opts.workers or max(
            1, min(os.cpu_count() or 1, math.ceil(n / 50)), math.ceil(total / per_worker_clients())
        )
        self.n = nw
        nodes = node_addresses(server, opts.transport)
        nsrc = opts.source_addrs or math.ceil(total / CLIENTS_PER_SOURCE)
        srcs = []
        if nsrc > 1 or opts.source_addrs:
            if any(":" in host for host, _ in nodes):
                raise BenchError("--source-addrs needs an IPv4 loopback target")
            srcs = ["127.0.%d.%d" % ((i + 1) // 256, (i + 1) % 256) for i in range(nsrc)]
        self.source_addrs = srcs
        senders = opts.senders if opts.scenario in ("fanout", "saturate", "slow") else 0
        prefix = "b%04x_" % random.getrandbits(16)
        self.procs = []
        for w in range(nw):
            cfg = {
                "host": nodes[0][0],
                "port": nodes[0][1],
                "transport": opts.transport,
                "mode": "compat" if opts.compat else "name",
                "clients": list(range(w, n, nw)),
                "slow": list(range(n + w, n + n_slow, nw)),
                "senders_total": max(senders, 1),
                # Sender j is client j: spread round-robin over the workers.
                "sender_of": {str(j): j for j in range(w, senders, nw)},
                "size": opts.size,
                "source_addrs": srcs,
                "name_prefix": prefix,
                "rooms": opts.rooms,
                "sessions": opts.sessions,
                "auth_secret": opts.auth_secret,
            }
            if len(nodes) > 1:
                # Client i connects to
                # nodes[cluster.node_of(i, len(nodes), rooms, local_rooms)].
                cfg["nodes"] = nodes
                cfg["local_rooms"] = opts.local_rooms
            p = subprocess.Popen(
                [sys.executable, "-m", "gchat_bench.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                preexec_fn=die_with_parent,
            )
            p.stdin.write((json.dumps(cfg) + "\n").encode())
            p.stdin.flush()
            self.procs.append(p)
        self.pids = [p.pid for p in self.procs]
        self._buf = [b""] * nw
        self.progress: list = [{} for _ in range(nw)]
        self.sel = selectors.DefaultSelector()
        for i, p in enumerate(self.procs):
            os.set_blocking(p.stdout.fileno(), False)
            self.sel.register(p.stdout.fileno(), selectors.EVENT_READ, i)
        self.gather("hello", 60.0)

    def send(self, cmd: str, args=None) -> None:
        """Send cmd to every worker; args is one dict or a list (per worker)."""
        for i, p in enumerate(self.procs):
            a = args[i] if isinstance(args, list) else (args or {})
            msg = dict(a, cmd=cmd)
            try:
                p.stdin.write((json.dumps(msg) + "\n").encode())
                p.stdin.flush()
            except BrokenPipeError:
                raise BenchError("worker %d died (exit %s)" % (i, p.poll())) from None

    def gather(self, ev: str, timeout: float, bar=None, bar_key=None) -> list:
        """Wait for each worker's reply to ev; feed progress to the bar."""
        replies: list = [None] * self.n
        deadline = time.monotonic() + timeout
        while any(r is None for r in replies):
            left = deadline - time.monotonic()
            if left <= 0:
                late = [i for i, r in enumerate(replies) if r is None]
                raise BenchError("workers %s did not finish %r within %.0f s" % (late, ev, timeout))
            for key, _ in self.sel.select(min(left, 0.5)):
                i = key.data
                try:
                    chunk = os.read(key.fd, 1 << 20)
                except BlockingIOError:
                    continue
                if not chunk:
                    self.sel.unregister(key.fd)
                    raise BenchError(
                        "worker %d exited (code %s) during %r" % (i, self.procs[i].wait(), ev)
                    )
                self._buf[i] += chunk
                while b"\n" in self._buf[i]:
                    line, self._buf[i] = self._buf[i].split(b"\n", 1)
                    msg = json.loads(line)
                    if msg["ev"] == "progress":
                        self.progress[i] = msg
                        if bar is not None and bar_key:
                            bar.set(sum(p.get(bar_key, 0) for p in self.progress))
                    elif msg["ev"] == "error":
                        raise BenchError(
                            "worker %d failed in %s: %s" % (i, msg["cmd"], msg["error"])
                        )
                    elif msg["ev"] == ev:
                        replies[i] = msg
                    else:
                        raise BenchError(
                            "worker %d: unexpected %r while waiting for %r" % (i, msg["ev"], ev)
                        )
            self.server.check_alive()
        self.progress = [{} for _ in range(self.n)]
        return replies

    def command(self, cmd: str, args=None, timeout: float = 60.0, bar=None, bar_key=None) -> list:
        self.send(cmd, args)
        return self.gather(cmd, timeout, bar, bar_key)

    def close(self) -> None:
        """Tell the workers to quit; kill the ones that do not."""
        for p in self.procs:
            try:
                p.stdin.write(b'{"cmd":"quit"}\n')
                p.stdin.close()
            except (BrokenPipeError, OSError):
                pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stdout.close()
        self.sel.close()


class Bar:
    """A tqdm progress bar on stderr (or nothing) with an absolute setter."""

    def __init__(self, enabled: Optional[bool], desc: str, total=None, unit="it"):
        disable = None if enabled is None else not enabled
        self.t = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            file=sys.stderr,
            disable=disable,
            leave=False,
            dynamic_ncols=True,
        )

    def set(self, n) -> None:
        self.t.n = n
        self.t.refresh()

    def close(self) -> None:
        self.t.close()


class Window:
    """CPU of server, workers and machine over one measured interval."""

    def __init__(self, server: Server, pool: WorkerPool):
        self.server, self.pool = server, pool
        self.t0 = time.monotonic()
        # A cluster: the CPU of each process of each part (node, redis).
        self.parts0 = server.cpu_by_part() if isinstance(server, Cluster) else None
        self.srv0 = server.cpu_s() if self.parts0 is None else 0.0
        self.gen0 = cpu_of(pool.pids)
        self.host0, self.ncpu = host_busy()

    def finish(self, wall: Optional[float] = None) -> dict:
        """Figures for the interval; wall (s) overrides the elapsed time
        for the generator's share of a core (see measure_phase)."""
        elapsed = time.monotonic() - self.t0
        parts = None
        if self.parts0 is not None:
            parts = part_cpu(self.parts0, self.server.cpu_by_part(), wall or elapsed)
            srv1 = parts.pop("server_cpu_s")
        else:
            srv1 = self.server.cpu_s()
        gen = [b - a for a, b in zip(self.gen0, cpu_of(self.pool.pids))]
        host1, _ = host_busy()
        w = max(wall or elapsed, 1e-6)
        srv = None if self.srv0 is None or srv1 is None else srv1 - self.srv0
        host_s = host1 - self.host0
        mine = sum(gen) + (srv or 0.0)
        if parts is not None:
            # The cluster's other processes (redis, a node whose pid is
            # known but not in the sum) are not "other load" either.
            mine = sum(gen) + sum(
                v for k, v in parts.items() if k.endswith("_cpu_s") and k != "nodes_cpu_s" and v
            )
        out = {
            "elapsed": elapsed,
            "server_cpu_s": srv,
            "server_cpu_pct": None if srv is None else 100.0 * srv / w,
            "generator_cpu_s": sum(gen),
            "generator_cpu_pct": 100.0 * max(gen) / w if gen else 0.0,
            "host_cpu_pct": 100.0 * host_s / (max(elapsed, 1e-6) * self.ncpu),
            # CPU neither the server nor the generator was charged for:
            # kernel softirq work for loopback TCP, and other load on a
            # shared machine.  In % of all cores.
            "host_other_cpu_pct": max(
                0.0, 100.0 * (host_s - mine) / (max(elapsed, 1e-6) * self.ncpu)
            ),
            "generator_cores": sum(gen) / w,
        }
        if parts is not None:
            out["server_cpu_max_process_pct"] = parts.pop("server_cpu_max_process_pct")
            out["parts"] = parts
        return out


def cluster_cpu(cpu: dict, deliveries) -> dict:
    """A cluster's CPU keys for a result (nothing for one server): each
    part's CPU seconds and % of a core, the busiest process's %, and the
    nodes' and redis-server's CPU per delivery (server_cpu_us_per_delivery
    is their sum)."""
    parts = cpu.get("parts")
    if parts is None:
        return {}
    out = dict(parts, server_cpu_max_process_pct=cpu["server_cpu_max_process_pct"])
    for k in ("nodes", "redis"):
        v = parts.get(k + "_cpu_s")
        if v is not None and deliveries:
            out[k + "_cpu_us_per_delivery"] = v * 1e6 / deliveries
    return out


def base_result(opts: Options, server: Server) -> dict:
    res = _base_result(opts, server)
    if opts.rooms:
        res.update(rooms=opts.rooms, room_size=opts.clients / opts.rooms, leaked=0)
    return res


def _base_result(opts: Options, server: Server) -> dict:
    return {
        "scenario": opts.scenario,
        "server": server.name,
        "mode": "compat" if opts.compat else "name",
        "clients": opts.clients,
        "senders": 0,
        "rate": 0.0,
        "duration_s": opts.duration,
        "size": opts.size,
        "deliveries_per_s": None,
        "p50_ms": None,
        "p90_ms": None,
        "p99_ms": None,
        "p999_ms": None,
        "max_ms": None,
        "mean_ms": None,
        "sent": 0,
        "expected": 0,
        "received": 0,
        "lost": 0,
        "duplicated": 0,
        "reordered": 0,
        "disconnected": 0,
        "connect_errors": 0,
        "server_cpu_s": None,
        "server_cpu_us_per_delivery": None,
        "server_rss_mb": None,
        "generator_saturated": False,
        "generator_cpu_pct": None,
        "host_cpu_pct": None,
        # "C" or "python": how the workers parse lines (stats.SCAN_IMPL;
        # the workers import the same install as this process).
        "generator_scan": SCAN_IMPL,
    }


def connect(pool: WorkerPool, opts: Options, which: str, count: int, res: dict) -> dict:
    """Connect `which` clients through the handshake; fold in errors."""
    bar = Bar(opts.progress, "connect %s" % which, total=count, unit="cl")
    try:
        reps = pool.command(
            "connect",
            {
                "which": which,
                "concurrency": opts.connect_concurrency,
                "timeout": opts.connect_timeout,
            },
            timeout=opts.connect_timeout * (1 + count / 1000) + 60,
            bar=bar,
            bar_key="connected" if which == "normal" else None,
        )
    finally:
        bar.close()
    ok = sum(r["ok"] for r in reps)
    errs = sum(r["errors"] for r in reps)
    res["connect_errors"] += errs
    if errs:
        samples = [s for r in reps for s in r["error_samples"]][:3]
        res.setdefault("connect_error_samples", samples)
    if which == "normal" and reps and "by_node" in reps[0]:
        # A cluster: clients that got through on each node (cluster.node_of)
        # and, with rooms, how many rooms have members there: every room
        # on every node when spread, each room on one node when local.
        res["node_connected"] = [sum(col) for col in zip(*(r["by_node"] for r in reps))]
        if "rooms_by_node" in reps[0]:
            res["node_rooms"] = [
                len(set().union(*col)) for col in zip(*(r["rooms_by_node"] for r in reps))
            ]
    if which == "normal" and ok == 0:
        raise BenchError(
            "no client got through the handshake: %s" % res.get("connect_error_samples")
        )
    return {
        "ok": ok,
        "hist": merge_encoded([r["hist"] for r in reps]),
        "t_last_ready": max(r["t_last_ready"] for r in reps),
    }


def settle(pool: WorkerPool, opts: Options, k: int, timeout: Optional[float] = None) -> dict:
    """Send sync marker k from one client and wait until all readers saw it."""
    # With rooms every worker sends the markers of the rooms it leads.
    args = [
        {"k": k, "send": i == 0 or bool(opts.rooms), "timeout": timeout or opts.settle_timeout}
        for i in range(pool.n)
    ]
    # A join storm can take a while to deliver: show clients that are done.
    bar = Bar(opts.progress, "settle", total=opts.clients, unit="cl")
    try:
        reps = pool.command(
            "sync", args, timeout=(timeout or opts.settle_timeout) + 30, bar=bar, bar_key="synced"
        )
    finally:
        bar.close()
    out = {
        "missing": sum(r["missing"] for r in reps),
        "seen": sum(r["seen"] for r in reps),
        "t_done": max(r["t_done"] for r in reps),
        "lines": sum(r["lines"] for r in reps),
    }
    if opts.rooms:
        out["leaked"] = sum(r["leaked"] for r in reps)
        out["leak_samples"] = [x for r in reps for x in r["leak_samples"]][:10]
    return out


def measure_phase(pool: WorkerPool, server: Server, opts: Options, closed: bool) -> dict:
    """One measured phase of sending and draining; returns its figures."""
    run = random.randrange(10**8, 10**9)
    pool.command("arm", {"run": run}, timeout=60)
    t0 = time.monotonic_ns() + int(START_LEAD_S * 1e9)
    args = {"run": run, "t0": t0, "duration": opts.duration}
    if closed:
        args.update(mode="closed", window=opts.window)
    else:
        args.update(mode="open", rate_per_sender=opts.rate / opts.senders)
    offered_total = None if closed else int(opts.rate * opts.duration)
    win = Window(server, pool)
    with RssSampler(server) as rss:
        bar = Bar(opts.progress, "send", total=offered_total, unit="msg")
        try:
            sent_r = pool.command("send", args, timeout=opts.duration + 60, bar=bar, bar_key="sent")
        finally:
            bar.close()
        t_send_end = time.monotonic_ns()
        total_sent = sum(r["sent"] for r in sent_r)
        sent_by: dict = {}
        for r in sent_r:
            sent_by.update(r["sent_by"])
        bar = Bar(opts.progress, "drain", total=None, unit="dlv")
        try:
            dr = pool.command(
                "drain",
                {
                    "total_sent": total_sent,
                    "sent_by": sent_by,
                    "quiet": opts.drain_quiet,
                    "timeout": opts.drain_timeout,
                },
                timeout=opts.drain_timeout + 60,
                bar=bar,
                bar_key="unique",
            )
        finally:
            bar.close()
    last_rx = max(r["last_rx"] for r in dr)
    # The generator's share of a core is taken over sending plus delivery,
    # not over the idle wait for quiet at the end of a drain.
    active_s = (max(last_rx, t_send_end) - t0) / 1e9 + START_LEAD_S
    cpu = win.finish(wall=active_s)
    hist = merge_encoded([r["hist"] for r in dr])
    lag = merge_encoded([r["lag_hist"] for r in sent_r])
    receivers = sum(r["receivers"] for r in dr)
    unique = sum(r["unique"] for r in dr)
    received = sum(r["received"] for r in dr)
    # Every line is owed to every reader (with rooms: every member of the
    # sender's room) still connected, whichever node each is on.
    members = room_members([r["receivers_by_room"] for r in dr]) if opts.rooms else None
    expected = expected_deliveries(sent_by, receivers, opts.rooms, members)
    offered = None if closed else sum(r["offered"] for r in sent_r)
    blocked = sum(r["blocked"] for r in sent_r)
    span = (last_rx - t0) / 1e9 if last_rx > t0 else None
    out = {
        "sent": total_sent,
        "offered": offered,
        "expected": expected,
        "received": received,
        "lost": expected - unique,
        "duplicated": sum(r["duplicated"] for r in dr),
        "reordered": sum(r["reordered"] for r in dr),
        "receivers": receivers,
        "disconnected": sum(r["disconnected"] for r in dr),
        "stale": sum(r["stale"] for r in dr),
        "server_errors": sum(r["errors"] for r in dr),
        "drain_complete": all(r["complete"] for r in dr),
        "loss_samples": [s for r in dr for s in r["loss_samples"]][:10],
        "senders_blocked": blocked,
        "deliveries_per_s": received / span if span else None,
        "send_rate": total_sent / opts.duration,
        "send_lag_p99_ms": percentiles_ms(lag)["p99_ms"],
        "server_rss_mb": rss.peak / 2**20 if rss.peak else None,
        "server_cpu_s": cpu["server_cpu_s"],
        "server_cpu_us_per_delivery": (
            cpu["server_cpu_s"] * 1e6 / received
            if cpu["server_cpu_s"] is not None and received
            else None
        ),
        "generator_cpu_s": cpu["generator_cpu_s"],
        "generator_cpu_pct": cpu["generator_cpu_pct"],
        "host_cpu_pct": cpu["host_cpu_pct"],
        "host_other_cpu_pct": cpu["host_other_cpu_pct"],
    }
    out.update(cluster_cpu(cpu, received))
    if opts.rooms:
        out["leaked"] = sum(r["leaked"] for r in dr)
        out["leak_samples"] = [x for r in dr for x in r["leak_samples"]][:10]
    out.update(percentiles_ms(hist))
    short = offered is not None and total_sent < SHORTFALL * offered
    out["send_shortfall"] = bool(short)
    out["server_cpu_pct"] = cpu["server_cpu_pct"]
    out["send_lag_p50_ms"] = percentiles_ms(lag)["p50_ms"]
    out["generator_saturated"] = saturated(cpu) or bool(short and blocked == 0)
    return out


def saturated(cpu: dict) -> bool:
    """Was the generator the limit during a window?

    Yes if a worker was busy nearly all the time (its clients' latencies
    include its own queueing), or if the machine was full while the server
    had less than a core and the generator used at least half a core (the
    generator took CPU the server could have used; a machine filled by
    someone else's load is not the generator's doing).  An open-loop
    shortfall without server push-back (a sender blocked in send means the
    server stopped reading) also counts; see measure_phase.
    """
    if cpu["generator_cpu_pct"] >= 100 * SATURATED_CPU:
        return True
    # A cluster (several processes) is its own limit when one of its
    # processes is: the busiest one stands for "the server" here.
    srv = cpu.get("server_cpu_max_process_pct", cpu.get("server_cpu_pct"))
    return bool(
        cpu["host_cpu_pct"] >= 100 * HOST_FULL
        and cpu["generator_cores"] >= GENERATOR_SIGNIFICANT
        and srv is not None
        and srv < 100 * SATURATED_CPU
    )


def run_scenario(opts: Options, server: Server) -> dict:
    """Run one scenario against one server; return the result dict."""
    opts.validate()
    nodes = len(server.nodes) if isinstance(server, Cluster) else 1
    if opts.local_rooms and nodes < 2:
        raise BenchError(
            "--local-rooms puts each room on one node of several: with one node "
            "(%s) every room is local already; use --spawn-cluster N (N >= 2) or "
            "--target H:P1,H:P2" % server.name
        )
    res = base_result(opts, server)
    # Over a Redis Cluster: each master's commands over the whole run.
    rcluster = None
    if isinstance(server, Cluster) and isinstance(server.redis, ClusterRedisCluster):
        rcluster = server.redis
        res["redis_cluster"] = {"masters": rcluster.masters, "replicas": rcluster.replicas}
        master_stats0 = rcluster.master_stats()
    n_slow = opts.slow_clients if opts.scenario == "slow" else 0
    rss_before = server.rss_bytes()
    t_start = time.monotonic_ns()
    pool = WorkerPool(server, opts, n_slow=n_slow)
    res["workers"] = pool.n
    res["source_addrs"] = len(pool.source_addrs) or 1
    res["transport"] = opts.transport
    res["sessions"] = opts.sessions
    res["signed_in"] = opts.auth_secret is not None
    if isinstance(server, Cluster):
        # Where the clients went (cluster.node_of), and what the server is.
        res["nodes"] = nodes
        res["server_workers"] = server.server_workers
        res["placement"] = "local" if opts.local_rooms else "spread"
        res["node_clients"] = spread(opts.clients, nodes, opts.rooms, opts.local_rooms)
        res["node_ports"] = [p for _, p in node_addresses(server, opts.transport)]
    scraper = None
    if opts.scrape_metrics:
        scraper = MetricsScraper(server, opts.scrape_metrics)
    try:
        if opts.scenario == "join":
            return _join(pool, server, opts, res, rss_before)
        if opts.scenario == "idle":
            return _idle(pool, server, opts, res, rss_before)
        conn = connect(pool, opts, "normal", opts.clients, res)
        res["connected"] = conn["ok"]
        s = settle(pool, opts, 1)
        res["settle_missing"] = s["missing"]
        _leaks(res, s)
        res["senders"] = opts.senders
        res["join_s"] = (s["t_done"] - t_start) / 1e9
        if opts.scenario == "fanout":
            res["rate"] = opts.rate
            res.update(measure_phase(pool, server, opts, closed=False))
            # Memory per client after the traffic, for the cost curve.
            _rss_per_client(res, server, rss_before, conn["ok"])
        elif opts.scenario == "saturate":
            res["window"] = opts.window
            if scraper:
                scraper.start()
            m = measure_phase(pool, server, opts, closed=True)
            m["rate"] = m["send_rate"]  # closed loop: the rate it reached
            res.update(m)
        elif opts.scenario == "slow":
            res["rate"] = opts.rate
            control = measure_phase(pool, server, opts, closed=False)
            slow = connect(pool, opts, "slow", n_slow, res)
            res["slow_clients"] = n_slow
            res["slow_connected"] = slow["ok"]
            settle(pool, opts, 2)
            res.update(measure_phase(pool, server, opts, closed=False))
            sc = pool.command("slowcheck", {}, timeout=60)
            res["slow_closed_by_server"] = sum(r["closed"] for r in sc)
            res["slow_still_open"] = sum(r["open"] for r in sc)
            for k in ("p50_ms", "p99_ms", "p999_ms", "deliveries_per_s", "lost"):
                res["control_" + k] = control[k]
            res["p99_vs_control"] = (
                res["p99_ms"] / control["p99_ms"] if res["p99_ms"] and control["p99_ms"] else None
            )
            res["control_generator_saturated"] = control["generator_saturated"]
            res["generator_saturated"] = (
                res["generator_saturated"] or control["generator_saturated"]
            )
        return res
    finally:
        if scraper:
            res.update(scraper.stop())
        if isinstance(server, Cluster):
            res["server_processes"] = server.processes()
            res["server_pids"] = server.pids()
            if server.redis is not None:
                r = server.redis.rss_bytes()
                res["redis_rss_mb"] = r / 2**20 if r else None
        if rcluster is not None:
            try:
                res.update(master_commands(master_stats0, rcluster.master_stats()))
            except (OSError, ReplyError) as e:  # a master died: the run says so
                res["redis_masters_error"] = str(e)
        pool.close()


class MetricsScraper:
    """GET /metrics on the server's --http port every `interval` seconds in
    a thread, as Prometheus would (one keep-alive connection, reopened on
    error), for as long as the measured phase runs."""

    def __init__(self, server: Server, interval: float):
        if server.http_port is None:
            raise BenchError(
                "--scrape-metrics: the server has no --http port (spawn gchat with --http 0)"
            )
        self.addr = (server.host, server.http_port)
        self.interval = interval
        self.ok = self.errors = 0
        self.times: list = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name="scraper")

    def start(self) -> None:
        self._t.start()

    def _run(self) -> None:
        import http.client

        conn = None
        nxt = time.monotonic()
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(*self.addr, timeout=5)
                conn.request("GET", "/metrics")
                r = conn.getresponse()
                body = r.read()
                if r.status == 200 and b"gchat_deliveries_total" in body:
                    self.ok += 1
                    self.times.append(time.monotonic() - t)
                else:
                    self.errors += 1
            except (OSError, http.client.HTTPException):
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
            nxt += self.interval
            self._stop.wait(max(0.0, nxt - time.monotonic()))
        if conn is not None:
            conn.close()

    def stop(self) -> dict:
        if self._t.is_alive():
            self._stop.set()
            self._t.join()
        return {
            "metrics_scrapes": self.ok,
            "metrics_scrape_errors": self.errors,
            "metrics_scrape_ms_p50": (statistics.median(self.times) * 1e3 if self.times else None),
            "scrape_interval_s": self.interval,
        }


def _join(pool, server, opts, res, rss_before) -> dict:
    """Connect N clients at once; time until every arrival is delivered."""
    win = Window(server, pool)
    t_start = time.monotonic_ns()
    with RssSampler(server) as rss:
        conn = connect(pool, opts, "normal", opts.clients, res)
        s = settle(pool, opts, 1)
    join_s = (s["t_done"] - t_start) / 1e9
    cpu = win.finish(wall=join_s)
    _leaks(res, s)
    res.update(percentiles_ms(conn["hist"]))
    res.update(
        {
            "connected": conn["ok"],
            "connect_s": (conn["t_last_ready"] - t_start) / 1e9,
            "join_s": join_s,
            # Deliveries: every line the clients received (welcomes, prompts,
            # rosters, arrivals, the sync marker).
            "deliveries": s["lines"],
            "deliveries_per_s": s["lines"] / join_s if join_s > 0 else None,
            "sent": 1,
            "expected": conn["ok"],
            "received": s["seen"],
            "lost": s["missing"],
            "server_rss_mb": rss.peak / 2**20 if rss.peak else None,
            "server_cpu_s": cpu["server_cpu_s"],
            "server_cpu_us_per_delivery": (
                cpu["server_cpu_s"] * 1e6 / s["lines"]
                if cpu["server_cpu_s"] is not None and s["lines"]
                else None
            ),
            "generator_cpu_s": cpu["generator_cpu_s"],
            "generator_cpu_pct": cpu["generator_cpu_pct"],
            "host_cpu_pct": cpu["host_cpu_pct"],
            "host_other_cpu_pct": cpu["host_other_cpu_pct"],
            "server_cpu_pct": cpu["server_cpu_pct"],
            "generator_saturated": saturated(cpu),
        }
    )
    res.update(cluster_cpu(cpu, s["lines"]))
    _rss_per_client(res, server, rss_before, conn["ok"])
    return res


def _idle(pool, server, opts, res, rss_before) -> dict:
    """N silent clients: server memory per connection and idle CPU."""
    conn = connect(pool, opts, "normal", opts.clients, res)
    res["connected"] = conn["ok"]
    settle(pool, opts, 1)
    res.update(percentiles_ms(conn["hist"]))
    win = Window(server, pool)
    samples = []
    bar = Bar(opts.progress, "idle", total=int(opts.duration), unit="s")
    try:
        end = time.monotonic() + opts.duration
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.5))
            server.check_alive()
            r = server.rss_bytes()
            if r:
                samples.append(r)
            bar.set(int(opts.duration - max(left - 0.5, 0)))
    finally:
        bar.close()
    cpu = win.finish()
    # Still there?  Every client must see one more marker.
    s = settle(pool, opts, 2, timeout=60)
    _leaks(res, s)
    res.update(
        {
            "sent": 1,
            "expected": conn["ok"],
            "received": s["seen"],
            "lost": s["missing"],
            "server_rss_mb": statistics.median(samples) / 2**20 if samples else None,
            "server_cpu_s": cpu["server_cpu_s"],
            "server_cpu_pct": cpu["server_cpu_pct"],
            "generator_cpu_s": cpu["generator_cpu_s"],
            "generator_cpu_pct": cpu["generator_cpu_pct"],
            "host_cpu_pct": cpu["host_cpu_pct"],
            "host_other_cpu_pct": cpu["host_other_cpu_pct"],
            "generator_saturated": saturated(cpu),
        }
    )
    res.update(cluster_cpu(cpu, None))
    _rss_per_client(
        res, server, rss_before, conn["ok"], statistics.median(samples) if samples else None
    )
    return res


def _leaks(res: dict, reply: dict) -> None:
    """Fold the leak count of a settle (cumulative per worker) into res."""
    if "leaked" in reply:
        res["leaked"] = max(res.get("leaked", 0), reply["leaked"])
        if reply["leak_samples"]:
            res["leak_samples"] = reply["leak_samples"]


def _rss_per_client(res, server, before, n, after=None) -> None:
    after = after if after is not None else server.rss_bytes()
    res["server_rss_before_mb"] = before / 2**20 if before else None
    res["server_rss_per_client_kb"] = (
        (after - before) / 1024 / n if before and after and n else None
    )
