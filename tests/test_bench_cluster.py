"""gchat-bench against a cluster: --target lists, the spread of clients over
nodes (each room over every node, or on one node with --local-rooms),
per-room accounting across nodes, the CPU of each process, and the
spawned forms (--spawn-cluster, --spawn-workers, --redis-cluster) end to
end.

The pure tests feed workers bytes (no server, no Redis).  The end-to-end
ones run small benches against real gchat processes and a real
redis-server on free ports, and assert exact accounting, never timings.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gchat_bench import report
from gchat_bench.cli import cluster_name, placement_note, run_spawned
from gchat_bench.cli import main as bench_main
from gchat_bench.cluster import (
    expected_deliveries,
    node_of,
    parse_pids,
    parse_targets,
    part_cpu,
    room_members,
    spread,
)
from gchat_bench.runner import Options, run_scenario
from gchat_bench.servers import (
    BenchError,
    Cluster,
    ClusterRedis,
    Server,
    gchat_command,
    master_commands,
    parse_redis_cluster,
    spawn_argv,
)
from gchat_bench.stats import make_payload, run_prefix
from gchat_bench.worker import Worker

RUN = 123456789
RUN_TIMEOUT = 120
NODES = [("127.0.0.1", 7001), ("127.0.0.1", 7002)]


# --------------------------------------------------------------- --target


def test_parse_targets_one_or_several():
    assert parse_targets("127.0.0.1:7001") == [("127.0.0.1", 7001)]
    assert parse_targets("127.0.0.1:7001,127.0.0.2:7002, [::1]:7003") == [
        ("127.0.0.1", 7001),
        ("127.0.0.2", 7002),
        ("::1", 7003),
    ]


@pytest.mark.parametrize(
    "bad, why",
    [
        ("127.0.0.1", "HOST:PORT"),
        ("127.0.0.1:7001,", "HOST:PORT"),
        ("127.0.0.1:x", "HOST:PORT"),
        ("127.0.0.1:0", "HOST:PORT"),
        ("127.0.0.1:7001,10.0.0.1:7002", "loopback"),
        ("127.0.0.1:7001,127.0.0.1:7001", "twice"),
    ],
)
def test_parse_targets_refuses(bad, why):
    with pytest.raises(BenchError, match=why):
        parse_targets(bad)


def test_parse_pids_wants_one_per_target():
    assert parse_pids("10,11", 2) == [10, 11]
    with pytest.raises(BenchError, match="2 pids for 3 targets"):
        parse_pids("10,11", 3)
    with pytest.raises(BenchError, match="PID"):
        parse_pids("10,x", 2)


# ----------------------------------------------------------------- spread


def test_without_rooms_clients_are_dealt_round_robin():
    assert [node_of(i, 2) for i in range(6)] == [0, 1, 0, 1, 0, 1]
    assert spread(20, 2) == [10, 10]
    assert spread(10, 3) == [4, 3, 3]
    assert spread(7, 1) == [7] and node_of(5, 1, rooms=3) == 0


@pytest.mark.parametrize(
    "clients, rooms, nodes", [(24, 4, 2), (40, 10, 4), (10000, 1000, 4), (60, 6, 3), (21, 3, 7)]
)
def test_with_rooms_every_room_has_members_on_every_node(clients, rooms, nodes):
    """Each room's members are dealt over the nodes, so a room's lines must
    cross between nodes; plain i % nodes would put every member of a room
    on one node whenever rooms and nodes share a factor."""
    on = {}
    for i in range(clients):
        on.setdefault(i % rooms, []).append(node_of(i, nodes, rooms))
    for room, where in on.items():
        assert sorted(set(where)) == list(range(nodes)), (room, where)
        counts = [where.count(n) for n in range(nodes)]
        assert max(counts) - min(counts) <= 1
    assert max(spread(clients, nodes, rooms)) - min(spread(clients, nodes, rooms)) <= rooms
    if rooms % nodes == 0:
        naive = {i % nodes for i in range(clients) if i % rooms == 0}
        assert len(naive) == 1  # what node_of avoids


@pytest.mark.parametrize(
    "clients, rooms, nodes",
    [(24, 4, 2), (40, 10, 4), (10000, 1000, 4), (60, 6, 3), (21, 3, 7), (30, 3, 2), (35, 7, 3)],
)
def test_local_rooms_put_each_room_on_the_node_of_its_number(clients, rooms, nodes):
    """--local-rooms: every member of room r on node r % N, whether or not
    K and N share a factor; each node hosts the rooms of its residue."""
    hosts = [set() for _ in range(nodes)]
    for i in range(clients):
        n = node_of(i, nodes, rooms, local=True)
        assert n == (i % rooms) % nodes
        hosts[n].add(i % rooms)
    assert hosts == [set(range(n, rooms, nodes)) for n in range(nodes)]
    sizes = [len(range(r, clients, rooms)) for r in range(rooms)]
    assert spread(clients, nodes, rooms, local=True) == [sum(sizes[n::nodes]) for n in range(nodes)]


def test_spread_deals_a_room_over_every_node_local_keeps_it_on_one():
    """The same rooms and nodes, both placements: spread puts member j of
    every room on node j % N, local puts all of room r on node r % N."""
    for rooms, nodes in ((4, 2), (3, 2), (6, 4)):
        for r in range(rooms):
            members = range(r, rooms * nodes * 2, rooms)  # 2N members
            assert [node_of(i, nodes, rooms) for i in members] == [
                j % nodes for j in range(2 * nodes)
            ]
            assert {node_of(i, nodes, rooms, local=True) for i in members} == {r % nodes}


def test_local_placement_needs_rooms():
    with pytest.raises(ValueError, match="needs rooms"):
        node_of(3, 2, 0, local=True)
    assert node_of(5, 1, rooms=3, local=True) == 0
    assert spread(7, 1, 3, local=True) == [7]
    assert placement_note(4, 2, True) == ", each room on one node"
    assert placement_note(4, 2, False) == ", each room over every node"
    assert placement_note(0, 2, False) == placement_note(4, 0, True) == ""


def worker(clients, nodes=NODES, rooms=0, senders=8, local_rooms=False):
    cfg = {
        "host": nodes[0][0],
        "port": nodes[0][1],
        "mode": "name",
        "size": 64,
        "senders_total": senders,
        "sender_of": {},
        "name_prefix": "t_",
        "clients": clients,
        "slow": [],
        "rooms": rooms,
        "nodes": nodes,
        "local_rooms": local_rooms,
    }
    return Worker(cfg)


def test_a_worker_connects_each_client_to_its_node():
    w = worker(list(range(6)))
    assert [w.sockets.addr_of(c) for c in w.clients] == [NODES[0], NODES[1]] * 3
    w = worker(list(range(8)), rooms=2)
    assert [w.sockets.addr_of(c)[1] for c in w.clients] == [7001, 7001, 7002, 7002] * 2
    # --local-rooms: rooms 0 and 2 on node 0, rooms 1 and 3 on node 1.
    w = worker(list(range(8)), rooms=4, local_rooms=True)
    assert [w.sockets.addr_of(c)[1] for c in w.clients] == [7001, 7002] * 4
    w = worker(list(range(9)), rooms=3, local_rooms=True)
    assert [w.sockets.addr_of(c)[1] for c in w.clients] == [7001, 7002, 7001] * 3


def test_a_single_target_is_what_it_was():
    """No "nodes" in the config (a single --target): every client goes to
    host:port, as before clusters."""
    cfg = {
        "host": "127.0.0.1",
        "port": 9,
        "mode": "name",
        "size": 64,
        "senders_total": 1,
        "sender_of": {},
        "name_prefix": "t_",
        "clients": [0, 1, 2],
        "slow": [],
    }
    w = Worker(cfg)
    assert {w.sockets.addr_of(c) for c in w.clients} == {("127.0.0.1", 9)}


# -------------------------------------------------------- accounting


def test_expected_deliveries_do_not_depend_on_nodes():
    # Without rooms: every line to every reader.
    assert expected_deliveries({"0": 5, "1": 3}, receivers=20) == 160
    # Rooms of 3 and 2 members (wherever they are): sender s is in room s % 2.
    members = room_members([{"0": 2, "1": 1}, {"0": 1, "1": 1}])
    assert members == {0: 3, 1: 2}
    assert (
        expected_deliveries({"0": 5, "1": 3, "2": 1}, 5, rooms=2, members=members)
        == 5 * 3 + 3 * 2 + 1 * 3
    )


def line(sender, seq=0):
    return b"bob: " + make_payload(RUN, sender, seq, 0, 64)


def drain(w, sent_by):
    return w.cmd_drain(
        {"total_sent": sum(sent_by.values()), "sent_by": sent_by, "quiet": 0.05, "timeout": 1.0}
    )


def two_node_room_run(cross: bool):
    """8 clients in 2 rooms on 2 nodes, held by 2 generator workers (0, 2, 4,
    6 and 1, 3, 5, 7); each client sends one line.  A cluster delivers each
    line to every member of the sender's room; with cross=False only to
    those on the sender's node (what separate servers would do).  Returns
    (expected, unique, lost) as measure_phase computes them."""
    ws = [worker([0, 2, 4, 6], rooms=2), worker([1, 3, 5, 7], rooms=2)]
    clients = {c.idx: (w, c) for w in ws for c in w.clients}
    for w in ws:
        w.receiver.run_prefix = run_prefix(RUN)
        for c in w.clients:
            w.receiver.on_ready(c, 0)
    for s in range(8):
        for i, (w, c) in clients.items():
            same_node = node_of(i, 2, 2) == node_of(s, 2, 2)
            if i % 2 == s % 2 and (cross or same_node):
                w.receiver.on_data(c, line(s))
    sent_by = {str(s): 1 for s in range(8)}
    dr = [drain(w, sent_by) for w in ws]
    expected = expected_deliveries(
        sent_by,
        sum(r["receivers"] for r in dr),
        2,
        room_members([r["receivers_by_room"] for r in dr]),
    )
    unique = sum(r["unique"] for r in dr)
    assert all(r["leaked"] == 0 for r in dr)
    return expected, unique, expected - unique, dr


def test_a_line_is_owed_to_its_room_on_every_node():
    expected, unique, lost, dr = two_node_room_run(cross=True)
    # 8 senders, each line to the 4 members of its room (2 on each node).
    assert expected == 8 * 4 == unique and lost == 0
    assert all(r["complete"] for r in dr)


def test_lines_that_stay_on_their_node_are_lost():
    expected, unique, lost, dr = two_node_room_run(cross=False)
    assert expected == 32 and unique == 16 and lost == 16
    assert not any(r["complete"] for r in dr)
    samples = [s for r in dr for s in r["loss_samples"]]
    assert samples and all(
        node_of(s["client"], 2, 2) != node_of(s["sender"], 2, 2) for s in samples
    )


# ------------------------------------------------------------------ CPU


def test_part_cpu_per_node_and_redis():
    before = {"node0": {10: 1.0, 11: 2.0}, "node1": {20: 5.0}, "redis": {30: 0.5}}
    after = {
        "node0": {10: 1.5, 11: 2.5, 12: 0.25},  # 12: a restarted worker
        "node1": {20: 6.0},
        "redis": {30: 0.75},
    }
    out = part_cpu(before, after, wall=2.0)
    assert out["node0_cpu_s"] == pytest.approx(1.25)
    assert out["node1_cpu_s"] == pytest.approx(1.0)
    assert out["redis_cpu_s"] == pytest.approx(0.25)
    assert out["node1_cpu_pct"] == pytest.approx(50.0)
    assert out["nodes_cpu_s"] == pytest.approx(2.25)
    assert out["server_cpu_s"] == pytest.approx(2.5)
    assert out["server_cpu_max_process_pct"] == pytest.approx(50.0)


def test_part_cpu_unknown_part_makes_no_partial_total():
    out = part_cpu({"node0": {1: 0.0}, "redis": {}}, {"node0": {1: 1.0}, "redis": {}}, 1.0)
    assert out["server_cpu_s"] is None and out["redis_cpu_s"] is None
    assert out["nodes_cpu_s"] == 1.0
    out = part_cpu({"node0": {}, "node1": {2: 0.0}}, {"node0": {}, "node1": {2: 1.0}}, 1.0)
    assert out["nodes_cpu_s"] is None


def test_table_shows_each_node_and_redis():
    r = {
        "scenario": "fanout",
        "server": "gchat-2n",
        "clients": 20,
        "nodes": 2,
        "server_cpu_pct": 30.0,
        "node0_cpu_pct": 12.0,
        "node1_cpu_pct": 14.0,
        "redis_cpu_pct": 4.0,
        "server_cpu_us_per_delivery": 1.5,
    }
    head, _, row = report.table([r]).splitlines()
    assert head.split()[head.split().index("srv%") + 1 :][:3] == ["n0%", "n1%", "redis%"]
    assert row.split()[row.split().index("30") + 1 :][:3] == ["12", "14", "4"]
    single = dict(r, server="gchat")
    for k in ("nodes", "node0_cpu_pct", "node1_cpu_pct", "redis_cpu_pct"):
        del single[k]
    assert "redis%" not in report.table([single])


def test_a_server_tree_counts_and_stops_its_children():
    """tree=True (a --workers supervisor): CPU and RSS over every
    descendant, and stop() kills a descendant its parent left behind."""
    p = subprocess.Popen(
        ["sh", "-c", "sleep 60 & sleep 60 & echo ready; wait"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline() == "ready\n"
        srv = Server("tree", "127.0.0.1", 0, pid=p.pid, proc=p, tree=True)
        kids = srv.children()
        assert len(kids) == 2 and set(srv.cpu_by_pid()) == {p.pid} | {k.pid for k in kids}
        assert srv.rss_bytes() > psutil.Process(p.pid).memory_info().rss
        srv.stop()  # sh exits on SIGTERM, its sleeps are orphaned
        for k in kids:
            k.wait(10)  # reaped by init, once killed: raises if still running
            assert not k.is_running()
    finally:
        p.kill()
        p.wait()


# -------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "args, why",
    [
        (["--target", "127.0.0.1:1", "--spawn-cluster", "2"], "not with --target"),
        (["--spawn-cluster", "2", "--spawn=--redis redis://x"], "--redis"),
        (["--spawn-workers", "2", "--spawn=--workers 3"], "--workers"),
        (["--spawn-cluster", "-1"], "negative"),
        (["--target", "127.0.0.1:1,127.0.0.1:2", "--server-pid", "1"], "1 pids for 2"),
        (["--redis-pid", "1"], "--redis-pid goes with --target"),
        (
            ["--spawn-cluster", "2", "--redis-server", "/nonexistent/redis-server"],
            "no redis-server at /nonexistent",
        ),
        (["--spawn-cluster", "2", "--local-rooms"], "it needs --rooms"),
        (["--rooms", "2", "--local-rooms"], "at least 2 nodes"),
        (["--target", "127.0.0.1:1", "--rooms", "2", "--local-rooms"], "at least 2 nodes"),
        (["--spawn-cluster", "1", "--rooms", "2", "--local-rooms"], "at least 2 nodes"),
        (["--spawn-workers", "2", "--rooms", "2", "--local-rooms"], "at least 2 nodes"),
        (["--redis-cluster", "3"], "needs --spawn-cluster"),
        (["--spawn-workers", "2", "--redis-cluster", "3"], "needs --spawn-cluster"),
        (["--target", "127.0.0.1:1", "--redis-cluster", "3"], "needs --spawn-cluster"),
        (["--spawn-cluster", "2", "--redis-cluster", "2"], "at least 3 masters"),
        (["--spawn-cluster", "2", "--redis-cluster", "3y1"], "M or MxR"),
        (["--spawn-cluster", "2", "--redis-cluster", "x1"], "M or MxR"),
    ],
)
def test_cli_refuses(args, why, capsys):
    assert bench_main(["fanout", "--clients", "2", *args]) == 2
    assert why in capsys.readouterr().err


def test_redis_cluster_option_and_name():
    assert parse_redis_cluster("3") == (3, 0)
    assert parse_redis_cluster("4x1") == parse_redis_cluster("4X1") == (4, 1)
    assert parse_redis_cluster(5) == (5, 0) and parse_redis_cluster((3, 2)) == (3, 2)
    with pytest.raises(BenchError, match="at least 3 masters"):
        parse_redis_cluster((2, 1))
    assert cluster_name("gchat", 2, 0, (3, 0)) == "gchat-2n-rc3"
    assert cluster_name("gchat", 3, 2, (3, 1)) == "gchat-3n-w2-rc3x1"
    assert cluster_name("gchat", 2, 0) == "gchat-2n"
    with pytest.raises(BenchError, match="needs --spawn-cluster"):
        run_spawned(Options(scenario="idle", clients=2), redis_cluster="3")


def test_master_commands_are_deltas_without_the_bench_s_info():
    before = {"node0": (7000, 5461, {"get": 5, "info": 2}), "node1": (7001, 5462, {"set": 1})}
    after = {
        "node0": (7000, 5461, {"get": 15, "info": 4, "xadd": 10}),
        "node1": (7001, 5462, {"set": 11}),
        "node2": (7002, 5461, {"get": 40}),  # no snapshot before: from 0
    }
    out = master_commands(before, after)
    assert out["redis_master_commands"] == [20, 10, 40]
    assert out["redis_masters"][0] == {
        "node": "node0",
        "port": 7000,
        "slots": 5461,
        "commands": 20,
        "commandstats": {"get": 10, "xadd": 10},
    }
    mean = 70 / 3
    assert out["redis_master_balance"] == [pytest.approx(10 / mean), pytest.approx(40 / mean)]
    assert master_commands({}, {})["redis_master_balance"] == [None, None]


def test_local_rooms_refused_without_rooms_or_with_one_server():
    """The Python API says the same as the CLI, before starting anything."""
    with pytest.raises(BenchError, match="needs --rooms"):
        Options(scenario="idle", clients=4, local_rooms=True).validate()
    o = Options(scenario="idle", clients=4, rooms=2, local_rooms=True, progress=False)
    with pytest.raises(BenchError, match="with one node"):
        run_scenario(o, Server("solo", "127.0.0.1", 9))
    with pytest.raises(BenchError, match="with one node"):
        run_scenario(o, Cluster("w2", [Server("node0", "127.0.0.1", 9)]))


# ------------------------------------------------------------ end to end


def console_script():
    exe = Path(sys.executable).parent / "gchat-bench"
    assert exe.exists(), "gchat-bench is not installed: pip install -e '.[bench]'"
    return str(exe)


def gone(pids, timeout=15.0):
    """Wait (bounded) until none of pids runs; return the ones still there."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [
            p
            for p in left
            if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        if left:
            time.sleep(0.05)  # polling /proc, which cannot notify; bounded
    return left


def assert_exact(r, clients):
    assert r["connect_errors"] == 0, r.get("connect_error_samples")
    assert r["connected"] == clients and r["disconnected"] == 0
    assert r["expected"] > 0 and r["received"] == r["expected"], r.get("loss_samples")
    assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0)
    assert r["drain_complete"] is True
    assert "server_exit_code" not in r


def test_cli_spawn_cluster_of_two_nodes():
    """gchat-bench --spawn-cluster 2: redis-server and 2 nodes; half the
    clients on each; sender 0 is on node 0 and sender 1 on node 1, so
    nothing is delivered in full unless lines cross between the nodes."""
    p = subprocess.run(
        [
            console_script(),
            "fanout",
            "--spawn-cluster",
            "2",
            "--clients",
            "20",
            "--senders",
            "2",
            "--rate",
            "20",
            "--duration",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    (r,) = [json.loads(x) for x in p.stdout.splitlines()]
    assert (r["server"], r["nodes"], r["server_workers"]) == ("gchat-2n", 2, 0)
    assert r["node_clients"] == r["node_connected"] == [10, 10]
    assert len(set(r["node_ports"])) == 2
    assert_exact(r, 20)
    assert r["sent"] == 40 and r["expected"] == 40 * 20
    for part in ("node0", "node1", "redis"):
        assert r[part + "_cpu_s"] > 0 and r[part + "_cpu_pct"] > 0, part
    assert r["server_cpu_s"] == pytest.approx(
        r["node0_cpu_s"] + r["node1_cpu_s"] + r["redis_cpu_s"]
    )
    assert r["server_cpu_us_per_delivery"] == pytest.approx(r["server_cpu_s"] * 1e6 / r["received"])
    assert r["redis_cpu_us_per_delivery"] > 0 and r["redis_rss_mb"] > 0
    assert r["server_processes"] == {"node0": 1, "node1": 1, "redis": 1}
    head = next(x for x in p.stderr.splitlines() if x.startswith("server "))
    assert {"n0%", "n1%", "redis%", "us/dlv"} <= set(head.split())
    # Everything it spawned is gone.
    assert gone([pid for pids in r["server_pids"].values() for pid in pids]) == []


def test_cli_spawn_cluster_over_a_redis_cluster():
    """--spawn-cluster 2 --redis-cluster 3: the nodes on a Redis Cluster of
    3 masters; exact accounting in rooms whose lines cross between nodes,
    redis% summed over the 3 redis-servers, each master's commands."""
    p = subprocess.run(
        [
            console_script(),
            "fanout",
            "--spawn-cluster",
            "2",
            "--redis-cluster",
            "3",
            "--clients",
            "24",
            "--rooms",
            "6",
            "--rate",
            "48",
            "--duration",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    (r,) = [json.loads(x) for x in p.stdout.splitlines()]
    assert (r["server"], r["nodes"], r["rooms"]) == ("gchat-2n-rc3", 2, 6)
    assert r["redis_cluster"] == {"masters": 3, "replicas": 0}
    assert_exact(r, 24)
    assert r["leaked"] == 0 and r["expected"] == r["sent"] * 4
    # redis%: every redis-server of the Redis Cluster, summed.
    assert r["server_processes"] == {"node0": 1, "node1": 1, "redis": 3}
    assert len(r["server_pids"]["redis"]) == 3
    assert r["redis_cpu_s"] > 0 and r["redis_cpu_pct"] > 0 and r["redis_rss_mb"] > 0
    assert r["server_cpu_s"] == pytest.approx(
        r["node0_cpu_s"] + r["node1_cpu_s"] + r["redis_cpu_s"]
    )
    head = next(x for x in p.stderr.splitlines() if x.startswith("server "))
    assert {"n0%", "n1%", "redis%", "us/dlv"} <= set(head.split())
    # Each master's commands over the run: every one served some.
    masters = r["redis_masters"]
    assert len(masters) == 3 and len({m["port"] for m in masters}) == 3
    assert sum(m["slots"] for m in masters) == 16384
    assert r["redis_master_commands"] == [m["commands"] for m in masters]
    for m in masters:
        assert m["commands"] > 0 and m["commands"] == sum(m["commandstats"].values()), m
        assert "info" not in m["commandstats"]
    lo, hi = r["redis_master_balance"]
    assert 0 < lo <= 1 <= hi
    assert gone([pid for pids in r["server_pids"].values() for pid in pids]) == []


def test_cli_target_list_with_pids():
    """--target H:P1,H:P2 --server-pid A,B --redis-pid R: a cluster that is
    already running, with the CPU of each node and of redis-server."""
    cluster = Cluster.spawn("c", spawn_argv(gchat_command(), "", False), 2)
    try:
        targets = ",".join("%s:%d" % a for a in cluster.addresses())
        pids = ",".join(str(n.pid) for n in cluster.nodes)
        p = subprocess.run(
            [
                console_script(),
                "fanout",
                "--target",
                targets,
                "--server-pid",
                pids,
                "--redis-pid",
                str(cluster.redis.pid),
                "--clients",
                "20",
                "--senders",
                "2",
                "--rate",
                "20",
                "--duration",
                "1",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        (r,) = [json.loads(x) for x in p.stdout.splitlines()]
        cluster.check_alive()  # the bench leaves servers it did not start alone
    finally:
        cluster.stop()
    assert (r["server"], r["nodes"], r["node_connected"]) == ("target-2n", 2, [10, 10])
    assert r["node_ports"] == [a[1] for a in cluster.addresses()]
    assert_exact(r, 20)
    assert r["node0_cpu_s"] > 0 and r["node1_cpu_s"] > 0 and r["redis_cpu_s"] > 0
    assert r["server_cpu_s"] == pytest.approx(
        r["node0_cpu_s"] + r["node1_cpu_s"] + r["redis_cpu_s"]
    )
    assert cluster.exit_code == 0


def test_rooms_over_a_cluster():
    """--rooms over 3 nodes: each room has members on every node; nothing
    lost, nothing leaked."""
    o = Options(
        scenario="fanout",
        clients=24,
        senders=24,
        rate=48.0,
        duration=1.0,
        rooms=4,
        workers=2,
        progress=False,
        drain_timeout=20.0,
        settle_timeout=30.0,
        connect_timeout=20.0,
    )
    r = run_spawned(o, nodes=3)
    assert r["server"] == "gchat-3n" and r["placement"] == "spread"
    assert r["node_connected"] == [8, 8, 8]
    assert r["node_rooms"] == [4, 4, 4]  # every room on every node
    assert_exact(r, 24)
    assert r["leaked"] == 0
    # 48 lines, each to the 6 members of its room.
    assert r["expected"] == r["sent"] * 6


def test_cli_local_rooms_on_two_nodes():
    """--spawn-cluster 2 --rooms 4 --local-rooms: room r's members all on
    node r % 2.  21 clients make rooms of 6, 5, 5 and 5, so node 0 (rooms 0
    and 2) has 11 of them and node 1 (rooms 1 and 3) has 10, where spread
    would give each room members on both nodes (12 and 9)."""
    p = subprocess.run(
        [
            console_script(),
            "fanout",
            "--spawn-cluster",
            "2",
            "--clients",
            "21",
            "--rooms",
            "4",
            "--local-rooms",
            "--rate",
            "42",
            "--duration",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    (r,) = [json.loads(x) for x in p.stdout.splitlines()]
    assert (r["server"], r["nodes"], r["rooms"], r["placement"]) == ("gchat-2n", 2, 4, "local")
    sizes = [len(range(room, 21, 4)) for room in range(4)]
    on_node = [sum(sizes[room] for room in range(4) if room % 2 == n) for n in range(2)]
    assert on_node == [11, 10] != spread(21, 2, 4)
    assert r["node_clients"] == r["node_connected"] == on_node
    assert r["node_rooms"] == [2, 2]  # each room on one node only
    assert_exact(r, 21)
    # Each line to the 5 or 6 members of its room, all on its sender's node.
    assert r["leaked"] == 0 and 5 * r["sent"] <= r["expected"] <= 6 * r["sent"]
    assert "21 clients in 4 rooms, each room on one node" in p.stderr
    assert gone([pid for pids in r["server_pids"].values() for pid in pids]) == []


def run_on_separate_pair(**options):
    """A 1 s fanout of 20 clients over two gchat processes that share
    nothing (no Redis), loaded as one cluster: the result and the cluster."""
    argv = spawn_argv(gchat_command(), "", False)
    cluster = Cluster("pair", [Server.spawn("solo%d" % i, argv) for i in range(2)])
    try:
        o = Options(
            scenario="fanout",
            clients=20,
            duration=1.0,
            workers=2,
            progress=False,
            connect_timeout=20.0,
            **options,
        )
        return run_scenario(o, cluster), cluster
    finally:
        cluster.stop()


def test_local_rooms_need_no_line_to_cross():
    """Two gchat processes that share nothing, loaded with --local-rooms:
    every room is whole on one of them, so nothing is lost.  (Spread, the
    same pair loses half: test_separate_servers_are_not_a_cluster.)"""
    r, cluster = run_on_separate_pair(
        senders=20,
        rate=40.0,
        rooms=4,
        local_rooms=True,
        drain_timeout=20.0,
        settle_timeout=30.0,
    )
    assert r["placement"] == "local" and r["node_connected"] == [10, 10]
    assert r["node_rooms"] == [2, 2]
    assert_exact(r, 20)
    assert r["leaked"] == 0 and r["expected"] == r["sent"] * 5
    assert cluster.exit_code == 0


def test_separate_servers_are_not_a_cluster():
    """Two gchat processes that share nothing, loaded as a cluster: the
    accounting must count what did not cross as lost (here exactly half),
    not pass it as delivered.  No Redis needed."""
    r, cluster = run_on_separate_pair(
        senders=2, rate=20.0, drain_timeout=10.0, drain_quiet=1.0, settle_timeout=2.0
    )
    assert r["node_connected"] == [10, 10]
    assert r["settle_missing"] == 10  # node 0's marker never reached node 1
    assert r["sent"] == 20 and r["expected"] == 400
    assert r["received"] == 200 and r["lost"] == 200
    assert r["drain_complete"] is False and r["loss_samples"]
    assert "redis_cpu_s" not in r  # no redis-server in this "cluster"
    assert r["node0_cpu_s"] > 0 and r["node1_cpu_s"] > 0
    assert cluster.exit_code == 0


def test_spawn_workers_sums_the_supervisors_processes():
    """--spawn-workers 2: gchat --workers 2 --redis URL, one port; CPU and
    process count over the supervisor and its workers."""
    o = Options(
        scenario="fanout",
        clients=20,
        senders=2,
        rate=20.0,
        duration=1.0,
        workers=2,
        progress=False,
        drain_timeout=20.0,
        settle_timeout=30.0,
        connect_timeout=20.0,
    )
    r = run_spawned(o, server_workers=2)
    assert (r["server"], r["nodes"], r["server_workers"]) == ("gchat-w2", 1, 2)
    assert_exact(r, 20)
    assert r["server_processes"]["node0"] >= 3  # the supervisor and 2 workers
    assert r["node0_cpu_s"] > 0 and r["redis_cpu_s"] > 0
    assert r["server_rss_per_client_kb"] is not None
    assert gone([pid for pids in r["server_pids"].values() for pid in pids]) == []


def test_a_killed_bench_takes_its_cluster_with_it():
    """SIGKILL the bench mid-run: redis-server and the nodes die with it."""
    p = subprocess.Popen(
        [
            console_script(),
            "idle",
            "--spawn-cluster",
            "2",
            "--clients",
            "4",
            "--duration",
            "60",
            "--json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for text in p.stderr:
            if "idle against gchat-2n" in text:
                break
        bench = psutil.Process(p.pid)
        kids = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            kids = [
                k
                for k in bench.children()
                if "redis-server" in " ".join(k.cmdline()) or "--redis" in k.cmdline()
            ]
            if len(kids) == 3:
                break
            time.sleep(0.05)  # polling /proc, which cannot notify; bounded
        assert len(kids) == 3, [k.cmdline() for k in kids]
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert gone([k.pid for k in kids]) == []


def test_redis_server_of_its_own():
    """The spawned redis-server: a free loopback port, no persistence, gone
    at stop."""
    import redis as redis_py

    redis = ClusterRedis.spawn_redis()
    try:
        assert redis.url == "redis://127.0.0.1:%d/0" % redis.port
        client = redis_py.Redis.from_url(redis.url)
        assert client.ping() is True
        conf = {
            **client.config_get("save"),
            **client.config_get("appendonly"),
            **client.config_get("bind"),
        }
        assert conf == {"save": "", "appendonly": "no", "bind": "127.0.0.1"}
        client.close()
    finally:
        redis.stop()
    assert redis.exit_code == 0 and gone([redis.pid]) == []
