"""gchat-bench: load-test gchat (or any server of its line protocol).

    gchat-bench SCENARIO [--clients N[,N...]] [--senders S] [--rate R]
                [--duration SECONDS] [--size BYTES]
                [--target HOST:PORT[,HOST:PORT...] [--server-pid PID[,PID...]]
                 [--redis-pid PID] | --spawn=OPTIONS]
                [--spawn-cluster N [--redis-cluster M[xR]]] [--spawn-workers K]
                [--rooms K[,K...] [--local-rooms]]
                [--compat] [--json] [--plot FILE.png] [--repeat R]

See bench/README.md for the scenarios and what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
from typing import Optional

from gchat_bench.cluster import parse_pids, parse_targets
from gchat_bench.runner import SCENARIOS, Options, run_scenario, wait_for_idle
from gchat_bench.servers import (
    BenchError,
    Cluster,
    Server,
    baseline_command,
    check_loopback,
    gchat_command,
    parse_redis_cluster,
    spawn_argv,
)
from gchat_bench.transports import TRANSPORTS, spawn_options

DEFAULTS = {
    "clients": "1000",
    "senders": 10,
    "rate": 100.0,
    "duration": 10.0,
    "size": 64,
    "window": 4,
    "slow_clients": 10,
}


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="gchat-bench",
        description="Load-test gchat, or any server of its line protocol, with "
        "thousands of simulated clients.",
        epilog="Write --spawn with '=': --spawn='--compat --sendq 65536', or --spawn= "
        "for gchat's defaults. Without --target or --spawn, gchat is spawned "
        "with its defaults. A cluster: --spawn-cluster N starts its own "
        "redis-server (free port, no persistence) and N gchat nodes "
        "(gchat --redis URL --port 0 OPTIONS), and deals the clients over "
        "them; --spawn-workers K starts gchat --workers K --redis URL (one "
        "port); both together: N nodes of K workers. --redis-cluster MxR puts "
        "the nodes on a Redis Cluster of M masters with R replicas each "
        "instead of one redis-server. The table and JSON then "
        "give the CPU of every node and of Redis (node0_cpu_pct, ..., "
        "redis_cpu_pct, every redis-server summed); us/dlv is their sum. --target H:P1,H:P2 loads "
        "nodes already running. Three more scenarios have options of their own: "
        "`gchat-bench soak --help` (churn while senders send; nothing may be "
        "lost), `gchat-bench fuzz --help` (garbage from many clients) and "
        "`gchat-bench history --help` (server CPU per /join for a room's history).",
    )
    ap.add_argument(
        "scenario",
        choices=SCENARIOS + ("compare",),
        help="fanout: open-loop fixed rate; saturate: closed loop, highest "
        "deliveries/s; join: connect storm until quiet; idle: memory per "
        "connection; slow: fanout plus clients that never read; compare: "
        "one scenario against gchat --compat and the baselines",
    )
    ap.add_argument(
        "--clients",
        default=DEFAULTS["clients"],
        help="clients, or a comma list for a sweep (default 1000; "
        "at most ~19000 per server process: 20000 open files "
        "per process; more over a cluster)",
    )
    ap.add_argument(
        "--senders",
        type=int,
        default=None,
        help="clients that send (default 10; with --rooms: every client)",
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=DEFAULTS["rate"],
        help="messages/s of all senders together, open loop (default 100)",
    )
    ap.add_argument(
        "--duration",
        type=float,
        default=DEFAULTS["duration"],
        help="seconds of sending; idle: of holding (default 10)",
    )
    ap.add_argument(
        "--size",
        type=int,
        default=DEFAULTS["size"],
        help="bytes per chat line sent (default 64, at least 48)",
    )
    ap.add_argument(
        "--window",
        type=int,
        default=DEFAULTS["window"],
        help="saturate: messages in flight per sender (default 4)",
    )
    ap.add_argument(
        "--slow-clients",
        type=int,
        default=DEFAULTS["slow_clients"],
        help="slow: clients that never read (default 10)",
    )
    where = ap.add_mutually_exclusive_group()
    where.add_argument(
        "--target",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="a server already running (loopback only); a comma list: "
        "the nodes of a cluster, client i on node i %% N (within "
        "each room with --rooms; each room on one node with --local-rooms)",
    )
    where.add_argument(
        "--spawn",
        metavar="OPTIONS",
        help="start gchat on a free port with OPTIONS (one argument); "
        "with --spawn-cluster/--spawn-workers, every node gets them",
    )
    ap.add_argument(
        "--server-pid",
        metavar="PID[,PID...]",
        help="with --target: the server's pid, for its CPU and RSS; with "
        "several targets one pid per target (CPU and RSS of each "
        "include its child processes)",
    )
    ap.add_argument(
        "--redis-pid",
        type=int,
        metavar="PID",
        help="with --target: the cluster's redis-server, for its CPU",
    )
    ap.add_argument(
        "--spawn-cluster",
        type=int,
        metavar="N",
        default=0,
        help="spawn redis-server on a free loopback port (--save '' "
        "--appendonly no) and N gchat nodes on it (gchat --redis URL "
        "--port 0 OPTIONS), each on its own port; the clients are "
        "dealt over the nodes; reports the CPU of each node and of "
        "redis-server",
    )
    ap.add_argument(
        "--spawn-workers",
        type=int,
        metavar="K",
        default=0,
        help="spawn gchat --workers K --redis URL (K processes on one port, "
        "SO_REUSEPORT) and its redis-server; CPU and RSS are summed "
        "over the supervisor's processes. With --spawn-cluster N: "
        "N such nodes",
    )
    ap.add_argument(
        "--redis-cluster",
        metavar="M[xR]",
        default=None,
        help="with --spawn-cluster N: start a Redis Cluster of M masters (at "
        "least 3) with R replicas each (default 0) instead of one redis-server, "
        "and give node i the URL of master i %% M (gchat finds the others). "
        "redis%% is then the CPU of every redis-server summed, and the JSON "
        "has each master's commands over the run (redis_masters: slots, "
        "commands, commandstats; redis_master_balance: min and max over the "
        "mean)",
    )
    ap.add_argument(
        "--redis-server",
        metavar="PATH",
        default=None,
        help="the redis-server the cluster forms spawn (default: on PATH)",
    )
    ap.add_argument(
        "--server-cmd",
        metavar="CMD",
        help="spawn this command instead of gchat (it gets --host H "
        "--port 0 and OPTIONS), e.g. 'python -m "
        "gchat_bench.baselines.seed_port'",
    )
    ap.add_argument(
        "--compat",
        action="store_true",
        help="speak the seed protocol (implied by --compat in --spawn)",
    )
    ap.add_argument(
        "--rooms",
        metavar="K[,K...]",
        default=None,
        help="name mode: after naming, client i joins room i %% K (K rooms "
        "of clients/K); chat, loss and leaks are counted per room. "
        "A comma list runs a sweep. fanout, saturate, join, idle",
    )
    ap.add_argument(
        "--sessions",
        action="store_true",
        help="name mode: every client asks for /session once ready, so that "
        "every line it receives carries its id (@ID LINE): the cost of ids "
        "against the same run without",
    )
    ap.add_argument(
        "--auth-secret",
        metavar="SECRET",
        default=None,
        help="name mode: every client signs in with /auth TOKEN, an HS256 JWT for its "
        "name made with SECRET (the server needs --auth-key FILE holding it: "
        "--spawn=--auth-key=FILE); needs PyJWT",
    )
    ap.add_argument(
        "--local-rooms",
        action="store_true",
        help="a cluster (--spawn-cluster N, or --target with several nodes): "
        "put every member of room r on node r %% N, as a deployment that "
        "routes users by room would, instead of dealing each room's members "
        "over every node (the default). Needs --rooms and at least 2 nodes "
        "(an error with one server: every room is on one node already)",
    )
    ap.add_argument(
        "--offered-deliveries",
        metavar="D",
        type=float,
        default=None,
        help="open loop: instead of --rate, send rate = D / room size "
        "(clients/rooms, or clients without --rooms), so that every "
        "point of a sweep offers D deliveries/s",
    )
    ap.add_argument(
        "--scenario",
        dest="compare_scenario",
        default="fanout",
        choices=SCENARIOS,
        help="compare: the scenario to run (default fanout)",
    )
    ap.add_argument(
        "--baselines", default=None, help="compare: comma list of baselines (default: all)"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each setting R times (servers interleaved); the table shows medians",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="generator processes (default: one per core, or more so "
        "that none holds more clients than its open-file limit)",
    )
    ap.add_argument(
        "--source-addrs",
        type=int,
        default=0,
        help="spread clients over K source addresses 127.0.0.1.. (default: one per 10000 clients)",
    )
    ap.add_argument(
        "--connect-concurrency",
        type=int,
        default=200,
        help="handshakes in progress per worker (default 200)",
    )
    ap.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="longest wait for in-flight messages after sending (default 60)",
    )
    ap.add_argument(
        "--max-other-load",
        metavar="PCT",
        type=float,
        default=None,
        help="shared machine: before each run wait for an idle machine; "
        "discard a run in which CPU that neither the server nor the "
        "generator used (host_other_cpu_pct) exceeded PCT%% of the "
        "machine, and run it again (at most --retries times). Discarded "
        "runs are still printed with --json, marked 'discarded'",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=5,
        help="with --max-other-load: re-runs per setting (default 5)",
    )
    tr = ap.add_mutually_exclusive_group()
    tr.add_argument(
        "--ws",
        dest="transports",
        action="store_const",
        const="ws",
        help="clients speak WebSocket to gchat's --http port (GET /ws; a "
        "spawned gchat gets --http 0; with --target give the --http port)",
    )
    tr.add_argument(
        "--tls",
        dest="transports",
        action="store_const",
        const="tls",
        help="clients speak TLS (a spawned gchat gets a self-signed certificate made for the run)",
    )
    tr.add_argument(
        "--transports",
        dest="transports",
        metavar="T[,T...]",
        help="comma list of tcp, ws, tls: run each setting over each, "
        "interleaved; the table adds ratios to the first",
    )
    ap.add_argument(
        "--scrape-metrics",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="saturate: GET /metrics on the --http port every SECONDS "
        "during the measured phase (spawn with --http 0)",
    )
    ap.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per run on stdout (the table goes to stderr)",
    )
    ap.add_argument(
        "--plot",
        metavar="FILE.png",
        help="plot latency percentiles and deliveries/s against clients",
    )
    prog = ap.add_mutually_exclusive_group()
    prog.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show progress bars (default: when stderr is a terminal)",
    )
    prog.add_argument("--no-progress", dest="progress", action="store_false")
    return ap.parse_args(argv)


def parse_target(s: str) -> tuple:
    host, _, port = s.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise BenchError("--target wants HOST:PORT, got %r" % s)
    check_loopback(host)
    return host, int(port)


def placement_note(rooms: int, nodes: int, local: bool) -> str:
    """What the title line of a run says about where rooms are (a cluster
    with rooms): the result's "placement", in words."""
    if not rooms or nodes < 2:
        return ""
    return ", each room on one node" if local else ", each room over every node"


def cluster_name(
    base: str, nodes: int, server_workers: int, redis_cluster: Optional[tuple] = None
) -> str:
    """gchat-2n (2 nodes), gchat-w4 (one node of 4 workers), gchat-2n-w4;
    over a Redis Cluster gchat-2n-rc3 (3 masters), gchat-2n-rc3x1 (and a
    replica each)."""
    name = base
    if nodes:
        name += "-%dn" % nodes
    if server_workers:
        name += "-w%d" % server_workers
    if redis_cluster:
        masters, replicas = redis_cluster
        name += "-rc%d" % masters + ("x%d" % replicas if replicas else "")
    return name


def server_name(cmd: list) -> str:
    if "-m" in cmd:
        return cmd[cmd.index("-m") + 1].rsplit(".", 1)[-1]
    return os.path.basename(cmd[0])


class ServerSpec:
    """How to get one server for a run: spawn it, or use --target."""

    def __init__(
        self,
        name: str,
        argv: Optional[list] = None,
        target: Optional[tuple] = None,
        pid: Optional[int] = None,
    ):
        self.name, self.argv, self.target, self.pid = name, argv, target, pid

    def start(self) -> Server:
        if self.target:
            return Server(self.name, self.target[0], self.target[1], pid=self.pid)
        return Server.spawn(self.name, self.argv)


class ClusterSpec(ServerSpec):
    """A cluster for one run: spawned (its own redis-server and `nodes`
    nodes of argv, each with `server_workers` workers if set) or already
    running (targets, with their pids and redis-server's if given).
    redis_cluster=(M, R): a Redis Cluster instead of one redis-server."""

    def __init__(
        self,
        name: str,
        argv: Optional[list] = None,
        nodes: int = 1,
        server_workers: int = 0,
        redis_path: Optional[str] = None,
        targets: Optional[list] = None,
        pids: Optional[list] = None,
        redis_pid: Optional[int] = None,
        redis_cluster: Optional[tuple] = None,
    ):
        super().__init__(name, argv=argv)
        self.nodes, self.server_workers, self.redis_path = nodes, server_workers, redis_path
        self.redis_cluster = redis_cluster
        self.targets, self.pids, self.redis_pid = targets, pids, redis_pid

    def start(self) -> Cluster:
        if self.targets:
            pids = self.pids or [None] * len(self.targets)
            nodes = [
                Server("%s/node%d" % (self.name, i), h, p, pid=pid, tree=True)
                for i, ((h, p), pid) in enumerate(zip(self.targets, pids))
            ]
            redis = (
                Server("redis", "", 0, pid=self.redis_pid) if self.redis_pid is not None else None
            )
            return Cluster(self.name, nodes, redis)
        return Cluster.spawn(
            self.name,
            self.argv,
            self.nodes,
            self.server_workers,
            self.redis_path,
            self.redis_cluster,
        )


def record_exit(res: dict, server) -> None:
    """Put a stopped server's non-zero exit code (each node's, for a
    cluster) into its result."""
    if server.exit_code not in (None, 0):
        res["server_exit_code"] = server.exit_code
        if isinstance(server, Cluster):
            res["server_exit_codes"] = server.exit_codes


def server_specs(a: argparse.Namespace, compat: bool, transport: str = "tcp") -> list:
    """The servers of this invocation, gchat (or the one asked for) first.
    Over another transport than tcp the name says so (gchat+ws)."""
    suffix = "" if transport == "tcp" else "+" + transport
    if a.target and ("," in a.target or a.redis_pid is not None):
        targets = parse_targets(a.target)
        pids = parse_pids(a.server_pid, len(targets)) if a.server_pid else None
        name = cluster_name("target", len(targets) if len(targets) > 1 else 0, 0)
        first = ClusterSpec(name + suffix, targets=targets, pids=pids, redis_pid=a.redis_pid)
    elif a.target:
        pid = parse_pids(a.server_pid, 1)[0] if a.server_pid else None
        first = ServerSpec("target" + suffix, target=parse_target(a.target), pid=pid)
    else:
        cmd = shlex.split(a.server_cmd) if a.server_cmd else gchat_command()
        name = server_name(cmd) if a.server_cmd else "gchat"
        argv = spawn_argv(cmd, spawn_options(transport, a.spawn or ""), compat)
        if a.spawn_cluster or a.spawn_workers:
            rc = parse_redis_cluster(a.redis_cluster) if a.redis_cluster else None
            first = ClusterSpec(
                cluster_name(name, a.spawn_cluster, a.spawn_workers, rc) + suffix,
                argv=argv,
                nodes=a.spawn_cluster or 1,
                server_workers=a.spawn_workers,
                redis_path=a.redis_server,
                redis_cluster=rc,
            )
        else:
            first = ServerSpec(name + suffix, argv=argv)
    specs = [first]
    if a.scenario == "compare":
        from gchat_bench.baselines import BASELINES

        names = a.baselines.split(",") if a.baselines else list(BASELINES)
        for n in names:
            if n not in BASELINES:
                raise BenchError("unknown baseline %r (have: %s)" % (n, ", ".join(BASELINES)))
            specs.append(
                ServerSpec(
                    n, argv=baseline_command(BASELINES[n]) + ["--host", "127.0.0.1", "--port", "0"]
                )
            )
    return specs


def run_spawned(
    opts: Options,
    spawn: str = "",
    server_cmd: Optional[list] = None,
    name: Optional[str] = None,
    nodes: int = 0,
    server_workers: int = 0,
    redis_path: Optional[str] = None,
    redis_cluster=None,
) -> dict:
    """Spawn a server (gchat unless server_cmd), run one scenario, stop it.

    The Python API behind ``gchat-bench SCENARIO --spawn=...`` for one run;
    ``--compat`` in spawn implies the seed protocol, as on the command line.
    nodes / server_workers: a cluster, as --spawn-cluster / --spawn-workers;
    redis_cluster: its Redis a Redis Cluster, as --redis-cluster ("3x1",
    3, or (3, 1)); it needs nodes.
    """
    if "--compat" in shlex.split(spawn):
        opts.compat = True
    cmd = server_cmd or gchat_command()
    base = name or (server_name(cmd) if server_cmd else "gchat")
    argv = spawn_argv(cmd, spawn_options(opts.transport, spawn), opts.compat)
    rc = None
    if redis_cluster is not None:
        rc = parse_redis_cluster(redis_cluster)
        check_redis_cluster(nodes)
    if nodes or server_workers:
        check_cluster_options(nodes, server_workers, spawn)
        server = Cluster.spawn(
            name or cluster_name(base, nodes, server_workers, rc),
            argv,
            nodes or 1,
            server_workers,
            redis_path,
            rc,
        )
    else:
        server = Server.spawn(base, argv)
    try:
        res = run_scenario(opts, server)
    finally:
        server.stop()
    record_exit(res, server)
    return res


def check_cluster_options(nodes: int, server_workers: int, spawn: str) -> None:
    """The cluster forms add --redis and --workers themselves."""
    if nodes < 0 or server_workers < 0:
        raise BenchError("--spawn-cluster and --spawn-workers must not be negative")
    given = [o.split("=")[0] for o in shlex.split(spawn or "")]
    for opt in ("--redis", "--workers"):
        if opt in given:
            raise BenchError(
                "--spawn-cluster/--spawn-workers set %s themselves: leave it out of --spawn" % opt
            )


def check_redis_cluster(nodes: int) -> None:
    """--redis-cluster is the Redis of a spawned cluster of nodes."""
    if nodes < 1:
        raise BenchError(
            "--redis-cluster is the Redis of the gchat nodes that --spawn-cluster N "
            "starts: it needs --spawn-cluster"
        )


def main(argv: Optional[list] = None) -> int:
    """Entry point of the gchat-bench console script."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("soak", "fuzz"):
        # Churn and garbage: their own runner (chaos.py), their own options.
        from gchat_bench import chaos

        return chaos.main(args)
    if args and args[0] == "history":
        # The CPU cost of a room's history on /join (history.py).
        from gchat_bench import history

        return history.main(args[1:])
    a = parse_args(argv)
    try:
        return _main(a)
    except BenchError as e:
        print("gchat-bench: error: %s" % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gchat-bench: interrupted", file=sys.stderr)
        return 130


def _main(a: argparse.Namespace) -> int:
    from gchat_bench import report

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # the spawned server inherits it: one fd per client
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        counts = [int(x) for x in str(a.clients).split(",") if x.strip()]
    except ValueError:
        raise BenchError("--clients wants N or N,N,...") from None
    if not counts:
        raise BenchError("--clients wants N or N,N,...")
    scenario = a.compare_scenario if a.scenario == "compare" else a.scenario
    compat = a.compat or a.scenario == "compare" or "--compat" in shlex.split(a.spawn or "")
    if a.server_pid and not a.target:
        raise BenchError("--server-pid goes with --target")
    if a.redis_pid is not None and not a.target:
        raise BenchError(
            "--redis-pid goes with --target (a spawned cluster's redis-server is measured anyway)"
        )
    if (a.spawn_cluster or a.spawn_workers) and a.target:
        raise BenchError("--spawn-cluster/--spawn-workers spawn the servers: not with --target")
    if a.spawn_cluster or a.spawn_workers:
        check_cluster_options(a.spawn_cluster, a.spawn_workers, a.spawn)
    if a.redis_cluster is not None:
        parse_redis_cluster(a.redis_cluster)
        check_redis_cluster(a.spawn_cluster)
    if a.repeat < 1:
        raise BenchError("--repeat must be at least 1")
    try:
        room_counts = [int(x) for x in str(a.rooms).split(",") if x.strip()] if a.rooms else [0]
    except ValueError:
        raise BenchError("--rooms wants K or K,K,...") from None
    if a.rooms and (not room_counts or min(room_counts) < 1):
        raise BenchError("--rooms wants K or K,K,... with every K at least 1")
    if a.rooms and compat:
        raise BenchError(
            "--rooms needs name mode: the seed protocol (--compat, and "
            "compare, which runs it) has no rooms"
        )
    # Nodes the clients are dealt over (0: one server, or one node of workers).
    nodes = a.target.count(",") + 1 if a.target else a.spawn_cluster
    if a.local_rooms:
        if not a.rooms:
            raise BenchError("--local-rooms puts each room's members on one node: it needs --rooms")
        if nodes < 2:
            raise BenchError(
                "--local-rooms puts each room on one node of several: it needs a "
                "cluster of at least 2 nodes (--spawn-cluster N, or --target "
                "H:P1,H:P2); with one server every room is on one node already"
            )
    if a.offered_deliveries is not None and a.offered_deliveries <= 0:
        raise BenchError("--offered-deliveries must be positive")
    transports = [t.strip() for t in (a.transports or "tcp").split(",") if t.strip()]
    for t in transports:
        if t not in TRANSPORTS:
            raise BenchError("unknown transport %r (have: %s)" % (t, ", ".join(TRANSPORTS)))
    if len(set(transports)) != len(transports):
        raise BenchError("--transports: each transport once")
    if transports != ["tcp"] and (compat or a.scenario == "compare"):
        raise BenchError("--ws/--tls speak gchat's name mode: not with --compat or compare")
    if len(transports) > 1 and a.target:
        raise BenchError("--transports with several transports needs a spawned server")
    if a.scrape_metrics < 0:
        raise BenchError("--scrape-metrics must not be negative")
    try:
        tspecs = [(t, server_specs(a, compat, t)) for t in transports]
    except RuntimeError as e:  # no openssl for the certificate
        raise BenchError(str(e)) from None
    specs = tspecs[0][1]

    out = sys.stderr if a.json else sys.stdout
    runs = []
    for n, k, rep, spec, transport in [
        (n, k, rep, spec, t)
        for n in counts
        for rep in range(a.repeat)
        for k in room_counts
        for t, tsp in tspecs
        for spec in tsp
    ]:
        # With rooms every client sends unless --senders says otherwise.
        senders = a.senders if a.senders is not None else (n if k else DEFAULTS["senders"])
        rate = a.rate
        if a.offered_deliveries is not None:
            rate = a.offered_deliveries / (n / k if k else n)
        opts = Options(
            scenario=scenario,
            clients=n,
            senders=min(senders, n),
            rate=rate,
            duration=a.duration,
            size=a.size,
            window=a.window,
            slow_clients=a.slow_clients,
            workers=a.workers,
            compat=compat,
            source_addrs=a.source_addrs,
            connect_concurrency=a.connect_concurrency,
            drain_timeout=a.drain_timeout,
            progress=a.progress,
            rooms=k,
            local_rooms=a.local_rooms,
            transport=transport,
            scrape_metrics=a.scrape_metrics,
            sessions=a.sessions,
            auth_secret=a.auth_secret,
        )
        opts.validate()
        attempt = 0
        while True:
            if a.max_other_load is not None:
                waited = wait_for_idle()
                if waited > 5.5:
                    print(
                        "gchat-bench: waited %.0f s for an idle machine" % waited, file=sys.stderr
                    )
            print(
                "gchat-bench: %s against %s, %d clients%s%s (run %d/%d%s)"
                % (
                    scenario,
                    spec.name,
                    n,
                    " in %d rooms" % k if k else "",
                    placement_note(k, nodes, a.local_rooms),
                    rep + 1,
                    a.repeat,
                    ", attempt %d" % (attempt + 1) if attempt else "",
                ),
                file=sys.stderr,
            )
            server = spec.start()
            try:
                res = run_scenario(opts, server)
            finally:
                server.stop()
            res["repeat_index"] = rep
            record_exit(res, server)
            other = res.get("host_other_cpu_pct")
            if a.max_other_load is not None and other is not None and other > a.max_other_load:
                if attempt < a.retries:
                    attempt += 1
                    res["discarded"] = (
                        "others used %.0f%% of the machine (over "
                        "--max-other-load %g)" % (other, a.max_other_load)
                    )
                    print("gchat-bench: run discarded: %s" % res["discarded"], file=sys.stderr)
                    if a.json:
                        print(json.dumps(res), flush=True)
                    continue
                res["machine_busy"] = True
            if a.max_other_load is not None:
                res["attempts"] = attempt + 1
            break
        runs.append(res)
        if a.json:
            print(json.dumps(res), flush=True)

    # Medians per (server, clients); ratios of the first server to the others.
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["clients"], r.get("rooms", 0), r["server"]), []).append(r)
    summary = [report.median_result(g) if len(g) > 1 else g[0] for g in groups.values()]
    if a.scenario == "compare":
        for s in summary:
            if s["server"] == specs[0].name:
                for b in summary:
                    if b["clients"] == s["clients"] and b["server"] != s["server"]:
                        s["vs_" + b["server"]] = report.ratios(s, b)
    if len(tspecs) > 1:
        # Each transport against the first one, measured in this invocation.
        base_name = tspecs[0][1][0].name
        for s in summary:
            for b in summary:
                if (
                    b["server"] == base_name
                    and s["server"] != base_name
                    and b["clients"] == s["clients"]
                    and b.get("rooms", 0) == s.get("rooms", 0)
                ):
                    s["vs_" + base_name] = report.ratios(s, b)
    if a.json and a.repeat > 1:
        for s in summary:
            print(json.dumps(s), flush=True)
    print(report.table(summary), file=out)
    if len(tspecs) > 1:
        base_name = tspecs[0][1][0].name
        for s in summary:
            if s["server"] != base_name:
                bases = [
                    b
                    for b in summary
                    if b["server"] == base_name
                    and b["clients"] == s["clients"]
                    and b.get("rooms", 0) == s.get("rooms", 0)
                ]
                print(report.ratio_table(s, bases), file=out)
    if a.scenario == "compare":
        for s in summary:
            if s["server"] == specs[0].name:
                bases = [
                    b
                    for b in summary
                    if b["clients"] == s["clients"] and b["server"] != s["server"]
                ]
                print(report.ratio_table(s, bases), file=out)
    notes = []
    if any(r["generator_saturated"] for r in runs):
        notes.append(
            "generator_saturated (gsat): the generator was (part of) the limit: a "
            "worker used ~a whole core, or the machine was full while the server "
            "had less than one; read deliveries/s as a lower bound and latencies "
            "as an upper bound for the server"
        )
    if any(r.get("generator_scan") == "python" for r in runs):
        notes.append(
            "the generator's C scan (gchat_bench/_scan.c) was not built, so it "
            "parsed lines in Python and runs out of CPU several times sooner; "
            "reinstall with a C compiler"
        )
    if any(r.get("lost") for r in runs):
        notes.append("messages were lost (lost > 0)")
    if any(r.get("disconnected") for r in runs):
        notes.append("receivers were disconnected by the server during the run")
    if any(r.get("machine_busy") for r in runs):
        notes.append(
            "some runs stayed over --max-other-load after --retries attempts "
            "(machine_busy): others' load is in their latencies"
        )
    if any("nodes" in r and "redis_cpu_s" not in r for r in runs):
        notes.append(
            "server CPU (us/dlv, srv%) is the nodes' only: redis-server's is "
            "unknown (give --redis-pid with --target)"
        )
    if any(r.get("leaked") for r in runs):
        notes.append(
            "lines reached clients of another room (leaked > 0): %s"
            % next(r.get("leak_samples") for r in runs if r.get("leaked"))
        )
    for n_ in notes:
        print("note: " + n_, file=out)
    if a.plot and len(room_counts) > 1:
        from gchat_bench.plot import plot_rooms

        title = "gchat-bench %s: %s clients in %s rooms, %s, size=%dB duration=%gs%s" % (
            scenario,
            a.clients,
            a.rooms,
            (
                "%g deliveries/s offered" % a.offered_deliveries
                if a.offered_deliveries
                else "rate=%g/s" % a.rate
            ),
            a.size,
            a.duration,
            " (median of %d)" % a.repeat if a.repeat > 1 else "",
        )
        plot_rooms(summary, a.plot, title)
        print("plot written to %s" % a.plot, file=sys.stderr)
    elif a.plot:
        from gchat_bench.plot import plot_sweep

        title = "gchat-bench %s: senders=%d rate=%g/s size=%dB duration=%gs%s" % (
            scenario,
            a.senders if a.senders is not None else DEFAULTS["senders"],
            a.rate,
            a.size,
            a.duration,
            " (median of %d)" % a.repeat if a.repeat > 1 else "",
        )
        plot_sweep(summary, a.plot, title)
        print("plot written to %s" % a.plot, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
