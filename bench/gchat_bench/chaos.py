"""Soak and fuzz: nothing lost while clients churn or send garbage.

soak   N clients; `keepers` of them stay for the whole run, the rest churn
       (connect, take a name, listen for a random while, leave by close,
       /quit, reset or half-close, and come back under a new name) while
       `senders` send at a fixed total rate.  Every keeper must receive
       every message of every sender, once, in order; every churner's
       session must see an unbroken, in-order run of each sender's lines.
fuzz   the same, but the churners are fuzzers: each writes random bytes
       (newlines, NULs, ESC sequences, invalid UTF-8, over-long lines,
       commands, HTTP request lines, partial lines) and then goes.  The
       server must survive, and every keeper must still get every message.

Both run one gevent process of clients against a gchat started on a free
port (or --target), for a bounded time, and stop by themselves.  The
checks use the sequence numbers of stats.SeqTracker; the figures are a
JSON object and a short table, as the other scenarios print.

    gchat-bench soak --clients 2000 --duration 120
    gchat-bench fuzz --clients 500 --duration 30 --spawn='--flood-rate 10'
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import socket
import struct
import sys
import time

import gevent
from gevent import socket as gsocket  # cooperative sockets, without monkey-patching
from gevent.pool import Pool

from gchat_bench.servers import Server, check_loopback, gchat_command, spawn_argv
from gchat_bench.stats import SeqTracker, make_payload

# One chat line as a receiver sees it: "NAME: ~run sender seq send_ns x...".
RECV_SIZE = 1 << 16
CONNECT_CONCURRENCY = 200
# How long keepers may take to receive the last lines after sending stops.
DRAIN_TIMEOUT = 60.0
# Garbage a fuzzer may write in one go.
FUZZ_MAX_BYTES = 20_000


class Listener:
    """A client that reads everything and tracks the senders' sequences."""

    def __init__(self, pattern, senders: int):
        self.pattern = pattern
        self.tracker = SeqTracker(senders)
        self.tail = b""
        self.done = False  # saw the end marker

    def feed(self, data: bytes, end_marker: bytes) -> None:
        # Only whole lines are parsed; the last partial line waits.
        data = self.tail + data
        cut = data.rfind(b"\n") + 1
        self.tail = data[cut:]
        whole = data[:cut]
        see = self.tracker.see
        for sender, seq, _ in self.pattern.findall(whole):
            see(int(sender), int(seq))
        if end_marker in whole:
            self.done = True


def read_greeting(sock, name: str, compat: bool) -> bytes:
    """Answer the name prompt; return what came after the greeting."""
    buf = b""
    if not compat:
        sock.sendall(name.encode() + b"\n")
    deadline = time.monotonic() + 60
    want = b"\nYou are " if not compat else b"You are "
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("no greeting for " + name)
        chunk = sock.recv(RECV_SIZE)
        if not chunk:
            raise ConnectionError("closed before the greeting: %r" % buf[-200:])
        buf += chunk
        at = buf.find(want)
        if at >= 0:
            end = buf.find(b"\n", at + len(want))
            if end >= 0:
                return buf[end + 1 :]


def connect(host: str, port: int):
    sock = gsocket.create_connection((host, port), timeout=60)
    sock.settimeout(None)
    return sock


def fuzz_bytes(rng: random.Random) -> bytes:
    """Random hostile input: a mix of the things a server must survive."""
    pieces = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.randrange(9)
        if kind == 0:
            pieces.append(os.urandom(rng.randint(1, 600)))
        elif kind == 1:
            pieces.append(b"\x1b[2J\x1b]0;owned\x07\x00\x7f\xc2\x9b" * rng.randint(1, 20))
        elif kind == 2:
            pieces.append(b"\xff\xfe\xc3(\xed\xa0\x80" * rng.randint(1, 30) + b"\n")
        elif kind == 3:
            pieces.append(b"z" * rng.randint(4000, FUZZ_MAX_BYTES))  # over --max-line
        elif kind == 4:
            pieces.append(
                rng.choice(
                    [
                        b"/who\n",
                        b"/nick \xff\n",
                        b"/msg k0 hi\n",
                        b"/me \x00\n",
                        b"/stats\n",
                        b"/help\n",
                        b"//x\n",
                        b"/\n",
                        b"/nick\n",
                    ]
                )
            )
        elif kind == 5:
            pieces.append(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        elif kind == 6:
            pieces.append(b"\r\n" * rng.randint(1, 50))
        elif kind == 7:
            pieces.append(("名前%d\n" % rng.randrange(1000)).encode())
        else:
            pieces.append(bytes(rng.randrange(256) for _ in range(rng.randint(1, 100))))
    return b"".join(pieces)


class Chaos:
    def __init__(self, a: argparse.Namespace, host: str, port: int):
        self.a = a
        self.host, self.port = host, port
        self.rng = random.Random(a.seed)
        self.run = self.rng.randrange(1, 1 << 30)
        self.pattern = re.compile(rb"~%d (\d+) (\d+) (\d+) " % self.run)
        self.end_marker = b"~END%d " % self.run
        self.keepers: list = []
        self.sent = [0] * a.senders
        self.stopping = False
        self.sessions = 0
        self.session_breaks = 0  # churn sessions whose lines were not an unbroken run
        self.churn_errors = 0  # churn connects that failed (counted, not fatal)
        self.fuzz_bytes = 0

    # keepers ---------------------------------------------------------------

    def keeper(self, i: int) -> None:
        sock = connect(self.host, self.port)
        listener = Listener(self.pattern, self.a.senders)
        rest = read_greeting(sock, "k%d" % i, self.a.compat)
        self.keepers.append((sock, listener))
        listener.feed(rest, self.end_marker)

    def listen(self, sock, listener: Listener) -> None:
        while not listener.done:
            data = sock.recv(RECV_SIZE)
            if not data:
                raise ConnectionError("a keeper was disconnected")
            listener.feed(data, self.end_marker)

    # senders ---------------------------------------------------------------

    def sender(self, s: int, sock) -> None:
        interval = self.a.senders / self.a.rate
        start = time.monotonic()
        seq = 0
        while not self.stopping:
            due = start + seq * interval
            pause = due - time.monotonic()
            if pause > 0:
                gevent.sleep(pause)
            sock.sendall(make_payload(self.run, s, seq, time.monotonic_ns(), self.a.size))
            seq += 1
            self.sent[s] = seq

    def drain_own(self, sock) -> None:
        """Senders read (and discard) what they receive, so they never block."""
        while True:
            if not sock.recv(RECV_SIZE):
                return

    # churners and fuzzers --------------------------------------------------

    def churner(self, slot: int) -> None:
        rng = random.Random(self.rng.random())
        generation = 0
        while not self.stopping:
            generation += 1
            try:
                self.session(slot, generation, rng)
            except (OSError, TimeoutError, ConnectionError):
                self.churn_errors += 1
                gevent.sleep(0.1)

    def session(self, slot: int, generation: int, rng: random.Random) -> None:
        sock = connect(self.host, self.port)
        try:
            rest = read_greeting(sock, "c%d_%d" % (slot, generation), self.a.compat)
            self.sessions += 1
            listener = Listener(self.pattern, self.a.senders)
            listener.feed(rest, self.end_marker)
            stay = time.monotonic() + rng.uniform(0.2, self.a.max_stay)
            while time.monotonic() < stay and not self.stopping:
                with gevent.Timeout(max(0.01, stay - time.monotonic()), False):
                    data = sock.recv(RECV_SIZE)
                    if not data:
                        break
                    listener.feed(data, self.end_marker)
            t = listener.tracker
            # A churner joins and leaves mid-stream: it may miss the start and
            # the end, but what it saw must be an unbroken run per sender.
            if t.duplicated or t.reordered or any(_inner_gaps(t).values()):
                self.session_breaks += 1
            self.leave(sock, rng)
        finally:
            sock.close()

    def fuzzer(self, slot: int) -> None:
        rng = random.Random(self.rng.random())
        while not self.stopping:
            try:
                sock = connect(self.host, self.port)
            except OSError:
                self.churn_errors += 1
                gevent.sleep(0.1)
                continue
            try:
                for _ in range(rng.randint(1, 5)):
                    data = fuzz_bytes(rng)
                    sock.sendall(data)
                    self.fuzz_bytes += len(data)
                    with gevent.Timeout(rng.uniform(0.01, 0.3), False):
                        while sock.recv(RECV_SIZE):
                            pass
                self.sessions += 1
                self.leave(sock, rng)
            except OSError:
                pass  # the server may close a fuzzer (HTTP line, /quit in the noise)
            finally:
                sock.close()

    @staticmethod
    def leave(sock, rng: random.Random) -> None:
        how = rng.randrange(4)
        if how == 0:
            sock.sendall(b"/quit churn\n")
        elif how == 1:  # reset: RST at once, perhaps in the middle of a send
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif how == 2:  # half-close: the client has left
            sock.shutdown(socket.SHUT_WR)

    # the run ---------------------------------------------------------------

    def run_all(self) -> dict:
        a = self.a
        pool = Pool(CONNECT_CONCURRENCY)
        for i in range(a.keepers):
            pool.spawn(self.keeper, i)
        pool.join(raise_error=True)
        sender_socks = []
        for s in range(a.senders):
            sock = connect(self.host, self.port)
            read_greeting(sock, "s%d" % s, a.compat)
            sender_socks.append(sock)
        listeners = [gevent.spawn(self.listen, sock, lst) for sock, lst in self.keepers]
        drains = [gevent.spawn(self.drain_own, sock) for sock in sender_socks]
        role = self.fuzzer if a.scenario == "fuzz" else self.churner
        others = [gevent.spawn(role, slot) for slot in range(a.clients - a.keepers - a.senders)]
        senders = [gevent.spawn(self.sender, s, sock) for s, sock in enumerate(sender_socks)]
        started = time.monotonic()
        gevent.sleep(a.duration)
        self.stopping = True
        gevent.joinall(senders, raise_error=True)
        gevent.joinall(others, timeout=a.max_stay + 10)
        sender_socks[0].sendall(self.end_marker + b"\n")
        finished = gevent.joinall(listeners, timeout=DRAIN_TIMEOUT, raise_error=True)
        elapsed = time.monotonic() - started
        for g in drains:
            g.kill()
        total = sum(self.sent)
        lost = dup = reord = 0
        for _, listener in self.keepers:
            t = listener.tracker
            lost += t.lost(total)
            dup += t.duplicated
            reord += t.reordered
        return {
            "scenario": a.scenario,
            "clients": a.clients,
            "keepers": a.keepers,
            "senders": a.senders,
            "rate": a.rate,
            "duration_s": round(elapsed, 1),
            "sent": total,
            "expected": total * a.keepers,
            "received": sum(lst.tracker.received for _, lst in self.keepers),
            "lost": lost,
            "duplicated": dup,
            "reordered": reord,
            "keepers_drained": len(finished),
            "sessions": self.sessions,
            "session_breaks": self.session_breaks,
            "connect_errors": self.churn_errors,
            "fuzz_bytes": self.fuzz_bytes,
        }


def _inner_gaps(tracker: SeqTracker) -> dict:
    """Numbers missing after the first line seen of each sender: a churner
    joins mid-stream, so it may miss a sender's beginning (the run 0..k-1
    that its first line skipped), never anything after that."""
    return {
        sender: {n for n in missing if n >= _prefix_end(missing)}
        for sender, missing in tracker.missing.items()
    }


def _prefix_end(missing: set) -> int:
    """k such that 0..k-1 are all in missing and k is not."""
    k = 0
    while k in missing:
        k += 1
    return k


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gchat-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=["soak", "fuzz"])
    p.add_argument("--clients", type=int, default=2000, help="all clients (default %(default)s)")
    p.add_argument(
        "--keepers",
        type=int,
        default=None,
        help="clients that stay and are checked (default: 3/4 of --clients)",
    )
    p.add_argument("--senders", type=int, default=5, help="(default %(default)s)")
    p.add_argument(
        "--rate", type=float, default=50.0, help="messages/s of all senders (default %(default)s)"
    )
    p.add_argument("--size", type=int, default=64, help="bytes per line (default %(default)s)")
    p.add_argument(
        "--duration", type=float, default=120.0, help="seconds of sending (default %(default)s)"
    )
    p.add_argument(
        "--max-stay",
        type=float,
        default=2.0,
        help="longest a churner stays connected, s (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--compat", action="store_true")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target", metavar="HOST:PORT")
    target.add_argument("--spawn", metavar="OPTIONS", default="")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.keepers is None:
        a.keepers = a.clients * 3 // 4
    if a.keepers + a.senders >= a.clients:
        p.error("--keepers plus --senders must leave room for churners")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # one descriptor per client, here and in a spawned server
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = None
    if a.target:
        host, _, port = a.target.rpartition(":")
        check_loopback(host)
        host, port = host, int(port)
    else:
        server = Server.spawn("gchat", spawn_argv(gchat_command(), a.spawn, a.compat))
        host, port = server.host, server.port
    try:
        result = Chaos(a, host, port).run_all()
        if server is not None:
            server.check_alive()
            result["server_alive"] = True
    finally:
        if server is not None:
            server.stop()
    if server is not None:
        result["server_exit"] = server.exit_code
    if a.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print("%-16s %s" % (key, value))
    ok = result["lost"] == 0 and result["duplicated"] == 0 and result["reordered"] == 0
    return 0 if ok and result["keepers_drained"] == a.keepers else 1


if __name__ == "__main__":
    sys.exit(main())
