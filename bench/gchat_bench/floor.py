"""The kernel's floor under a broadcast: what one loopback send() costs.

    python -m gchat_bench.floor --clients 10000 --rounds 5

Any server that fans a line out to N TCP clients makes at least N send()
calls when each client gets one line per wake-up (the fanout scenario at
a low rate).  This measures that cost with nothing else in the way: one
process holds N accepted sockets and sends one line to each of them in a
plain loop, while a second process, the clients' side, sleeps and drains
them between rounds.  No gevent, no gchat, no parsing.

Why it matters: on loopback the sender's send() also does the receiving
side's TCP work, and on this machine (a virtual machine) a line costs
about 8 us when the sender goes from socket to socket (cold per-socket
state), against about 1 us for lines sent in a row to one socket.  N times
that is the least time a broadcast to N clients can take on one core,
whatever the server is written in.  bench/RESULTS.md compares it with
gchat's CPU per delivery.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

LINE = b"~floor " + b"x" * 63 + b"\n"  # 71 bytes, like a fanout chat line


def _raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))


def _drain(socks) -> int:
    """Read whatever is waiting on every socket; return the bytes read."""
    got = 0
    for s in socks:
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                got += len(data)
        except BlockingIOError:
            pass
    return got


def _send_each(socks) -> None:
    for s in socks:
        s.send(LINE)


def measure(clients: int, rounds: int, host: str = "127.0.0.1", threads: int = 1) -> dict:
    """Send one line to each of `clients` sockets, `rounds` times.

    Returns the CPU microseconds per send of each round (the sender's
    process time, which includes the loopback receive work), the wall time
    of a broadcast, the same CPU figure for a repeat send to a socket
    already holding unread data, and how many bytes the clients' side
    received (everything sent, or the figures mean nothing).  threads > 1
    splits each broadcast over that many threads (CPython lets go of the
    GIL in send(), so the kernel's work runs on several cores): what more
    cores would buy a broadcast.
    """
    _raise_nofile(2 * clients + 64)
    listener = socket.socket()
    listener.bind((host, 0))
    listener.listen(min(clients, 4096))
    port = listener.getsockname()[1]
    to_parent, from_child = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the clients' side
        try:
            listener.close()
            socks = [socket.create_connection((host, port)) for _ in range(clients)]
            for s in socks:
                s.setblocking(False)
            os.write(from_child, b"c")
            total = 0
            for _ in range(rounds + 1):
                os.read(go_read, 1)  # sleep until the round is sent
                time.sleep(0.05)
                total += _drain(socks)
                os.write(from_child, b"d")
            os.write(from_child, b"%d\n" % total)
        finally:
            os._exit(0)
    senders = []
    for _ in range(clients):
        s, _ = listener.accept()
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        senders.append(s)
    os.read(to_parent, 1)
    per_send, wall_ms = [], []
    slices = [senders[i::threads] for i in range(threads)]
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        if pool is None:
            _send_each(senders)
        else:
            list(pool.map(_send_each, slices))
        wall_ms.append((time.perf_counter() - w0) * 1000)
        per_send.append((time.process_time() - c0) / clients * 1e6)
        os.write(go_write, b"r")
        os.read(to_parent, 1)
    if pool is not None:
        pool.shutdown()
    # The same sockets, a second line while the first is still unread.
    for s in senders:
        s.send(LINE)
    c0 = time.process_time()
    for s in senders:
        s.send(LINE)
    repeat = (time.process_time() - c0) / clients * 1e6
    os.write(go_write, b"r")
    os.read(to_parent, 1)
    received = int(os.read(to_parent, 64).split()[0])
    os.waitpid(pid, 0)
    for s in senders:
        s.close()
    listener.close()
    return {
        "clients": clients,
        "rounds": rounds,
        "threads": threads,
        "send_us_per_round": [round(x, 2) for x in per_send],
        "send_us_median": round(statistics.median(per_send), 2),
        "repeat_send_us": round(repeat, 2),
        "broadcast_ms_median": round(statistics.median(wall_ms), 1),
        "bytes_sent": len(LINE) * clients * (rounds + 2),
        "bytes_received": received,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gchat_bench.floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--clients",
        type=int,
        default=1000,
        help="sockets to send to (default 1000; at most ~19000: 20000 open files per process)",
    )
    ap.add_argument("--rounds", type=int, default=5, help="broadcasts to time (default 5)")
    ap.add_argument(
        "--threads", type=int, default=1, help="threads that share each broadcast (default 1)"
    )
    a = ap.parse_args(argv)
    if a.clients < 1 or a.rounds < 1 or a.threads < 1:
        ap.error("--clients, --rounds and --threads must be at least 1")
    res = measure(a.clients, a.rounds, threads=a.threads)
    print(json.dumps(res))
    print(
        "one line to each of %d idle sockets: %.2f us of CPU per send (median of %d), "
        "%.1f ms per broadcast with %d thread(s); a second line to a busy socket: %.2f us"
        % (
            a.clients,
            res["send_us_median"],
            a.rounds,
            res["broadcast_ms_median"],
            a.threads,
            res["repeat_send_us"],
        ),
        file=sys.stderr,
    )
    return 0 if res["bytes_received"] == res["bytes_sent"] else 1


if __name__ == "__main__":
    sys.exit(main())
