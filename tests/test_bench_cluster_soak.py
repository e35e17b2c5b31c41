"""The cluster chaos soak (bench/gchat_bench/cluster_soak.py): short runs
end to end (two nodes, Redis killed twice, a node killed once; three nodes
over a Redis Cluster of 3 masters and 3 replicas, in 50 rooms, a master
killed, a node killed and 1,000 slots moved), and its checks
(soak_checks.py) fed synthetic logs, to show that they can fail."""

import json
import subprocess
import sys

import pytest

from gchat_bench.cluster_soak import log_warnings, parse_args, plan
from gchat_bench.soak_checks import check_session, first_inversion, owed, verify, warnings


def run_soak(*args, timeout):
    """`python -m gchat_bench.cluster_soak ARGS --json --quiet`: its JSON
    result, which must say PASS (with its failures shown if not)."""
    done = subprocess.run(
        [sys.executable, "-m", "gchat_bench.cluster_soak", *args, "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.stdout.strip(), done.stderr
    res = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, (res.get("failures"), res.get("problems"), res.get("logs"))
    assert res["result"] == "PASS"
    return res


def lines(sender, *seqs):
    return [(sender, q) for q in seqs]


def test_short_soak_loses_nothing_through_redis_and_node_kills():
    res = run_soak(
        "--duration", "20", "--clients", "20", "--nodes", "2", "--seed", "7", timeout=120
    )
    assert (res["lost"], res["duplicated"], res["out_of_order"], res["order_mismatches"]) == (
        0,
        0,
        0,
        0,
    )
    assert res["redis_kills"] == 2 and res["node_kills"] == 1
    assert res["restarts"] == {"redis": 2, "node": 1}
    assert res["drained"] and res["stayers_dropped"] == 0
    assert res["stayers"] == 5 and res["stayer_lines_sent"] >= 5 * 18
    assert res["deliveries_received"] == res["deliveries_expected"] > 1000
    assert res["sessions"] > 30 and res["session_breaks"] == 0  # the churners came and went
    assert res["sessions_cut"] > 0  # some churners were on the node that was killed
    assert set(res["cpu_s"]) == {"node0", "node1", "redis", "bench"}


def test_soak_over_a_redis_cluster_loses_nothing_through_a_failover_a_node_kill_and_a_reshard():
    """Issue 17: 3 nodes over a Redis Cluster of 3 masters with a replica
    each, churning clients in 50 rooms; a master killed (its replica takes
    over), a node killed, 1,000 slots moved.  Every stayer gets every line
    of its room exactly once, in order; and no name goes unanswered."""
    res = run_soak(
        "--redis-cluster",
        "3x1",
        "--nodes",
        "3",
        "--rooms",
        "50",
        "--clients",
        "150",
        "--duration",
        "30",
        "--max-stay",
        "3",
        "--seed",
        "7",
        timeout=150,
    )
    assert (res["redis_cluster"], res["nodes"], res["rooms"]) == (
        {"masters": 3, "replicas": 1},
        3,
        50,
    )
    assert (res["lost"], res["duplicated"], res["out_of_order"], res["order_mismatches"]) == (
        0,
        0,
        0,
        0,
    )
    assert res["unexpected"] == 0  # no line reached another room
    assert (res["master_kills"], res["node_kills"], res["reshards"], res["redis_kills"]) == (
        1,
        1,
        1,
        0,
    )
    assert res["restarts"] == {"master": 1, "node": 1}
    events = {e["event"]: e for e in res["chaos"]}
    assert events["failed over"]["to"] != events["master killed"]["redis_node"]
    assert events["master killed"]["rooms"] > 0  # the master held rooms
    assert events["master restarted"]["role"] == "slave"
    assert events["slots moved"]["slots"] == 1000
    assert res["drained"] and res["stayers_dropped"] == 0
    # 2 stayers in each room, one on each node that is never killed.
    assert res["stayers"] == 100 and res["stayer_lines_sent"] >= 100 * 28
    assert res["deliveries_received"] == res["deliveries_expected"] > 5000
    assert res["sessions"] > 50 and res["session_breaks"] == 0
    assert not any(why.startswith("no answer") for why in res["name_errors"]), res["warnings"]
    assert not any("declared lost while alive" in w for w in res["warnings"]), res["warnings"]
    assert sum(m["slots"] for m in res["redis_masters"]) == 16384
    assert len(res["redis_masters"]) == 3
    assert set(res["cpu_s"]) == {"node0", "node1", "node2", "redis", "bench"}
    assert res["cpu_s"]["redis"] > 0


def test_parse_args_for_a_redis_cluster():
    a = parse_args(["--redis-cluster", "3x1", "--nodes", "3", "--rooms", "50", "--clients", "150"])
    assert a.redis_cluster == (3, 1) and a.node_timeout == 5.0 and a.reshard_slots == 1000
    assert a.stayers == 100  # two per room
    assert parse_args([]).node_timeout == 2.0 and parse_args([]).rooms == 0


@pytest.mark.parametrize(
    "args, why",
    [
        (["--redis-cluster", "3"], "a replica per master"),
        (["--redis-cluster", "2x1"], "at least 3 masters"),
        (["--redis-cluster", "3x1", "--reshard-slots", "0"], "--reshard-slots"),
        (["--rooms", "10", "--clients", "20", "--stayers", "5"], "at least --rooms"),
        (["--redis-cluster", "3x1", "--duration", "10"], "too short"),
    ],
)
def test_parse_args_refuses(args, why, capsys):
    with pytest.raises(SystemExit):
        parse_args(args)
    assert why in capsys.readouterr().err


def test_plan_over_a_redis_cluster_kills_a_master_a_node_and_moves_slots():
    assert plan(30, 1.5, 6, redis_cluster=True) == [
        ("master", 6.0, 7.5),
        ("node", 12.0, 18.0),
        ("reshard", 19.5, 22.5),
    ]
    with pytest.raises(ValueError):
        plan(20, 1.5, 6, redis_cluster=True)  # the node would still be down at the reshard


def test_log_warnings_counts_each_node_s_warnings_blanked(tmp_path):
    (tmp_path / "node0.1.log").write_text(
        "2026-01-01 00:00:01,000 INFO gchat: listening on 127.0.0.1:5000\n"
        "2026-01-01 00:00:02,000 WARNING gchat: this node was declared lost by node "
        "0123456789ab; rejoining #r16\n"
        "2026-01-01 00:00:02,001 WARNING gchat: this node was declared lost by node "
        "ba9876543210; rejoining #r7\n"
    )
    (tmp_path / "node0.2.log").write_text(
        "2026-01-01 00:00:09,000 WARNING gchat: node 0123456789ab lost (no heartbeat for 2s): "
        "its members leave\n"
    )
    (tmp_path / "node1.1.log").write_text("2026-01-01 00:00:01,000 INFO gchat: quiet\n")
    assert log_warnings(str(tmp_path), ["node0", "node1"]) == {
        "node0": {
            "this node was declared lost by node ID; rejoining #ROOM": 2,
            "node ID lost (no heartbeat for Ns): its members leave": 1,
        }
    }


def test_verify_reports_a_duplicate_and_a_gap():
    owed_by = {"a": {0, 1, 2, 3}, "b": {0, 1}}
    received = {
        "r1": lines("a", 0, 1, 2, 3) + lines("b", 0, 1),
        "r2": lines("a", 0, 1, 1, 3) + lines("b", 0, 1),  # a#1 twice, a#2 never
    }
    res = verify(received, owed_by)
    assert (res["lost"], res["duplicated"], res["out_of_order"], res["unexpected"]) == (1, 1, 0, 0)
    assert res["expected"] == 12 and res["received"] == 12
    assert "duplicated: r2 got a#1 again" in res["problems"]
    assert "lost: r2 never got a#2" in res["problems"]
    clean = verify({"r1": received["r1"]}, owed_by)
    assert (clean["lost"], clean["duplicated"]) == (0, 0) and not clean["problems"]


def test_verify_reports_reordering_and_a_different_order_across_receivers():
    owed_by = {"a": {0, 1}, "b": {0, 1}}
    res = verify(
        {
            "r1": [("a", 0), ("b", 0), ("a", 1), ("b", 1)],
            "r2": [
                ("a", 0),
                ("a", 1),
                ("b", 0),
                ("b", 1),
            ],  # each sender in order, another interleaving
            "r3": [("a", 1), ("a", 0), ("b", 0), ("b", 1)],  # a out of order
            "r4": [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("c", 0)],  # c never sent
        },
        owed_by,
    )
    assert res["out_of_order"] == 1 and res["order_mismatches"] == 2 and res["unexpected"] == 1
    assert res["lost"] == 0 and res["duplicated"] == 0
    assert "order: r2 got a#1 before b#0, r1 the other way" in res["problems"]
    assert "out of order: r3 got a#0 after a#1" in res["problems"]


def test_owed_takes_the_lines_that_reached_nobody_as_the_refused_ones():
    # 6 lines, 2 refused, and exactly 2 reached nobody: nothing lost.
    want, refused, odd = owed(6, 2, {0, 1, 3, 5}, settled=True)
    assert want == {0, 1, 3, 5} and refused == {2, 4} and odd == 0
    # 3 reached nobody but only 1 refusal: 2 of them are owed (lost everywhere).
    want, refused, odd = owed(6, 1, {0, 1, 5}, settled=True)
    assert len(want) == 5 and len(refused) == 1 and odd == 0
    # A refusal although every line was delivered: a refused line went out.
    assert owed(3, 1, {0, 1, 2}, settled=True) == ({0, 1, 2}, set(), 1)
    # A sender that left before its last lines came back: those are not owed.
    assert owed(5, 0, {0, 1, 2}, settled=False) == ({0, 1, 2}, set(), 0)
    # ... but a gap below a line that did get through is.
    assert owed(5, 0, {0, 2}, settled=False) == ({0, 1, 2}, set(), 0)


def test_check_session_flags_a_gap_inside_a_run_not_a_missed_start_or_end():
    owed_by = {"a": set(range(10)), "b": set(range(10))}
    ref = {key: i for i, key in enumerate([("a", q) for q in range(10)])}
    ok = check_session(lines("a", 3, 4, 5, 6), owed_by, ref)
    assert ok == {"gaps": 0, "duplicated": 0, "out_of_order": 0, "order": 0}
    bad = check_session(lines("a", 3, 5, 5, 4, 6) + lines("b", 1, 3), owed_by, ref)
    assert bad == {"gaps": 1, "duplicated": 1, "out_of_order": 1, "order": 1}


def test_plan_keeps_the_chaos_events_apart():
    assert plan(120, 3, 3) == [("redis", 24.0, 27.0), ("node", 42.0, 45.0), ("redis", 66.0, 69.0)]
    with pytest.raises(ValueError):
        plan(12, 1, 3)  # the node would still be down when Redis is killed again


def test_owed_lets_the_lines_of_unknown_fate_explain_refusals():
    # The sender left with lines 3 and 4 unconfirmed: 2 refusals may be
    # theirs, so none is unexplained, and neither line is owed.
    assert owed(5, 2, {0, 1, 2}, settled=False) == ({0, 1, 2}, set(), 0)
    # Settled, the same refusals have nothing to explain them.
    assert owed(3, 2, {0, 1, 2}, settled=True) == ({0, 1, 2}, set(), 2)
    # A line delivered past what was sent (a stale seq) is not counted.
    assert owed(2, 0, {0, 1, 5}, settled=True) == ({0, 1}, set(), 0)


def test_verify_names_lost_runs_briefly_and_counts_every_receiver():
    owed_by = {"a": set(range(20))}
    res = verify({"r1": lines("a", *range(20)), "r2": lines("a", 0, 4, 5, 6, 8, 19)}, owed_by)
    assert res["lost"] == 14 and res["expected"] == 40 and res["received"] == 26
    assert "lost: r2 never got a#1-3,7,9-18" in res["problems"]
    many = verify({"r": lines("a", *range(0, 20, 2))}, owed_by)
    assert "lost: r never got a#1,3,5,7,9,11,..." in many["problems"]
    assert verify({}, owed_by)["reference"] == {}


def test_verify_shows_at_most_limit_problems_but_counts_them_all():
    owed_by = {"a": set(range(10))}
    res = verify({"r1": lines("a", *range(10)) * 2}, owed_by, limit=3)
    assert res["duplicated"] == 10 and len(res["problems"]) == 3


def test_first_inversion_skips_lines_the_reference_lacks():
    ref = {("a", 0): 0, ("b", 0): 1, ("a", 1): 2}
    assert first_inversion([("a", 0), ("x", 9), ("b", 0), ("a", 1)], ref) is None
    assert first_inversion([("b", 0), ("a", 0), ("a", 1)], ref) == (("b", 0), ("a", 0))
    assert first_inversion([], ref) is None


def test_check_session_accepts_a_session_that_saw_one_line_or_nothing():
    owed_by = {"a": set(range(10))}
    ref = {("a", q): q for q in range(10)}
    clean = {"gaps": 0, "duplicated": 0, "out_of_order": 0, "order": 0}
    assert check_session([], owed_by, ref) == clean
    assert check_session(lines("a", 7), owed_by, ref) == clean
    # A refused line (not owed) missing inside the run is no gap.
    assert check_session(lines("a", 2, 4), {"a": {2, 4}}, ref) == clean


def test_warnings_name_bus_counters_left_above_zero():
    stats = {
        "node0": {"bus_held_lines": 0, "bus_pending": 3, "bus_read": 9},
        "node1": {"bus_held_lines": 2},
        "node2": {},
    }
    assert warnings(stats) == [
        "node0: bus_pending=3 after the drain (expected 0)",
        "node1: bus_held_lines=2 after the drain (expected 0)",
    ]
