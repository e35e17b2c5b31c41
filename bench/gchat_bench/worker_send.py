"""The sending clients of one generator worker (worker.py): the pacing of
their lines in a measured phase, and the sync markers.

Senders are greenlets (one per sending client) because that is where
gevent's timers and cooperative blocking sends are exactly what is
needed: an open-loop sender sleeps until its next scheduled send and,
when late, sends everything overdue at once, each line stamped with its
scheduled time.  A closed-loop sender keeps a window of lines in flight
and sends again when the receiver (worker_receive.py) credits it with
its own lines come back.
"""

from __future__ import annotations

import time

import gevent
import gevent.event
import gevent.pool

from gchat_bench.stats import (
    LatencyRecorder,
    latency_bucket,
    make_payload,
    room_sync_payload,
    sync_payload,
)
from gchat_bench.worker_sockets import READY, Client, ClientSockets, send_to

# An open-loop sender that is far behind sends at most this many overdue
# messages in one sendall, so its buffer stays bounded.
MAX_BATCH = 1000
# gevent's libev loop sleeps up to 1 ms past a timer (its epoll backend's
# minimum wait); open-loop senders wake this much early (see open_sender).
EARLY_NS = 1000000


class Senders:
    """The senders of one worker's clients and what they sent this phase:
    sent, sent_by (sender id -> lines), lag (how late the open-loop
    senders were on their schedule)."""

    def __init__(self, cfg: dict, clients: list, sockets: ClientSockets):
        self.clients = clients
        self.sockets = sockets
        self.size = cfg["size"]
        self.senders_total = cfg["senders_total"]
        self.rooms = cfg.get("rooms", 0)
        if self.rooms:
            # A room's sync marker is sent by the worker that holds client
            # r (the room's first member); members[r]: its clients here.
            self.members: dict = {}
            for c in clients:
                self.members.setdefault(c.room, []).append(c)
            mine = {c.idx for c in clients}
            self.lead_rooms = [r for r in range(self.rooms) if r in mine]
        self.reset()

    def reset(self) -> None:
        """A new phase: count from zero."""
        self.lag = LatencyRecorder()
        self.sent = 0
        self.sent_by: dict = {}

    def run_phase(self, msg: dict) -> dict:
        """Send from every ready sender until t0 + duration; the reply of
        cmd_send (see there)."""
        t0, end = msg["t0"], msg["t0"] + int(msg["duration"] * 1e9)
        senders = [c for c in self.clients if c.sender_id >= 0 and c.state == READY]
        group = gevent.pool.Group()
        offered = 0
        if msg["mode"] == "open":
            interval = int(1e9 / msg["rate_per_sender"])
            nsend = self.senders_total
            for c in senders:
                # Stagger the senders over one interval: a smooth total rate.
                offset = interval * c.sender_id // nsend
                offered += max(0, -(-(end - t0 - offset) // interval))
                group.spawn(self.open_sender, c, msg["run"], t0, end, interval, offset)
        else:
            for c in senders:
                group.spawn(self.closed_sender, c, msg["run"], t0, end, msg["window"])
        now = time.monotonic_ns()
        if now < t0:
            gevent.sleep((t0 - now) / 1e9)
        # A sender blocked by a server that stopped reading gets a grace
        # period, then is stopped; what it did not send shows as a shortfall.
        group.join(timeout=msg["duration"] + msg.get("grace", 10.0))
        blocked = len(group)
        group.kill(block=True, timeout=5)
        return {
            "sent": self.sent,
            "sent_by": self.sent_by,
            "offered": offered if msg["mode"] == "open" else None,
            "senders": len(senders),
            "blocked": blocked,
            "lag_hist": self.lag.encoded(),
        }

    def open_sender(
        self, c: Client, run: int, t0: int, end: int, interval: int, offset: int
    ) -> None:
        """Send on schedule t0+offset+k*interval until end; never wait for replies.

        Each line carries its scheduled time, or the time it really left if
        that is earlier: gevent's timers (libev) oversleep by up to 1 ms, so
        the sender wakes up to EARLY_NS before a send is due, and a line sent
        early is stamped with the real time, not a future one.
        """
        sid, size = c.sender_id, self.size
        start = t0 + offset
        k = 0
        lag = self.lag
        while c.state == READY:
            due = start + k * interval
            if due >= end:
                return
            now = time.monotonic_ns()
            if now < due - EARLY_NS:
                gevent.sleep((due - EARLY_NS - now) / 1e9)
                continue
            n = min((min(now + EARLY_NS, end - 1) - start) // interval + 1 - k, MAX_BATCH)
            us = max(0, now - due) // 1000
            lag.buckets[latency_bucket(us)] += 1
            # min: an overdue line keeps its schedule (its lateness is
            # latency), one sent early carries the real time (not a future one).
            buf = b"".join(
                [
                    make_payload(run, sid, j, min(start + j * interval, now), size)
                    for j in range(k, k + n)
                ]
            )
            if not self.send_batch(c, buf, n, k + n):
                return
            k += n

    def send_batch(self, c: Client, buf: bytes, n: int, upto: int) -> bool:
        """Send n lines of a sender, the last numbered upto - 1, and count
        them; False (and the client closed) if the send failed."""
        try:
            send_to(c, buf)
        except OSError as e:
            c.error = "send: %s" % e
            self.sockets.close(c)
            return False
        self.sent += n
        self.sent_by[c.sender_id] = upto
        return True

    def closed_sender(self, c: Client, run: int, t0: int, end: int, window: int) -> None:
        """Keep `window` messages in flight: send one when one of ours comes back.

        It starts at t0, like the open-loop senders: before t0 another
        worker may not have its receivers armed with this phase's run id
        yet, and lines they cannot recognise would count as lost."""
        sid, size = c.sender_id, self.size
        c.event = gevent.event.Event()
        c.credits = window
        k = 0
        now = time.monotonic_ns()
        if now < t0:
            gevent.sleep((t0 - now) / 1e9)
        while c.state == READY:
            now = time.monotonic_ns()
            if now >= end:
                return
            if c.credits == 0:
                c.event.clear()
                c.event.wait((end - now) / 1e9)
                continue
            n, c.credits = c.credits, 0
            buf = b"".join([make_payload(run, sid, k + i, now, size) for i in range(n)])
            if not self.send_batch(c, buf, n, k + n):
                return
            k += n

    def send_sync(self, k: int) -> None:
        """Send sync marker k from one ready client of this worker; with
        rooms, from one member of each room this worker leads (every room
        needs its own marker, sent by one of its members)."""
        if self.rooms:
            for r in self.lead_rooms:
                for c in sorted(self.members[r], key=lambda c: c.idx):
                    if c.state != READY:
                        continue
                    try:
                        send_to(c, room_sync_payload(k, r))
                        break
                    except OSError:
                        continue
            return
        for c in self.clients:
            if c.state != READY:
                continue
            try:
                send_to(c, sync_payload(k))
                break
            except OSError:
                continue
