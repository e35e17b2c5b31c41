"""The open-loop sender's time stamps, on a fake clock (no timing).

A line is stamped with its scheduled time, or with the time it really left
if that is earlier: a sender that wakes early (it wakes up to EARLY_NS
before a send is due, because libev oversleeps) must not stamp a time in
the future, and a sender that is late must keep the scheduled time, so
that its lateness counts as latency (no coordinated omission).
"""

import socket
import types

import gchat_bench.worker_send as worker_send
from gchat_bench.stats import DATA_RE
from gchat_bench.worker import Worker
from gchat_bench.worker_send import EARLY_NS

RUN = 424242
MS = 1_000_000


def stamps(monkeypatch, clock_start, t0, interval, end, oversleep_ns):
    """Run one open-loop sender to its end on a fake clock whose sleeps
    last oversleep_ns longer than asked; return the (seq, stamp) it sent."""
    cfg = {
        "host": "127.0.0.1",
        "port": 9,
        "mode": "name",
        "size": 64,
        "senders_total": 1,
        "sender_of": {},
        "name_prefix": "t_",
        "clients": [0],
        "slow": [],
    }
    w = Worker(cfg)
    c = w.clients[0]
    a, peer = socket.socketpair()
    c.sock = a
    w.receiver.on_ready(c, 0)
    c.sender_id = 0
    clock = [clock_start]

    def sleep(seconds):
        clock[0] += int(seconds * 1e9) + oversleep_ns

    monkeypatch.setattr(worker_send, "time", types.SimpleNamespace(monotonic_ns=lambda: clock[0]))
    monkeypatch.setattr(worker_send, "gevent", types.SimpleNamespace(sleep=sleep))
    w.senders.open_sender(c, RUN, t0, end, interval, 0)
    a.close()
    data = b""
    while True:
        chunk = peer.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return [(int(q), int(t)) for _, _, q, t in DATA_RE.findall(data)]


def test_a_sender_that_wakes_early_stamps_the_real_time(monkeypatch):
    """Sleeps exact: the sender wakes EARLY_NS before each due time and
    sends then; each stamp is that real time, not the future due time."""
    t0, interval = 1000 * MS, 10 * MS
    got = stamps(
        monkeypatch,
        clock_start=t0 - 50 * MS,
        t0=t0,
        interval=interval,
        end=t0 + 3 * interval,
        oversleep_ns=0,
    )
    assert [q for q, _ in got] == [0, 1, 2]
    for q, t in got:
        assert t == t0 + q * interval - EARLY_NS


def test_a_late_sender_keeps_the_scheduled_time(monkeypatch):
    """Started 25 ms after t0: the overdue lines go out at once, each
    stamped with its schedule, so the 25 ms count as latency."""
    t0, interval = 1000 * MS, 10 * MS
    got = stamps(
        monkeypatch,
        clock_start=t0 + 25 * MS,
        t0=t0,
        interval=interval,
        end=t0 + 3 * interval,
        oversleep_ns=0,
    )
    assert got == [(0, t0), (1, t0 + interval), (2, t0 + 2 * interval)]
