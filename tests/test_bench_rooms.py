"""gchat-bench --rooms: per-room accounting, leaks, the /join handshake,
and the history-cost tool.

The unit tests feed a worker bytes (no server); the end-to-end ones run
small scenarios against a spawned gchat, as test_bench_scenarios.py does,
and assert exact accounting, never timings.
"""

import json
import socket
import subprocess
import sys
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gchat_bench import stats
from gchat_bench.cli import run_spawned
from gchat_bench.runner import Options, base_result
from gchat_bench.servers import Server
from gchat_bench.stats import (
    LAT_BUCKETS,
    SeqTracker,
    make_payload,
    room_sync_payload,
    run_prefix,
    scan_rooms_py,
)
from gchat_bench.worker import Worker
from gchat_bench.worker_receive import loss_samples
from gchat_bench.worker_sockets import PROMPT, READY, WELCOME

RUN = 987654321
RUN_TIMEOUT = 120


def rooms_receiver(rooms=4, senders=8, idx=5):
    """The receiving side of a worker of one client (idx) in `rooms` rooms,
    fed bytes by the tests instead of its sockets."""
    cfg = {
        "host": "127.0.0.1",
        "port": 9,
        "mode": "name",
        "size": 64,
        "senders_total": senders,
        "sender_of": {},
        "name_prefix": "t_",
        "clients": [idx],
        "slow": [],
        "rooms": rooms,
    }
    return Worker(cfg).receiver


def line_from(sender, seq, run=RUN, name=b"bob"):
    return name + b": " + make_payload(run, sender, seq, 0, 64)


# ------------------------------------------------------------------ leaks


def test_a_line_from_a_sender_of_another_room_counts_as_leaked():
    """Client 5 of 4 rooms is in room 1: senders 1 and 5 are its room's;
    a line from sender 2 (room 2) and a sync marker of room 3 are leaks,
    counted as such and nowhere else."""
    rx = rooms_receiver()
    c = rx.clients[0]
    assert c.room == 1
    rx.on_ready(c, 0)
    rx.run_prefix = run_prefix(RUN)
    rx.on_data(
        c, line_from(1, 0) + line_from(2, 0) + line_from(5, 0) + b"x: " + room_sync_payload(3, 3)
    )
    assert rx.leaked == 2
    assert c.tracker.received == 2 and c.tracker.unique == 2 and rx.unique_total == 2
    assert list(c.tracker.nxt) == [1, 1]  # slots of senders 1 and 5
    assert c.sync == 0  # room 3's marker does not settle room 1
    assert rx.stale == 0
    assert {(s["sender"], s["sender_room"]) for s in rx.leak_samples} == {(2, 2), (-1, 3)}
    # Its own room's marker does.
    rx.on_data(c, b"x: " + room_sync_payload(3, 1))
    assert c.sync == 3 and rx.leaked == 2


def test_without_leaks_nothing_is_counted_as_leaked():
    """The same stream minus the foreign lines: leaked stays 0 (the counter
    is not just counting lines)."""
    rx = rooms_receiver()
    c = rx.clients[0]
    rx.on_ready(c, 0)
    rx.run_prefix = run_prefix(RUN)
    rx.on_data(
        c, line_from(1, 0) + line_from(5, 0) + line_from(1, 1) + b"x: " + room_sync_payload(1, 1)
    )
    assert rx.leaked == 0 and c.tracker.unique == 3 and c.sync == 1


def test_loss_samples_with_rooms_name_only_the_own_rooms_senders():
    rx = rooms_receiver()
    c = rx.clients[0]
    rx.on_ready(c, 0)
    rx.run_prefix = run_prefix(RUN)
    rx.on_data(c, line_from(1, 0) + line_from(1, 1))
    # Senders 1 and 5 sent 2 each; 2 (another room) sent 9: not owed here.
    (s,) = loss_samples([c], {"1": 2, "5": 2, "2": 9}, rooms=4)
    assert (s["sender"], s["missing"]) == (5, [0, 1])


def drive_rooms(scan, buf, prefix, slots, own, now, rooms, room, senders):
    tracker = SeqTracker(slots)
    buckets = array("q", bytes(8 * LAT_BUCKETS))
    totals = [0] * 6
    pos = 0
    while True:
        matched, got, in_order, mine, stale, resume, s, q, leaked = scan(
            buf, pos, len(buf), prefix, tracker.nxt, buckets, now, own, rooms, room, senders
        )
        totals = [a + b for a, b in zip(totals, (matched, got, in_order, mine, stale, leaked))]
        if resume < 0:
            break
        tracker.out_of_order(s, q)
        pos = resume
    return totals, list(tracker.nxt), tracker.missing, buckets


room_line = st.one_of(
    st.tuples(st.just("data"), st.integers(0, 11), st.integers(0, 6), st.integers(0, 10**13)),
    st.tuples(st.just("other_run"), st.integers(0, 11), st.integers(0, 3), st.integers(0, 99)),
    st.tuples(st.just("junk"), st.binary(max_size=30), st.just(0), st.just(0)),
)


def render(kind, a, b, t):
    if kind == "data":
        return b"ann: " + make_payload(RUN, a, b, t, 50)
    if kind == "other_run":
        return b"bob: " + make_payload(RUN + 1, a, b, t, 50)
    return a.replace(b"\n", b" ") + b"\n"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(room_line, max_size=40),
    st.integers(-1, 11),
    st.integers(0, 2 * 10**13),
    st.integers(1, 4),
    st.integers(0, 3),
)
def test_c_room_scan_agrees_with_the_python_reference(lines, own, now, rooms, room):
    """_scan.scan_rooms and stats.scan_rooms_py agree on counts, leaks,
    order and latency buckets, on any mix of lines (senders 0..11, of which
    0..9 exist), cut lines included."""
    if stats.SCAN_IMPL != "C":
        pytest.fail("the C scan was not built")
    room = room % rooms
    senders = 10
    slots = -(-senders // rooms)
    buf = b"".join(render(*line) for line in lines)
    for cut in (len(buf), len(buf) * 2 // 3):
        part = buf[:cut]
        args = (part, run_prefix(RUN), slots, own, now, rooms, room, senders)
        assert drive_rooms(stats.scan_rooms, *args) == drive_rooms(scan_rooms_py, *args)


# -------------------------------------------------------------- handshake


def rooms_stream(room_name):
    """What a client of room 1 (index 5 of 4 rooms) reads from the prompt to
    its first live lines: the lobby, the /join answer, a history block that
    holds this run's data line and a sync marker of its own room (both must
    be skipped), then live lines."""
    return b"".join(
        [
            b"Welcome to gchat. What is your name?\n",
            b"You are t_5\n",
            b"Also here (2): a, b\n",
            b"--- last 1 lines of #lobby ---\n",
            b"a: hi\n",
            b"--- end of history ---\n",
            b"c has arrived\n",
            b"You are now in #" + room_name + b"\n",
            b"Also here (1): t_1\n",
            b"--- last 2 lines of #" + room_name + b" ---\n",
            b"t_1: " + room_sync_payload(7, 1),
            line_from(1, 0, name=b"t_1"),
            b"--- end of history ---\n",
            b"d has arrived\n",
            line_from(1, 0, name=b"t_1"),
            b"t_1: " + room_sync_payload(2, 1),
        ]
    )


@pytest.mark.parametrize("chunk", list(range(1, 30)) + [97, 10**6])
def test_room_handshake_joins_and_reads_past_the_history_block(chunk):
    """Prompt -> name; You are -> /join ROOM; You are now in + roster ->
    ready; the history block is skipped at any chunking; live lines count."""
    rx = rooms_receiver()
    c = rx.clients[0]
    a, peer = socket.socketpair()
    c.sock = a
    c.state = PROMPT
    rx.run_prefix = run_prefix(RUN)
    data = rooms_stream(b"t_r1")
    for i in range(0, len(data), chunk):
        rx.on_data(c, data[i : i + chunk])
    assert peer.recv(100) == b"t_5\n/join t_r1\n"
    assert c.state == READY and c.hist == 0
    t = c.tracker
    assert (t.received, t.unique, t.duplicated) == (1, 1, 0)
    assert c.sync == 2  # the live marker, not the 7 in history
    assert rx.leaked == 0 and rx.stale == 0
    assert rx.lines == data.count(b"\n")


def test_room_handshake_reports_a_refused_join():
    """error: after the /join (too many rooms): the client fails with why."""
    rx = rooms_receiver()
    c = rx.clients[0]
    a, peer = socket.socketpair()
    c.sock = a
    c.state = WELCOME
    rx.on_data(
        c,
        b"You are t_5\nNobody else is here.\n"
        b"error: too many rooms (2000); join an existing one (/rooms lists them)\n",
    )
    assert c.state != READY and "too many rooms" in c.error


# ------------------------------------------------------------- validation


def test_without_rooms_results_keep_todays_keys():
    """No --rooms: no rooms or leaked keys, the results are as before."""
    r = base_result(Options(), Server("x", "127.0.0.1", 9))
    assert "rooms" not in r and "leaked" not in r
    r = base_result(Options(rooms=4), Server("x", "127.0.0.1", 9))
    assert (r["rooms"], r["room_size"], r["leaked"]) == (4, 250.0, 0)


def console_script():
    exe = Path(sys.executable).parent / "gchat-bench"
    assert exe.exists(), "gchat-bench is not installed: pip install -e '.[bench]'"
    return str(exe)


@pytest.mark.parametrize(
    "args,why",
    [
        (["fanout", "--compat", "--rooms", "4"], "needs name mode"),
        (["fanout", "--spawn=--compat", "--rooms", "4"], "needs name mode"),
        (["compare", "--rooms", "4"], "needs name mode"),
        (["slow", "--rooms", "4"], "not slow"),
        (["fanout", "--clients", "3", "--rooms", "4"], "every room needs a member"),
        (["fanout", "--rooms", "0"], "at least 1"),
    ],
)
def test_cli_refuses_rooms_where_they_make_no_sense(args, why):
    p = subprocess.run(
        [console_script(), *args, "--json"], capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert p.returncode == 2 and why in p.stderr, p.stderr


# ------------------------------------------------------------- end to end


def room_opts(scenario, **kw):
    base = {
        "scenario": scenario,
        "clients": 40,
        "senders": 40,
        "rooms": 4,
        "rate": 100.0,
        "duration": 1.0,
        "workers": 2,
        "progress": False,
        "drain_timeout": 20.0,
        "settle_timeout": 30.0,
        "connect_timeout": 20.0,
    }
    base.update(kw)
    return Options(**base)


def test_fanout_in_rooms_loses_and_leaks_nothing():
    """40 clients in 4 rooms of 10, all sending: every line reaches the 10
    members of its sender's room exactly once, and nobody else."""
    r = run_spawned(room_opts("fanout"), spawn="")
    assert r["connect_errors"] == 0, r.get("connect_error_samples")
    assert (r["rooms"], r["room_size"], r["senders"]) == (4, 10.0, 40)
    assert r["sent"] == r["offered"] == 100
    assert r["expected"] == r["sent"] * 10
    assert r["received"] == r["expected"]
    assert (r["lost"], r["leaked"], r["duplicated"], r["reordered"]) == (0, 0, 0, 0)
    assert r["drain_complete"] is True and r["disconnected"] == 0 and r["stale"] == 0
    assert r["server_errors"] == 0
    assert "server_exit_code" not in r


def test_saturate_in_uneven_rooms_counts_per_room():
    """40 clients in 3 rooms (14, 13, 13), closed loop: expected is per
    room, so it lies strictly between sent x 13 and sent x 14."""
    r = run_spawned(room_opts("saturate", rooms=3, window=2), spawn="")
    assert r["connect_errors"] == 0, r.get("connect_error_samples")
    assert r["sent"] * 13 < r["expected"] < r["sent"] * 14
    assert r["received"] == r["expected"]
    assert (r["lost"], r["leaked"], r["duplicated"], r["reordered"]) == (0, 0, 0, 0)


def test_join_storm_into_rooms_settles_every_room():
    """connect, name, /join: every client sees its own room's sync marker."""
    r = run_spawned(room_opts("join", clients=60, rooms=6), spawn="")
    assert r["connect_errors"] == 0 and r["connected"] == 60
    assert (r["expected"], r["received"], r["lost"], r["leaked"]) == (60, 60, 0, 0)
    assert 0 < r["connect_s"] <= r["join_s"]


def test_history_tool_checks_every_block():
    """gchat-bench history: a full room's block holds exactly --lines
    lines, an empty room sends none, and the CPU figures are there."""
    p = subprocess.run(
        [
            console_script(),
            "history",
            "--spawn=",
            "--clients",
            "3",
            "--joins",
            "5",
            "--lines",
            "4",
            "--line-bytes",
            "500",
            "--repeat",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    run, summary = [json.loads(line) for line in p.stdout.splitlines()]
    assert run["history_errors"] == summary["history_errors"] == 0
    assert run["joins"] == 15 and run["history_lines"] == 4
    assert run["full_cpu_s"] > 0 and run["empty_cpu_s"] > 0
    assert summary["history_us_per_join"] is not None
