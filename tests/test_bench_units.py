"""Pure tests of the load generator's measuring pieces (no server).

The receive path is fed the same byte stream cut at every chunk size, as
Twisted's LineReceiver tests do: markers cut by a chunk boundary must be
counted exactly once.
"""

import socket
import sys
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gchat_bench import report, stats
from gchat_bench.runner import saturated
from gchat_bench.servers import BenchError, check_loopback, spawn_argv
from gchat_bench.stats import (
    DATA_RE,
    HIST_HIGHEST_US,
    LAT_BUCKETS,
    MIN_SIZE,
    LatencyRecorder,
    SeqTracker,
    bucket_value,
    census_py,
    latency_bucket,
    make_payload,
    merge_encoded,
    new_histogram,
    percentiles_ms,
    run_prefix,
    scan_run_py,
    sync_payload,
)
from gchat_bench.worker import Worker
from gchat_bench.worker_receive import loss_samples
from gchat_bench.worker_sockets import PROMPT, READY, WELCOME

RUN = 123456789


def make_receiver(mode="name", senders=3):
    """The receiving side of a worker of one client (0), fed bytes by the
    tests instead of its sockets."""
    cfg = {
        "host": "127.0.0.1",
        "port": 9,
        "mode": mode,
        "size": 64,
        "senders_total": senders,
        "sender_of": {},
        "name_prefix": "t_",
        "clients": [0],
        "slow": [],
    }
    return Worker(cfg).receiver


def ready_client(rx):
    c = rx.clients[0]
    rx.on_ready(c, 0)
    return c


def test_payload_has_the_asked_size_and_parses_back():
    """A payload is `size` bytes plus newline and its marker reads back."""
    line = make_payload(RUN, 7, 42, 10**15, 100)
    assert len(line) == 101 and line.endswith(b"x\n")
    assert DATA_RE.findall(b"alice: " + line) == [(b"%d" % RUN, b"7", b"42", b"%d" % 10**15)]


def test_payload_never_starts_a_command():
    """Payloads start with '~', never '/' (a gchat command)."""
    assert make_payload(RUN, 0, 0, 1, MIN_SIZE).startswith(b"~")
    assert sync_payload(3).startswith(b"~S3")


def test_payload_keeps_its_marker_when_size_is_tiny():
    """Even below the marker length one padding byte ends the marker."""
    line = make_payload(RUN, 1, 2, 3, 1)
    assert DATA_RE.findall(line) == [(b"%d" % RUN, b"1", b"2", b"3")]


def test_seq_tracker_in_order():
    """In-order deliveries are unique, nothing lost."""
    t = SeqTracker(2)
    for s in (0, 1):
        for q in range(5):
            t.see(s, q)
    assert (t.unique, t.duplicated, t.reordered, t.lost(10)) == (10, 0, 0, 0)


def test_seq_tracker_gap_then_late_arrival_is_reordered():
    """0,2,1: 1 arrives after 2, so it is reordered, not lost."""
    t = SeqTracker(1)
    for q in (0, 2, 1):
        t.see(0, q)
    assert (t.unique, t.reordered, t.duplicated, t.lost(3)) == (3, 1, 0, 0)


def test_seq_tracker_duplicate_and_loss():
    """0,1,1,3: one duplicate, and 2 is lost."""
    t = SeqTracker(1)
    for q in (0, 1, 1, 3):
        t.see(0, q)
    assert (t.received, t.unique, t.duplicated, t.lost(4)) == (4, 3, 1, 1)


def test_latency_recorder_folds_counts_into_the_histogram():
    """Counts per microsecond end up in the HdrHistogram, none dropped."""
    r = LatencyRecorder()
    for us in (5, 5, 1000, 2000, -3, 10**12):
        r.buckets[latency_bucket(us)] += 1
    r.fold()
    assert r.hist.get_total_count() == 6
    assert r.hist.get_value_at_percentile(50) < 2000


def test_latency_buckets_keep_exactly_what_the_histogram_keeps():
    """A bucket stands for the value HdrHistogram would have recorded."""
    h = new_histogram()
    values = list(range(1, 5000)) + [2**k + d for k in range(11, 32) for d in (-1, 0, 1, 12345)]
    values = [v for v in values if v <= HIST_HIGHEST_US] + [HIST_HIGHEST_US]
    last = -1
    for v in sorted(values):
        b = latency_bucket(v)
        assert 0 <= b < LAT_BUCKETS
        assert b >= last  # buckets are in value order
        last = b
        assert bucket_value(b) == h.get_lowest_equivalent_value(v), v
    assert latency_bucket(-5) == 0 and latency_bucket(10**15) == latency_bucket(HIST_HIGHEST_US)


def test_latency_recorder_folds_buckets_into_the_histogram():
    """What the receive path counts in buckets reaches the histogram."""
    r = LatencyRecorder()
    r.buckets[latency_bucket(700)] += 3
    r.buckets[latency_bucket(90000)] += 1
    assert r.pending() == 4
    r.fold()
    assert r.pending() == 0 and r.hist.get_total_count() == 4
    assert r.hist.get_value_at_percentile(50) == 700
    assert r.hist.get_max_value() == pytest.approx(90000, rel=0.001)


def test_merge_and_percentiles():
    """Encoded histograms from workers add up; percentiles are in ms."""
    a, b = LatencyRecorder(), LatencyRecorder()
    a.buckets[latency_bucket(1000)] += 99
    b.buckets[latency_bucket(50000)] += 1
    h = merge_encoded([a.encoded(), b.encoded()])
    p = percentiles_ms(h)
    assert h.get_total_count() == 100
    assert p["p50_ms"] == pytest.approx(1.0, rel=0.01)
    assert p["max_ms"] == pytest.approx(50.0, rel=0.01)


def test_empty_histogram_gives_none_not_zero():
    """No samples must not read as a 0 ms server."""
    assert percentiles_ms(new_histogram())["p99_ms"] is None


def stream(n_per_sender, senders=3, prefix=b"bob: "):
    seqs, lines = [0] * senders, []
    for i in range(n_per_sender * senders):
        s = i % senders
        lines.append(prefix + make_payload(RUN, s, seqs[s], 0, 64))
        seqs[s] += 1
        if i % 4 == 0:
            lines.append(b"carol has arrived\n")
    return b"".join(lines)


@pytest.mark.parametrize("chunk", list(range(1, 40)) + [97, 1000, 10**6])
def test_receiver_counts_every_marker_once_at_any_chunking(chunk):
    """The same stream cut at every chunk size gives the same counts."""
    rx = make_receiver(senders=3)
    c = ready_client(rx)
    rx.run_prefix = run_prefix(RUN)
    data = stream(20)
    for i in range(0, len(data), chunk):
        rx.on_data(c, data[i : i + chunk])
    assert (c.tracker.unique, c.tracker.received, c.tracker.duplicated) == (60, 60, 0)
    assert rx.unique_total == 60
    assert rx.lines == data.count(b"\n")
    assert rx.lat.hist.get_total_count() + rx.lat.pending() == 60
    assert rx.stale == 0


@pytest.mark.parametrize("chunk", [1, 7, 64, 10**6])
def test_receiver_judges_order_line_by_line_within_a_chunk(chunk):
    """Gaps, late arrivals and duplicates inside one chunk count as if the
    lines came one at a time (the scan stops at each one out of order)."""
    rx = make_receiver(senders=2)
    c = ready_client(rx)
    rx.run_prefix = run_prefix(RUN)
    order = [(0, 0), (0, 2), (0, 3), (1, 0), (0, 1), (0, 1), (1, 1), (0, 5), (0, 4), (1, 1)]
    data = b"".join(b"bob: " + make_payload(RUN, s, q, 0, 64) for s, q in order)
    for i in range(0, len(data), chunk):
        rx.on_data(c, data[i : i + chunk])
    ref = SeqTracker(2)
    for s, q in order:
        ref.see(s, q)
    t = c.tracker
    assert (
        (t.received, t.unique, t.duplicated, t.reordered)
        == (ref.received, ref.unique, ref.duplicated, ref.reordered)
        == (10, 8, 2, 2)
    )
    assert list(t.nxt) == [6, 2] and rx.unique_total == 8


def test_the_c_scan_was_built():
    """The install compiles _scan.c; without it the generator is several
    times slower (it still works, on scan_run_py)."""
    assert stats.SCAN_IMPL == "C"
    from gchat_bench._scan import scan_run

    assert stats.scan_run is scan_run


def drive(scan, buf, prefix, senders, own, now):
    """Run a scan over buf to the end, resolving order like the worker."""
    tracker = SeqTracker(senders)
    buckets = array("q", bytes(8 * LAT_BUCKETS))
    totals = [0] * 5
    pos = 0
    while True:
        *counts, resume, s, q = scan(buf, pos, len(buf), prefix, tracker.nxt, buckets, now, own)
        totals = [a + b for a, b in zip(totals, counts)]
        if resume < 0:
            break
        tracker.out_of_order(s, q)
        pos = resume
    return totals, list(tracker.nxt), tracker.missing, buckets


line_strategy = st.one_of(
    # this run's data lines: mostly near the expected seq, any latency
    st.tuples(st.just("data"), st.integers(0, 4), st.integers(0, 12), st.integers(0, 10**13)),
    st.tuples(st.just("other_run"), st.integers(0, 3), st.integers(0, 5), st.integers(0, 99)),
    st.tuples(st.just("huge"), st.integers(0, 2), st.just(0), st.just(0)),
    st.tuples(st.just("junk"), st.binary(max_size=30), st.just(0), st.just(0)),
)


def render(kind, a, b, t):
    if kind == "data":
        return b"ann: " + make_payload(RUN, a, b, t, 50)
    if kind == "other_run":
        return b"bob: " + make_payload(RUN + 1, a, b, t, 50)
    if kind == "huge":
        return b"~%d %d %s 5 x\n" % (RUN, a, b"9" * 25)
    return a.replace(b"\n", b" ") + b"\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(line_strategy, max_size=40), st.integers(-1, 4), st.integers(0, 2 * 10**13))
def test_c_scan_agrees_with_the_python_reference(lines, own, now):
    """_scan.c and stats.scan_run_py give the same counts, order, missing
    sets and latency buckets on any mix of lines, cut lines included."""
    buf = b"".join(render(*line) for line in lines)
    if stats.SCAN_IMPL != "C":
        pytest.fail("the C scan was not built")
    for cut in (len(buf), len(buf) * 2 // 3):
        part = buf[:cut]
        c_side = drive(stats.scan_run, part, run_prefix(RUN), 3, own, now)
        py_side = drive(scan_run_py, part, run_prefix(RUN), 3, own, now)
        assert c_side == py_side


def test_receiver_ignores_lines_of_another_run():
    """Markers of an earlier phase or another benchmark count as stale."""
    rx = make_receiver()
    c = ready_client(rx)
    rx.run_prefix = run_prefix(999)
    rx.on_data(c, stream(2))
    assert c.tracker.received == 0 and rx.stale == 6


def test_receiver_sees_sync_markers():
    """A sync marker is recorded with the time it arrived."""
    rx = make_receiver(mode="compat")
    c = ready_client(rx)
    rx.on_data(c, b"127.0.0.1:5: " + sync_payload(4))
    assert c.sync == 4 and c.t_sync > 0


def paired_client(rx):
    c = rx.clients[0]
    a, b = socket.socketpair()
    c.sock = a
    return c, b


def test_name_handshake_answers_the_prompt_and_retries_a_taken_name():
    """Prompt -> name; error -> prompt again -> another name; You are -> ready."""
    rx = make_receiver()
    c, peer = paired_client(rx)
    c.state = PROMPT
    rx.on_data(c, b"Welcome! What is your name?\n")
    assert c.state == WELCOME
    assert peer.recv(100) == b"t_0\n"
    rx.on_data(c, b"error: name t_0 is taken\nWhat is your name?\n")
    assert peer.recv(100) == b"t_0_1\n"
    rx.on_data(c, b"You are t_0_1\nPresent: t_0_1\n")
    assert c.state == READY and c.tracker is not None


def test_name_handshake_accepts_a_prompt_without_newline():
    """A prompt like 'Your name? ' (no newline) is answered too."""
    rx = make_receiver()
    c, peer = paired_client(rx)
    c.state = PROMPT
    rx.on_data(c, b"Your name? ")
    assert peer.recv(100) == b"t_0\n"


def test_compat_handshake_waits_for_you_are():
    """In compat mode the client is ready at 'You are HOST:PORT'."""
    rx = make_receiver(mode="compat")
    c, _ = paired_client(rx)
    c.state = WELCOME
    rx.on_data(c, b"You are 127.0.0.1:5000\n127.0.0.1:5001 has arrived\n")
    assert c.state == READY


def fake_server(help_text):
    # `cmd --help` prints help_text: python -c ignores the extra argument.
    return [sys.executable, "-c", "print(%r)" % help_text]


def test_spawn_turns_off_flood_limit_in_name_mode_when_the_server_has_it():
    """--flood-rate 0 is added only in name mode, if listed, if not set."""
    cmd = fake_server("--compat --flood-rate RATE")
    assert spawn_argv(cmd, "", False)[-2:] == ["--flood-rate", "0"]
    assert "--flood-rate" not in spawn_argv(cmd, "", True)
    assert spawn_argv(cmd, "--flood-rate 5", False).count("--flood-rate") == 1
    assert spawn_argv(cmd, "--flood-rate=5", False)[-1] == "--flood-rate=5"
    assert "--flood-rate" not in spawn_argv(fake_server("--compat only"), "", False)


def test_spawn_adds_compat_only_where_the_server_has_it():
    """A baseline without --compat is not given it."""
    assert "--compat" in spawn_argv(fake_server("--compat"), "--sendq 1", True)
    assert "--compat" not in spawn_argv(fake_server("--host --port"), "", True)


def test_only_loopback_targets():
    """Load goes to 127.0.0.0/8 and ::1 only."""
    for ok in ("127.0.0.1", "127.3.2.1", "::1", "localhost"):
        check_loopback(ok)
    for bad in ("10.0.0.1", "192.168.1.1", "8.8.8.8", "example.com"):
        with pytest.raises(BenchError):
            check_loopback(bad)


def test_median_result_sums_loss_and_ors_saturation():
    """Medians of figures; losses add up; one saturated run taints all."""
    runs = [
        {
            "server": "g",
            "clients": 5,
            "scenario": "fanout",
            "p99_ms": v,
            "lost": lost,
            "generator_saturated": s,
        }
        for v, lost, s in ((1.0, 0, False), (3.0, 2, True), (2.0, 0, False))
    ]
    m = report.median_result(runs)
    assert (m["p99_ms"], m["lost"], m["generator_saturated"], m["runs"]) == (2.0, 2, True, 3)


def test_ratios_and_table():
    """Ratios are subject/baseline; the table has one row per result."""
    a = {
        "server": "gchat",
        "clients": 5,
        "scenario": "fanout",
        "deliveries_per_s": 200.0,
        "p99_ms": 1.0,
        "generator_saturated": False,
    }
    b = dict(a, server="seed_port", deliveries_per_s=100.0, p99_ms=4.0)
    assert report.ratios(a, b) == {"deliveries_per_s": 2.0, "p99_ms": 0.25}
    text = report.table([a, b])
    assert len(text.splitlines()) == 4 and "seed_port" in text
    assert "x2.00 (better)" in report.ratio_table(a, [b])


def cpu(gen_pct=10.0, gen_cores=0.2, host=50.0, srv=50.0):
    return {
        "generator_cpu_pct": gen_pct,
        "generator_cores": gen_cores,
        "host_cpu_pct": host,
        "server_cpu_pct": srv,
    }


def test_generator_saturated_when_a_worker_is_busy_all_the_time():
    """A worker at >= 90% of a core is the limit, whatever the rest does."""
    assert saturated(cpu(gen_pct=95.0))
    assert not saturated(cpu(gen_pct=50.0))


def test_generator_saturated_when_it_fills_the_machine_the_server_wanted():
    """Full machine + server under a core + generator using >= half a core."""
    assert saturated(cpu(gen_cores=1.2, host=95.0, srv=60.0))
    # The server had its core: the server is the limit, not the generator.
    assert not saturated(cpu(gen_cores=1.2, host=95.0, srv=99.0))
    # Someone else filled the machine: not the generator's doing.
    assert not saturated(cpu(gen_cores=0.0, host=96.0, srv=0.0))


def test_loss_samples_name_the_missing_sequence_numbers():
    """An incomplete drain says which client missed which seqs of whom."""
    rx = make_receiver(senders=2)
    c = ready_client(rx)
    for q in (0, 2):  # 1 skipped; 3 and 4 never came
        c.tracker.see(1, q)
    for q in range(5):
        c.tracker.see(0, q)
    (s,) = loss_samples([c], {"0": 5, "1": 5})
    assert (s["client"], s["sender"], s["missing"], s["sent"]) == (0, 1, [1, 3, 4], 5)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"\n", b"~", b"S", b"~S", b"error:", b"err", b"or:", b"x", b"~S12 \n"]),
        max_size=60,
    ),
    st.integers(0, 80),
    st.integers(0, 80),
)
def test_c_census_agrees_with_bytes_count(pieces, start, end):
    """_scan.census counts newlines, markers, sync markers and errors like
    bytes.count, on any range (overlaps such as "error:error:" included)."""
    if stats.SCAN_IMPL != "C":
        pytest.fail("the C scan was not built")
    buf = b"".join(pieces)
    assert stats.census(buf, start, end) == census_py(buf, start, end)
