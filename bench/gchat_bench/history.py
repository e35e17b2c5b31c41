"""history: the server's CPU cost of sending a room's history on /join.

    gchat-bench history [--clients 20] [--joins 200] [--lines 20]
                        [--line-bytes 4096] [--repeat 3] [--spawn=OPTIONS |
                        --target HOST:PORT --server-pid PID] [--json]

A joiner of a room with history receives, after ``You are now in #ROOM``
and the roster, the block ``--- last N lines of #ROOM ---`` ... ``--- end
of history ---``.  This measures what that block costs the server, as the
difference of two phases that do the same work except for it:

- setup: each of C clients gets three rooms of its own: F (it fills F with
  --lines lines of --line-bytes bytes, the longest gchat accepts by
  default, so F's history is full), E (nobody ever speaks there: no
  history) and O (where it steps out to; no history either).
- phase "full": every client does J cycles of ``/join F`` + ``/join O``,
  one cycle in flight at a time (the next starts when the roster of O has
  come back), all C clients at once.
- phase "empty": the same with E instead of F.

Each room has no other member, so no arrival or departure line goes to
anyone: a cycle is two joins, two rosters, and (full) one history block.
The server's CPU time over each phase comes from /proc/PID/task/*/schedstat
(servers.process_cpu_s).  ``history_us_per_join`` = (CPU of full - CPU of
empty) / (C x J): the history block's cost per join, rendering and sending
included.  Every cycle is checked: the full room's block must hold exactly
--lines lines and the empty room's must be absent (``history_errors``).
Phases alternate (full first in odd runs, empty first in even ones) and
--repeat R reports medians.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import statistics
import sys
import time

import gevent
from gevent import socket as gsocket

from gchat_bench.runner import host_busy, wait_for_idle
from gchat_bench.servers import (
    BenchError,
    Server,
    check_loopback,
    gchat_command,
    process_cpu_s,
    spawn_argv,
)

TIMEOUT = 30.0  # any one read; a server that stops answering fails the run


class LineClient:
    """One blocking-style (gevent) client that reads lines."""

    def __init__(self, host: str, port: int):
        self.sock = gsocket.create_connection((host, port), timeout=TIMEOUT)
        self.buf = bytearray()

    def line(self) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + 1]
                return out.rstrip(b"\r")
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise BenchError("server closed the connection")
            self.buf += chunk

    def until(self, prefix: bytes) -> bytes:
        while True:
            ln = self.line()
            if ln.startswith(prefix):
                return ln
            if ln.startswith(b"error:"):
                raise BenchError("server said: %s" % ln.decode("utf-8", "replace"))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Member:
    """A client with its own rooms F, E, O."""

    def __init__(self, host: str, port: int, tag: str, i: int):
        self.c = LineClient(host, port)
        self.name = b"%s_%d" % (tag.encode(), i)
        self.full = b"%sF%d" % (tag.encode(), i)
        self.empty = b"%sE%d" % (tag.encode(), i)
        self.out = b"%sO%d" % (tag.encode(), i)

    def start(self, lines: int, line_bytes: int) -> None:
        c = self.c
        c.until(b"Welcome")
        c.send(self.name + b"\n")
        c.until(b"You are " + self.name)
        # Fill F: the last `lines` lines kept are ours, each of line_bytes.
        c.send(b"/join %s\n" % self.full)
        c.until(b"You are now in #" + self.full)
        for k in range(lines):
            body = (b"h%d " % k).ljust(line_bytes, b"y")
            c.send(body + b"\n")
            c.until(self.name + b": h%d " % k)
        for room in (self.empty, self.out):  # create E and O, no history
            c.send(b"/join %s\n" % room)
            c.until(b"You are now in #" + room)

    def cycles(self, room: bytes, n: int, lines: int, errors: list) -> None:
        """n times: /join room, /join O; check room's history block."""
        c = self.c
        want = lines if room == self.full else -1
        for _ in range(n):
            c.send(b"/join %s\n/join %s\n" % (room, self.out))
            c.until(b"You are now in #" + room)
            c.line()  # roster
            got = -1
            ln = c.line()
            if ln.startswith(b"--- last "):
                got = 0
                while True:
                    ln = c.line()
                    if ln == b"--- end of history ---":
                        break
                    got += 1
                ln = c.line()
            if not ln.startswith(b"You are now in #" + self.out):
                # Something else came between: read on to the confirmation.
                c.until(b"You are now in #" + self.out)
            c.line()  # roster of O
            if got != want:
                errors.append({"room": room.decode(), "history_lines": got, "want": want})


def run_phase(members: list, which: str, joins: int, lines: int, pid) -> dict:
    errors: list = []
    cpu0 = process_cpu_s(pid) if pid else None
    me0 = process_cpu_s(os.getpid()) or 0.0
    host0, ncpu = host_busy()
    t0 = time.monotonic()
    greenlets = [
        gevent.spawn(m.cycles, m.full if which == "full" else m.empty, joins, lines, errors)
        for m in members
    ]
    gevent.joinall(greenlets, raise_error=True)
    wall = time.monotonic() - t0
    cpu1 = process_cpu_s(pid) if pid else None
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    host1, _ = host_busy()
    mine = (process_cpu_s(os.getpid()) or 0.0) - me0 + (cpu or 0.0)
    # CPU neither the server nor these clients used, in % of all cores.
    other = max(0.0, 100.0 * (host1 - host0 - mine) / (max(wall, 1e-6) * ncpu))
    return {"cpu_s": cpu, "wall_s": wall, "errors": errors, "other_pct": other}


def measure(host: str, port: int, pid, a: argparse.Namespace, rep: int) -> dict:
    tag = "h%04x" % random.getrandbits(16)
    members = [Member(host, port, tag, i) for i in range(a.clients)]
    try:
        gevent.joinall(
            [gevent.spawn(m.start, a.lines, a.line_bytes) for m in members], raise_error=True
        )
        order = ("full", "empty") if rep % 2 == 0 else ("empty", "full")
        ph = {w: run_phase(members, w, a.joins, a.lines, pid) for w in order}
    finally:
        for m in members:
            m.c.close()
    n = a.clients * a.joins
    res = {
        "scenario": "history",
        "clients": a.clients,
        "joins_per_client": a.joins,
        "joins": n,
        "history_lines": a.lines,
        "line_bytes": a.line_bytes,
        # What one block carries: the two frame lines and `lines` lines of
        # "NAME: " + line_bytes + "\n".
        "history_bytes": a.lines * (len(members[0].name) + 2 + a.line_bytes + 1),
        "full_cpu_s": ph["full"]["cpu_s"],
        "empty_cpu_s": ph["empty"]["cpu_s"],
        "full_wall_s": ph["full"]["wall_s"],
        "empty_wall_s": ph["empty"]["wall_s"],
        "history_errors": len(ph["full"]["errors"]) + len(ph["empty"]["errors"]),
        "history_error_samples": (ph["full"]["errors"] + ph["empty"]["errors"])[:5],
        "order": list(order),
        "repeat_index": rep,
        "host_other_cpu_pct": max(ph["full"]["other_pct"], ph["empty"]["other_pct"]),
    }
    if res["full_cpu_s"] is not None and res["empty_cpu_s"] is not None:
        # A cycle is two joins: the room and O.
        res["full_us_per_cycle"] = res["full_cpu_s"] * 1e6 / n
        res["empty_us_per_cycle"] = res["empty_cpu_s"] * 1e6 / n
        res["history_us_per_join"] = (res["full_cpu_s"] - res["empty_cpu_s"]) * 1e6 / n
        res["join_us_no_history"] = res["empty_cpu_s"] * 1e6 / n / 2
    return res


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="gchat-bench history",
        description="Server CPU per /join spent on sending a full room history: "
        "joins of rooms with a full history minus joins of rooms without.",
    )
    ap.add_argument("--clients", type=int, default=20, help="clients, each with its own rooms (20)")
    ap.add_argument(
        "--joins",
        type=int,
        default=200,
        help="cycles per client per phase: /join ROOM + /join OUT (200)",
    )
    ap.add_argument(
        "--lines",
        type=int,
        default=20,
        help="history lines to fill the full room with (20: gchat's --history)",
    )
    ap.add_argument(
        "--line-bytes",
        type=int,
        default=4096,
        help="bytes per history line sent (4096: gchat's --max-line)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs; the summary has medians (3)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--target", metavar="HOST:PORT", help="a running server (loopback)")
    where.add_argument(
        "--spawn",
        metavar="OPTIONS",
        default="",
        help="start gchat with OPTIONS (--flood-rate 0 is added)",
    )
    ap.add_argument("--server-pid", type=int, help="with --target: its pid, for its CPU")
    ap.add_argument(
        "--server-cmd",
        metavar="CMD",
        help="spawn this command instead of gchat (it gets --host H --port 0 "
        "and the --spawn OPTIONS)",
    )
    ap.add_argument(
        "--max-other-load",
        metavar="PCT",
        type=float,
        default=None,
        help="wait for an idle machine before each run; discard and re-run "
        "(at most --retries times) a run in which others used more than "
        "PCT%% of the machine",
    )
    ap.add_argument("--retries", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON object per run, then the summary")
    a = ap.parse_args(argv)
    if min(a.clients, a.joins, a.lines, a.repeat) < 1 or a.line_bytes < 8:
        ap.error("--clients, --joins, --lines, --repeat must be at least 1, --line-bytes 8")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = None
    try:
        if a.target:
            host, _, port = a.target.rpartition(":")
            host = host.strip("[]")
            check_loopback(host)
            port, pid = int(port), a.server_pid
        else:
            cmd = shlex.split(a.server_cmd) if a.server_cmd else gchat_command()
            server = Server.spawn("gchat", spawn_argv(cmd, a.spawn, False))
            host, port, pid = server.host, server.port, server.pid
        runs = []
        for rep in range(a.repeat):
            for attempt in range(a.retries + 1):
                if a.max_other_load is not None:
                    wait_for_idle()
                r = measure(host, port, pid, a, rep)
                if server is not None:
                    server.check_alive()
                if (
                    a.max_other_load is None
                    or attempt == a.retries
                    or r["host_other_cpu_pct"] <= a.max_other_load
                ):
                    break
                r["discarded"] = "others used %.0f%% of the machine" % r["host_other_cpu_pct"]
                print("run %d discarded: %s" % (rep + 1, r["discarded"]), file=sys.stderr)
                if a.json:
                    print(json.dumps(r), flush=True)
            runs.append(r)
            if a.json:
                print(json.dumps(r), flush=True)
            print(
                "run %d: history %s us/join (full %s, empty %s us per cycle of 2 joins), "
                "errors %d"
                % (
                    rep + 1,
                    _f(r.get("history_us_per_join")),
                    _f(r.get("full_us_per_cycle")),
                    _f(r.get("empty_us_per_cycle")),
                    r["history_errors"],
                ),
                file=sys.stderr,
            )
    except BenchError as e:
        print("gchat-bench history: error: %s" % e, file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    summary = dict(runs[0], summary="median", runs=len(runs))
    for k in (
        "full_cpu_s",
        "empty_cpu_s",
        "full_wall_s",
        "empty_wall_s",
        "full_us_per_cycle",
        "empty_us_per_cycle",
        "history_us_per_join",
        "join_us_no_history",
        "host_other_cpu_pct",
    ):
        vals = [r[k] for r in runs if r.get(k) is not None]
        summary[k] = statistics.median(vals) if vals else None
    summary["history_errors"] = sum(r["history_errors"] for r in runs)
    summary["history_us_per_join_runs"] = [r.get("history_us_per_join") for r in runs]
    summary.pop("repeat_index", None)
    summary.pop("order", None)
    if a.json:
        print(json.dumps(summary), flush=True)
    out = sys.stderr if a.json else sys.stdout
    print(
        "history: %d clients x %d joins per phase, %d lines of %d B (%d B per block), "
        "median of %d:\n  server CPU per join for the history block: %s us "
        "(runs: %s)\n  a join without history: %s us; errors: %d"
        % (
            a.clients,
            a.joins,
            a.lines,
            a.line_bytes,
            summary["history_bytes"],
            len(runs),
            _f(summary["history_us_per_join"]),
            ", ".join(_f(v) for v in summary["history_us_per_join_runs"]),
            _f(summary["join_us_no_history"]),
            summary["history_errors"],
        ),
        file=out,
    )
    return 0 if summary["history_errors"] == 0 else 1


def _f(v) -> str:
    return "-" if v is None else "%.1f" % v


if __name__ == "__main__":
    sys.exit(main())
