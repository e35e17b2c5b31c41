"""Resume storm, one process (issue 18): every session client drops at once
and comes back with /resume while the rooms go on talking.

    python -m gchat_bench.resume_storm --clients 5000 --rooms 500 --rate 500 --json

It starts a gchat (``--flood-rate 0``) on a free port of 127.0.0.1 and plays
every client itself, in one gevent process:

senders   one per room, connected throughout, saying "~SEQ" lines: together
          --rate lines/s, spread evenly over the rooms;
sessions  the other clients, in rooms of --clients/--rooms: each is named,
          joins its room, sends /session and keeps the token and the last id
          it read.  After --warmup seconds all of them drop at once (a
          reset), stay away --away seconds while the senders go on, and
          reconnect, each sending /resume TOKEN LAST-ID as its first line.

Measured: how long from the first reconnect until every client has its
"resumed" line (and until every replayed line is in), the server's CPU over
that storm, and its CPU per resume; then, after --settle seconds of live
traffic, every session client must have read every line of its room's
sender exactly once, in order, across the drop: before it, replayed, and
live after.  The run stops by itself; exit 1 if anything was lost,
doubled, out of order, or a resume failed.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

from gchat_bench.servers import Server, gchat_command, process_cpu_s  # noqa: E402

HOST = "127.0.0.1"
TAGGED = re.compile(rb"@(\S+) (\S+): ~(\d+)$")
TOKEN = re.compile(rb"session ([A-Za-z0-9_-]+)$")
RESUMED = re.compile(rb"resumed \S+ #\S+ (\d+|gap)$")
READY_TIMEOUT = 120.0  # every client named, joined and holding a session


class LineSocket:
    """A client socket read line by line (gevent-cooperative)."""

    def __init__(self) -> None:
        self.sock = socket.create_connection((HOST, PORT[0]))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def reset(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


PORT = [0]


class SessionClient:
    def __init__(self, index: int, room: int) -> None:
        self.index = index
        self.room = room
        self.name = b"s%d" % index
        self.sender = b"snd%d" % room
        self.token = b""
        self.last_id = b"-"
        self.seqs: list[int] = []  # the sender's numbers, in the order read
        self.ready = Event()
        self.resumed = Event()
        self.outcome = b""
        self.sock: LineSocket | None = None

    def start(self) -> None:
        self.sock = LineSocket()
        self.sock.send(self.name + b"\n/join r%d\n/session\n" % self.room)
        while True:
            line = self.sock.line()
            match = TOKEN.match(line)
            if match:
                self.token = match.group(1)
                self.ready.set()
                break
        self.read()

    def read(self) -> None:
        sock = self.sock
        try:
            while True:
                self.take(sock.line())
        except (EOFError, OSError):
            return

    def take(self, line: bytes) -> None:
        match = TAGGED.match(line)
        if match is None:
            if not self.resumed.is_set() and line.startswith(b"resumed "):
                self.outcome = line
                self.resumed.set()
            elif line.startswith(b"error:") and not self.resumed.is_set():
                self.outcome = line
                self.resumed.set()
            return
        self.last_id = match.group(1)
        if match.group(2) == self.sender:
            self.seqs.append(int(match.group(3)))

    def drop(self) -> None:
        if self.sock is not None:
            self.sock.reset()

    def come_back(self) -> None:
        self.sock = LineSocket()
        self.sock.send(b"/resume %s %s\n" % (self.token, self.last_id))
        self.read()


class Sender:
    def __init__(self, room: int) -> None:
        self.room = room
        self.seq = 0
        self.sock = LineSocket()
        self.sock.send(b"snd%d\n/join r%d\n" % (room, room))
        gevent.spawn(self._drain)

    def _drain(self) -> None:
        try:
            while self.sock.sock.recv(65536):
                pass
        except OSError:
            pass

    def say(self) -> None:
        self.sock.send(b"~%d\n" % self.seq)
        self.seq += 1


def run(opts: argparse.Namespace) -> dict:
    server = Server.spawn(
        "gchat",
        gchat_command()
        + ["--host", HOST, "--port", "0", "--flood-rate", "0", "--resume-window", "600"],
    )
    PORT[0] = server.port
    stop = Event()
    try:
        senders = [Sender(r) for r in range(opts.rooms)]
        clients = [SessionClient(i, i % opts.rooms) for i in range(opts.clients - opts.rooms)]
        greenlets = [gevent.spawn(c.start) for c in clients]
        deadline = time.monotonic() + READY_TIMEOUT
        for c in clients:
            if not c.ready.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(
                    "client %d got no session within %s s" % (c.index, READY_TIMEOUT)
                )

        def talk() -> None:
            period = 1.0 / opts.rate
            turn = 0
            next_at = time.monotonic()
            while not stop.is_set():
                senders[turn % len(senders)].say()
                turn += 1
                next_at += period
                gevent.sleep(max(0.0, next_at - time.monotonic()))

        talker = gevent.spawn(talk)
        gevent.sleep(opts.warmup)
        for c in clients:
            c.drop()
        gevent.joinall(greenlets, timeout=10)
        gevent.sleep(opts.away)
        cpu0 = process_cpu_s(server.pid) or 0.0
        t0 = time.monotonic()
        greenlets = [gevent.spawn(c.come_back) for c in clients]
        for c in clients:
            c.resumed.wait(max(0.0, t0 + READY_TIMEOUT - time.monotonic()))
        resumed_in = time.monotonic() - t0
        cpu1 = process_cpu_s(server.pid) or 0.0
        gevent.sleep(opts.settle)
        stop.set()
        talker.join(5)
        gevent.sleep(1.0)  # the last lines in flight
        sent = {s.room: s.seq for s in senders}
    finally:
        stop.set()
        server.stop()
    failed = [c for c in clients if not RESUMED.match(c.outcome or b"")]
    gaps = [c for c in clients if c.outcome.endswith(b" gap")]
    # Every client held its session before the senders began: it owes
    # every line its room's sender said, from the first.
    lost, dup, disorder = accounting(clients, lambda c: set(range(sent[c.room])))
    storm_cpu = cpu1 - cpu0
    return {
        "scenario": "resume_storm",
        "clients": len(clients),
        "rooms": opts.rooms,
        "rate": opts.rate,
        "away_s": opts.away,
        "resumed": len(clients) - len(failed),
        "failed": len(failed),
        "gaps": len(gaps),
        "resumed_in_s": resumed_in,
        "storm_cpu_s": storm_cpu,
        "cpu_us_per_resume": storm_cpu * 1e6 / max(1, len(clients)),
        "lines_sent": sum(sent.values()),
        "lost": lost,
        "duplicated": dup,
        "reordered": disorder,
        "first_failure": (failed[0].outcome.decode("utf-8", "replace") if failed else None),
    }


def accounting(clients: list, owed) -> tuple[int, int, int]:
    """(lost, duplicated, out of order) over clients: each must have read
    the sender numbers owed(client), a set, once each, in order."""
    lost = dup = disorder = 0
    for c in clients:
        seqs = c.seqs
        got = set(seqs)
        lost += len(owed(c) - got)
        dup += len(seqs) - len(got)
        disorder += sum(1 for a, b in zip(seqs, seqs[1:]) if b <= a)
    return lost, dup, disorder


def report(result: dict, as_json: bool) -> int:
    """Print result (a table, or one JSON line); the exit status: 1 if a
    resume failed or a line was lost, doubled or out of order."""
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    bad = result["failed"] or result["lost"] or result["duplicated"] or result["reordered"]
    return 1 if bad else 0


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gchat_bench.resume_storm", description=__doc__)
    ap.add_argument("--clients", type=int, default=2000, help="clients in all, senders included")
    ap.add_argument("--rooms", type=int, default=200, help="rooms, each with one sender")
    ap.add_argument("--rate", type=float, default=200.0, help="lines/s over all the senders")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before the drop")
    ap.add_argument("--away", type=float, default=2.0, help="seconds between drop and resume")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds of live traffic after")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args(argv)
    if opts.clients <= opts.rooms:
        ap.error("--clients must be more than --rooms (each room has a sender)")
    return report(run(opts), opts.json)


if __name__ == "__main__":
    sys.exit(main())
