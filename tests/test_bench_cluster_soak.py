"""The cluster chaos soak (bench/gchat_bench/cluster_soak.py): one short run
end to end (two nodes, Redis killed twice, a node killed once), and its
checks fed synthetic logs, to show that they can fail."""
import json
import subprocess
import sys

import pytest

from gchat_bench.cluster_soak import check_session, owed, plan, verify


def lines(sender, *seqs):
    return [(sender, q) for q in seqs]


def test_short_soak_loses_nothing_through_redis_and_node_kills():
    done = subprocess.run([sys.executable, "-m", "gchat_bench.cluster_soak", "--duration", "20",
                           "--clients", "20", "--nodes", "2", "--seed", "7", "--json", "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip(), done.stderr
    res = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, (res.get("failures"), res.get("problems"), res.get("logs"))
    assert res["result"] == "PASS"
    assert (res["lost"], res["duplicated"], res["out_of_order"], res["order_mismatches"]) == \
        (0, 0, 0, 0)
    assert res["redis_kills"] == 2 and res["node_kills"] == 1
    assert res["restarts"] == {"redis": 2, "node": 1}
    assert res["drained"] and res["stayers_dropped"] == 0
    assert res["stayers"] == 5 and res["stayer_lines_sent"] >= 5 * 18
    assert res["deliveries_received"] == res["deliveries_expected"] > 1000
    assert res["sessions"] > 30 and res["session_breaks"] == 0  # the churners came and went
    assert res["sessions_cut"] > 0  # some churners were on the node that was killed
    assert set(res["cpu_s"]) == {"node0", "node1", "redis", "bench"}


def test_verify_reports_a_duplicate_and_a_gap():
    owed_by = {"a": {0, 1, 2, 3}, "b": {0, 1}}
    received = {
        "r1": lines("a", 0, 1, 2, 3) + lines("b", 0, 1),
        "r2": lines("a", 0, 1, 1, 3) + lines("b", 0, 1),   # a#1 twice, a#2 never
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
    res = verify({
        "r1": [("a", 0), ("b", 0), ("a", 1), ("b", 1)],
        "r2": [("a", 0), ("a", 1), ("b", 0), ("b", 1)],   # each sender in order, another interleaving
        "r3": [("a", 1), ("a", 0), ("b", 0), ("b", 1)],   # a out of order
        "r4": [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("c", 0)],  # c never sent
    }, owed_by)
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
    assert plan(120, 3, 3) == [("redis", 24.0, 27.0), ("node", 42.0, 45.0),
                               ("redis", 66.0, 69.0)]
    with pytest.raises(ValueError):
        plan(12, 1, 3)   # the node would still be down when Redis is killed again
