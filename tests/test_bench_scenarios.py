"""Each gchat-bench scenario, small (~50 clients, ~1 s), against gchat.

They assert sane figures and exact accounting (zero loss, duplication and
reordering), never timings: this machine is shared and noisy.  Servers and
generator workers are real processes on loopback, on free ports.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gchat_bench.baselines import BASELINES
from gchat_bench.cli import run_spawned
from gchat_bench.runner import Options
from gchat_bench.servers import baseline_command

CLIENTS = 50
# Every run must finish: a wedged server or worker fails the test, it does
# not hang CI (the runner has its own deadlines; this is the last resort).
RUN_TIMEOUT = 120

REQUIRED_KEYS = {
    "scenario",
    "clients",
    "senders",
    "rate",
    "duration_s",
    "deliveries_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "sent",
    "expected",
    "received",
    "lost",
    "duplicated",
    "reordered",
    "connect_errors",
    "server_cpu_us_per_delivery",
    "server_rss_mb",
    "generator_saturated",
}


def opts(scenario, **kw):
    base = {
        "scenario": scenario,
        "clients": CLIENTS,
        "senders": 5,
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


def assert_exact_delivery(r, receivers=CLIENTS):
    """Every message sent reached every receiver exactly once, in order."""
    assert r["connect_errors"] == 0, r.get("connect_error_samples")
    assert r["disconnected"] == 0
    assert r["sent"] > 0
    assert r["expected"] == r["sent"] * receivers
    assert r["received"] == r["expected"]
    assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0)
    assert r["drain_complete"] is True
    assert "server_exit_code" not in r, "server did not exit 0 on SIGTERM"


def assert_sane_latency(r):
    assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]
    assert r["deliveries_per_s"] > 0
    assert r["server_cpu_us_per_delivery"] > 0
    assert r["server_rss_mb"] > 1
    assert isinstance(r["generator_saturated"], bool)


def test_fanout_name_mode():
    """Open loop at a fixed rate: every client gets every message once."""
    r = run_spawned(opts("fanout"), spawn="")
    assert r["mode"] == "name" and r["scenario"] == "fanout"
    assert_exact_delivery(r)
    assert_sane_latency(r)
    # Open loop keeps to its schedule: 100 msg/s for 1 s.
    assert r["offered"] == 100 and r["sent"] == 100
    assert r["server_errors"] == 0


def test_fanout_compat_from_several_source_addresses():
    """The seed protocol, with clients bound to 3 loopback source addresses."""
    r = run_spawned(opts("fanout", source_addrs=3), spawn="--compat")
    assert r["mode"] == "compat" and r["source_addrs"] == 3
    assert_exact_delivery(r)
    assert_sane_latency(r)


def test_saturate_closed_loop():
    """W messages in flight per sender, replenished on their echo."""
    r = run_spawned(opts("saturate", window=2), spawn="")
    assert_exact_delivery(r)
    assert_sane_latency(r)
    assert r["window"] == 2
    # Closed loop: each sender sent at least its first window, and the
    # reported rate is the one it reached.
    assert r["sent"] >= 5 * 2
    assert r["rate"] == pytest.approx(r["sent"] / r["duration_s"])


def test_join_storm_until_quiet():
    """All clients connect at once; quiet when all saw the final marker."""
    r = run_spawned(opts("join"), spawn="--compat")
    assert r["connect_errors"] == 0 and r["connected"] == CLIENTS
    assert (r["expected"], r["received"], r["lost"]) == (CLIENTS, CLIENTS, 0)
    assert 0 < r["connect_s"] <= r["join_s"]
    # The seed announces each arrival to everyone already there: at least
    # one welcome and one marker per client, plus N(N-1)/2 arrivals.
    assert r["deliveries"] >= 2 * CLIENTS + CLIENTS * (CLIENTS - 1) // 2
    assert 0 < r["p50_ms"] <= r["max_ms"]
    assert r["server_cpu_us_per_delivery"] > 0


def test_idle_clients_stay_and_cost_memory():
    """Silent clients stay connected; RSS per client is reported."""
    r = run_spawned(opts("idle"), spawn="")
    assert r["connect_errors"] == 0
    assert (r["expected"], r["received"], r["lost"]) == (CLIENTS, CLIENTS, 0)
    assert r["server_rss_mb"] > 1
    assert r["server_rss_per_client_kb"] is not None
    assert r["server_cpu_pct"] is not None and r["server_cpu_pct"] >= 0


@pytest.mark.parametrize("policy,cut", [("disconnect", 5), ("drop", 0)])
def test_slow_readers_do_not_cost_the_others_a_message(policy, cut):
    """Clients that never read: the others still get everything, and the
    server cuts the slow ones (disconnect) or keeps them (drop).

    Each slow client is owed ~100 KB, far over a 16 KiB send queue plus
    the small kernel buffers asked for here, so the policy must act.
    """
    r = run_spawned(
        opts("slow", slow_clients=5, size=512, rate=200.0),
        spawn="--sendq 16384 --sndbuf 4096 --slow-policy %s" % policy,
    )
    assert r["slow_connected"] == 5
    assert (r["slow_closed_by_server"], r["slow_still_open"]) == (cut, 5 - cut)
    assert_exact_delivery(r)
    assert_sane_latency(r)
    assert r["control_lost"] == 0 and r["control_p99_ms"] > 0


@pytest.mark.parametrize("name", list(BASELINES))
def test_each_baseline_speaks_the_seed_protocol_under_load(name):
    """A baseline gets the same exact accounting as gchat."""
    r = run_spawned(opts("fanout", compat=True), server_cmd=baseline_command(BASELINES[name]))
    assert r["server"] == name
    assert_exact_delivery(r)
    assert_sane_latency(r)


def console_script():
    exe = Path(sys.executable).parent / "gchat-bench"
    assert exe.exists(), "gchat-bench is not installed: pip install -e '.[bench]'"
    return str(exe)


def run_cli(*args):
    p = subprocess.run(
        [console_script(), *args], capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return [json.loads(line) for line in p.stdout.splitlines()]


def test_cli_json_has_the_contract_keys():
    """`gchat-bench fanout --spawn= --json`: one JSON object, every key."""
    (r,) = run_cli(
        "fanout",
        "--spawn=",
        "--clients",
        str(CLIENTS),
        "--senders",
        "5",
        "--duration",
        "1",
        "--json",
    )
    assert REQUIRED_KEYS <= set(r), REQUIRED_KEYS - set(r)
    assert (r["scenario"], r["clients"], r["senders"], r["rate"], r["duration_s"]) == (
        "fanout",
        CLIENTS,
        5,
        100.0,
        1.0,
    )
    assert_exact_delivery(r)


def test_cli_compare_gchat_with_the_baseline():
    """`compare`: one run per server (gchat, then every baseline)."""
    rows = run_cli(
        "compare", "--clients", str(CLIENTS), "--senders", "5", "--duration", "1", "--json"
    )
    assert [r["server"] for r in rows] == ["gchat"] + list(BASELINES)
    for r in rows:
        assert r["mode"] == "compat"
        assert_exact_delivery(r)


def test_cli_target_with_server_pid():
    """--target loads a running server; --server-pid gives its CPU and RSS."""
    srv = subprocess.Popen(
        baseline_command(BASELINES["seed_port"]) + ["--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = srv.stderr.readline()
        assert "listening on" in line, line
        addr = line.split("listening on ")[1].split()[0]
        (r,) = run_cli(
            "fanout",
            "--target",
            addr,
            "--server-pid",
            str(srv.pid),
            "--compat",
            "--clients",
            "20",
            "--senders",
            "2",
            "--duration",
            "1",
            "--json",
        )
        assert r["server"] == "target"
        assert_exact_delivery(r, receivers=20)
        assert r["server_cpu_us_per_delivery"] > 0 and r["server_rss_mb"] > 1
    finally:
        srv.terminate()
        assert srv.wait(10) == 0


def test_cli_refuses_a_target_off_loopback():
    """The generator never loads an address off this machine."""
    p = subprocess.run(
        [console_script(), "fanout", "--target", "10.1.2.3:6667", "--json"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert p.returncode == 2 and "loopback" in p.stderr


def test_cli_sweep_plot(tmp_path):
    """--clients A,B --plot writes a PNG with one run per client count."""
    png = tmp_path / "sweep.png"
    rows = run_cli(
        "fanout",
        "--spawn=",
        "--clients",
        "10,30",
        "--senders",
        "2",
        "--duration",
        "1",
        "--json",
        "--plot",
        str(png),
    )
    assert [r["clients"] for r in rows] == [10, 30]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def read_line(sock, buf):
    # One line, waiting at most the socket's timeout: a deadline, not a sleep.
    while b"\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, "connection closed while waiting for a line"
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line.decode()


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_speaks_the_seed_protocol_byte_for_byte(name):
    """You are ADDR / ADDR has arrived / ADDR: text to all / ADDR has left."""
    import socket

    srv = subprocess.Popen(
        baseline_command(BASELINES[name]) + ["--port", "0"], stderr=subprocess.PIPE, text=True
    )
    try:
        line = srv.stderr.readline()
        host, _, port = line.split("listening on ")[1].split()[0].rpartition(":")
        abuf, bbuf = bytearray(), bytearray()
        a = socket.create_connection((host, int(port)), timeout=10)
        a_addr = "%s:%d" % a.getsockname()[:2]
        # A is in once it is welcomed, so B's arrival is announced to it.
        assert read_line(a, abuf) == "You are " + a_addr
        b = socket.create_connection((host, int(port)), timeout=10)
        b_addr = "%s:%d" % b.getsockname()[:2]
        assert read_line(b, bbuf) == "You are " + b_addr
        assert read_line(a, abuf) == b_addr + " has arrived"
        b.sendall(b"hello there\r\n")
        assert read_line(a, abuf) == b_addr + ": hello there"
        assert read_line(b, bbuf) == b_addr + ": hello there"
        b.close()
        assert read_line(a, abuf) == b_addr + " has left"
        a.close()
    finally:
        srv.terminate()
        assert srv.wait(10) == 0


def test_cli_json_says_which_scan_the_generator_used():
    """Every result records how the workers parsed lines: a run without the
    C scan must not be mistaken for one with it."""
    (r,) = run_cli(
        "saturate", "--spawn=", "--clients", "50", "--senders", "5", "--duration", "1", "--json"
    )
    assert r["generator_scan"] == "C"
    assert_exact_delivery(r)


def test_the_python_scan_fallback_measures_the_same_and_says_so():
    """With the C scan unavailable (forced by GCHAT_BENCH_SCAN=python) the
    generator still counts every delivery, and the result and the table
    say which scan was used."""
    env = dict(os.environ, GCHAT_BENCH_SCAN="python")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "gchat_bench",
            "saturate",
            "--spawn=",
            "--clients",
            "50",
            "--senders",
            "5",
            "--duration",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    (r,) = [json.loads(line) for line in p.stdout.splitlines()]
    assert r["generator_scan"] == "python"
    assert_exact_delivery(r)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "gchat_bench",
            "fanout",
            "--spawn=",
            "--clients",
            "20",
            "--senders",
            "2",
            "--duration",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    assert "C scan (gchat_bench/_scan.c) was not built" in p.stdout + p.stderr


@pytest.mark.parametrize("threads", [1, 2])
def test_loopback_floor_delivers_every_byte_and_times_each_round(threads):
    """python -m gchat_bench.floor: the kernel's cost of one send, measured
    on sockets whose other end really received every line, with the
    broadcast sent by one thread or split over two."""
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "gchat_bench.floor",
            "--clients",
            "201",
            "--rounds",
            "3",
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["bytes_received"] == r["bytes_sent"] == 71 * 201 * 5
    assert r["threads"] == threads
    assert len(r["send_us_per_round"]) == 3 and r["send_us_median"] > 0
    assert r["broadcast_ms_median"] > 0
    assert "us of CPU per send" in p.stderr
