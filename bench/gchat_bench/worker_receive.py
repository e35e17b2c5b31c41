"""What the clients of one generator worker (worker.py) receive: the
handshake (name, welcome, and with --rooms the /join and its history),
then the accounting of every chat line, the hot path.

A broadcast to N clients is N deliveries, so receiving costs the most.
ClientSockets (worker_sockets.py) hands on_data whole chunks of up to
64 KiB; their marker lines are parsed in C (``_scan.c``, see
stats.scan_run): Python touches a chunk, never a line.  Under load a poll
returns many sockets and each read many lines, so the cost per delivery
falls as the load rises.  Keep it that way: the counters the scan updates
are attributes of the Receiver itself, read and written without any
object in between.
"""

from __future__ import annotations

import re
import time

import gevent

from gchat_bench.stats import (
    ROOM_SYNC_RE,
    SYNC_RE,
    LatencyRecorder,
    SeqTracker,
    census,
    room_name,
    run_prefix,
    scan_rooms,
    scan_run,
)
from gchat_bench.worker_sockets import (
    HIST_IN,
    HIST_MAYBE,
    HIST_NONE,
    JOINING,
    PROMPT,
    READY,
    ROSTER,
    WELCOME,
    Client,
    ClientSockets,
)

# A partial line longer than this is not a chat line we sent; keep only its
# end, so a server that never sends "\n" cannot grow our memory.
MAX_TAIL = 1 << 20
HISTORY_OPEN = b"--- last "
HISTORY_END = b"--- end of history ---"
# Leaked lines kept as examples (client, its room, sender, sender's room).
LEAK_SAMPLES = 5


class Receiver:
    """The receiving side of one worker's clients: each client's handshake,
    then per phase (arm) the accounting of its lines: unique, duplicated,
    reordered, latency, stale, leaked to another room."""

    def __init__(self, cfg: dict, clients: list, sockets: ClientSockets):
        self.clients = clients
        self.sockets = sockets
        self.compat = cfg["mode"] == "compat"
        self.name_prefix = cfg["name_prefix"].encode()
        self.senders_total = cfg["senders_total"]
        # --rooms K: client i is in room i % K (worker.py sets c.room) and
        # sender s in room s % K.  A receiver tracks only its own room's
        # senders, so SeqTracker has one slot per sender of a room (slot
        # s // K).
        self.rooms = cfg.get("rooms", 0)
        self.sessions = cfg.get("sessions", False)  # --sessions: ask for ids once ready
        self.auth_secret = cfg.get("auth_secret")  # --auth-secret: sign in with tokens
        self.track_size = self.senders_total
        if self.rooms:
            self.track_size = max(1, -(-self.senders_total // self.rooms))
            self.scan = self.scan_rooms
        self.leaked = 0  # lines (data or sync) from another room, whole run
        self.leak_samples: list = []
        self.lines = 0  # every "\n" received, chat or not
        self.errors = 0  # lines starting "error:" after the handshake
        self.sync_target = 0  # the sync marker being waited for (cmd_sync sets it)
        self.disconnected = 0  # receivers closed after they were ready (whole run)
        # Phase state (reset by arm).
        self.run_prefix = None  # b"~<run> " of the phase being measured
        self.armed = None  # the run id arm last prepared for
        self.lat = LatencyRecorder()
        self.stale = 0
        self.unique_total = 0  # unique deliveries to receivers still connected
        self.first_rx = 0
        self.last_rx = 0

    def readers(self) -> list:
        return [c for c in self.clients if c.state == READY]

    # ----------------------------------------------------------- receive

    def on_data(self, c: Client, data: bytes) -> None:
        now = time.monotonic_ns()
        if c.tail:
            data = c.tail + data
        end = data.rfind(b"\n") + 1
        if end < len(data):
            tail = data[end:]
            c.tail = tail if len(tail) <= MAX_TAIL else tail[-4096:]
        else:
            c.tail = b""
        if c.state == READY and not c.hist:
            # The common case: one C pass counts everything scan needs.
            counts = census(data, 0, end)
            self.lines += counts[0]
            if not c.slow and end:
                self.scan(c, data, 0, end, now, counts)
            return
        # (The tail held no "\n", so data[:end] has every new one.)
        self.lines += data.count(b"\n", 0, end)
        start = 0 if c.state == READY else self.handshake(c, data, end, now)
        if c.state != READY or c.slow:
            return
        if c.hist:
            start = self.skip_history(c, data, start, end)
        if end > start:
            self.scan(c, data, start, end, now, census(data, start, end))

    def on_close(self, c: Client) -> None:
        """c is being closed: a ready receiver's deliveries stop counting
        (drain waits for the receivers left)."""
        if c.state == READY and not c.slow:
            self.disconnected += 1
            if c.tracker is not None:
                self.unique_total -= c.tracker.unique

    # --------------------------------------------------------- handshake

    def handshake(self, c: Client, data: bytes, end: int, now: int) -> int:
        """Advance the name/welcome exchange; return where chat lines start."""
        pos = 0
        while pos < end:
            nl = data.index(b"\n", pos)
            line = data[pos:nl].rstrip(b"\r")
            pos = nl + 1
            if c.state == PROMPT:
                if not line.startswith(b"error:") and (b"name" in line.lower() or b"/auth" in line):
                    self.send_name(c)
            elif c.state == WELCOME:
                if line.startswith(b"You are "):
                    if self.rooms:
                        # Named, in the lobby: move to the bench room.
                        c.state = JOINING
                        self.sockets.send_line(
                            c, b"/join %s\n" % room_name(self.name_prefix, c.room)
                        )
                        continue
                    self.on_ready(c, now)
                    return pos
                if line.startswith(b"error:") and not self.compat:
                    # Name refused (taken or invalid): the prompt follows.
                    c.attempt += 1
                    c.state = PROMPT
            elif c.state == JOINING:
                # Lobby lines (its roster, history, arrivals) until the join
                # is confirmed; an error here is the /join refused.
                if line.startswith(b"You are now in #"):
                    c.state = ROSTER
                elif line.startswith(b"error:"):
                    c.error = "join refused: %s" % line[:200].decode("utf-8", "replace")
                    self.sockets.close(c)
                    return end
            elif c.state == ROSTER:
                # The room's roster line; a history block may follow.
                self.on_ready(c, now)
                c.hist = HIST_MAYBE
                return pos
        if c.state == PROMPT and c.tail and b"name" in c.tail.lower():
            # A prompt that does not end in "\n" ("Your name? ").
            c.tail = b""
            self.send_name(c)
        return pos

    def skip_history(self, c: Client, data: bytes, pos: int, end: int) -> int:
        """After a /join's roster: step over a history block
        (``--- last N lines of #ROOM ---`` ... ``--- end of history ---``)
        if one comes; return where the live lines start in data[pos:end]."""
        while pos < end and c.hist:
            nl = data.index(b"\n", pos)
            line = data[pos:nl].rstrip(b"\r")
            if c.hist == HIST_MAYBE:
                if not line.startswith(HISTORY_OPEN):
                    c.hist = HIST_NONE  # no history: this is a live line
                    return pos
                c.hist = HIST_IN
            elif line == HISTORY_END:
                c.hist = HIST_NONE
            pos = nl + 1
        return pos

    def send_name(self, c: Client) -> None:
        c.name = b"%s%d" % (self.name_prefix, c.idx)
        if c.attempt:
            c.name += b"_%d" % c.attempt
        c.state = WELCOME
        if self.auth_secret is not None:
            self.sockets.send_line(c, b"/auth %s\n" % self._token(c.name))
        else:
            self.sockets.send_line(c, c.name + b"\n")

    def _token(self, name: bytes) -> bytes:
        """A sign-in token for name (--auth-secret), made as the
        application's backend would: HS256, valid a day."""
        import jwt  # the server's auth extra; only --auth-secret needs it

        claims = {"sub": name.decode(), "exp": int(time.time()) + 86400, "rooms": ["*"]}
        return jwt.encode(claims, self.auth_secret, "HS256").encode()

    def on_ready(self, c: Client, now: int) -> None:
        c.state = READY
        c.t_ready = now
        if c.slow:
            self.sockets.stop_reading(c)
        else:
            c.tracker = SeqTracker(self.track_size)
            if self.sessions:
                # Its reply ("session TOKEN") is no marker line; the marker
                # lines after it carry "@ID " before them, which the scan's
                # search for the run's marker passes over.
                self.sockets.send_line(c, b"/session\n")
        c.ready.set()

    # ------------------------------------------------------------ account

    def scan(self, c: Client, buf: bytes, start: int, end: int, now: int, counts: tuple) -> None:
        """Account for the marker lines in buf[start:end] (whole lines);
        counts is census(buf, start, end)."""
        _, markers, sync_markers, errors = counts
        self.errors += errors
        if not markers:
            return
        if sync_markers:
            syncs = SYNC_RE.findall(buf, start, end)
            markers -= len(syncs)
            for k in syncs:
                k = int(k)
                if k > c.sync:
                    c.sync = k
                    c.t_sync = now
        prefix = self.run_prefix
        if prefix is None:
            self.stale += markers
            return
        self._scan_data(c, buf, start, end, now, markers, prefix, by_room=False)

    def _scan_data(
        self,
        c: Client,
        buf: bytes,
        start: int,
        end: int,
        now: int,
        markers: int,
        prefix: bytes,
        by_room: bool,
    ) -> int:
        """The data lines of this run in buf[start:end], through the C scan
        (scan_run; scan_rooms with --rooms), with the tracker's slow path for
        lines out of order, the counters and the senders' credits.  markers:
        the marker lines not yet accounted for.  Returns the lines of
        another room (with --rooms)."""
        tr = c.tracker
        nxt, buckets, sid = tr.nxt, self.lat.buckets, c.sender_id
        scan_fn = scan_rooms if by_room else scan_run
        extra = (self.rooms, c.room, self.senders_total) if by_room else ()
        received = own = leaked = 0
        pos = start
        while True:
            result = scan_fn(buf, pos, end, prefix, nxt, buckets, now, sid, *extra)
            matched, got, in_order, mine, stale, resume, s, q = result[:8]
            if by_room:
                leaked += result[8]
            # Markers that are not this phase's data lines: another run's.
            markers -= matched - stale
            tr.unique += in_order
            self.unique_total += in_order
            received += got
            own += mine
            if resume < 0:
                break
            # Out of order (rare): the tracker's slow path, then scan on.
            before = tr.unique
            tr.out_of_order(s, q)
            self.unique_total += tr.unique - before
            pos = resume
        self.stale += markers
        tr.received += received
        if received:
            if not self.first_rx:
                self.first_rx = now
            self.last_rx = now
        if own and c.event is not None:
            # A closed-loop sender (worker_send.py) waits for its own lines.
            c.credits += own
            c.event.set()
        return leaked

    def scan_rooms(
        self, c: Client, buf: bytes, start: int, end: int, now: int, counts: tuple
    ) -> None:
        """scan() for --rooms: sync markers and data lines of the client's
        own room only; those of another room count as leaked."""
        _, markers, sync_markers, errors = counts
        self.errors += errors
        if not markers:
            return
        if sync_markers:
            markers -= len(SYNC_RE.findall(buf, start, end))
            for k, r in ROOM_SYNC_RE.findall(buf, start, end):
                if int(r) != c.room:
                    self.leaked += 1
                    self.note_leak(c, -1, int(r))
                    continue
                k = int(k)
                if k > c.sync:
                    c.sync = k
                    c.t_sync = now
        prefix = self.run_prefix
        if prefix is None:
            self.stale += markers
            return
        leaked = self._scan_data(c, buf, start, end, now, markers, prefix, by_room=True)
        if leaked:
            self.leaked += leaked
            if len(self.leak_samples) < LEAK_SAMPLES:
                rooms, room = self.rooms, c.room
                for m in re.finditer(re.escape(prefix) + rb"(\d+) ", buf[start:end]):
                    s = int(m.group(1))
                    if s % rooms != room:
                        self.note_leak(c, s, s % rooms)

    def note_leak(self, c: Client, sender: int, sender_room: int) -> None:
        if len(self.leak_samples) < LEAK_SAMPLES:
            self.leak_samples.append(
                {"client": c.idx, "room": c.room, "sender": sender, "sender_room": sender_room}
            )

    # ------------------------------------------------------------- phases

    def arm(self, run: int) -> None:
        """Get ready for phase run: recognise its lines, count from zero."""
        self.run_prefix = run_prefix(run)
        self.lat = LatencyRecorder()
        self.stale = self.first_rx = self.last_rx = 0
        for c in self.clients:
            if c.tracker is not None:
                c.tracker = SeqTracker(self.track_size)
        self.unique_total = 0
        self.armed = run

    def wait_sync(self, k: int, deadline: float) -> dict:
        """Wait until every reader has seen sync marker k, or deadline
        (time.monotonic()); the reply of cmd_sync."""
        while True:
            waiting = [c for c in self.readers() if c.sync < k]
            if not waiting or time.monotonic() > deadline:
                break
            gevent.sleep(0.01)
        done = [c.t_sync for c in self.readers() if c.sync >= k]
        reply = {
            "missing": len(waiting),
            "seen": len(done),
            "t_done": max(done, default=0),
            "lines": self.lines,
        }
        if self.rooms:
            reply["leaked"] = self.leaked
            reply["leak_samples"] = self.leak_samples
        return reply

    def drain(self, msg: dict) -> dict:
        """Wait for the messages of the phase to arrive, then report; the
        reply of cmd_drain (see there)."""
        total = msg["total_sent"]
        quiet_ns = int(msg.get("quiet", 5.0) * 1e9)
        deadline = time.monotonic_ns() + int(msg.get("timeout", 30.0) * 1e9)
        last, t_progress = -1, time.monotonic_ns()
        complete = False
        room_sent = None
        if self.rooms:
            # Each reader is owed what the senders of its own room sent.
            room_sent = [0] * self.rooms
            for sid, n in (msg.get("sent_by") or {}).items():
                room_sent[int(sid) % self.rooms] += n
        while True:
            readers = self.readers()
            owed = (
                total * len(readers)
                if room_sent is None
                else sum(room_sent[c.room] for c in readers)
            )
            if self.unique_total >= owed:
                complete = True
                break
            now = time.monotonic_ns()
            if self.unique_total != last:
                last, t_progress = self.unique_total, now
            elif now - t_progress > quiet_ns or now > deadline:
                break
            gevent.sleep(0.01)
        readers = self.readers()
        trs = [c.tracker for c in readers]
        self.run_prefix = None  # later lines of this phase count as stale
        samples = []
        if not complete:
            samples = loss_samples(readers, msg.get("sent_by") or {}, rooms=self.rooms)
        extra = {}
        if self.rooms:
            by_room: dict = {}
            for c in readers:
                by_room[c.room] = by_room.get(c.room, 0) + 1
            extra = {
                "receivers_by_room": by_room,
                "leaked": self.leaked,
                "leak_samples": self.leak_samples,
            }
        return {
            **extra,
            "receivers": len(readers),
            "unique": sum(t.unique for t in trs),
            "received": sum(t.received for t in trs),
            "duplicated": sum(t.duplicated for t in trs),
            "reordered": sum(t.reordered for t in trs),
            "disconnected": self.disconnected,
            "stale": self.stale,
            "errors": self.errors,
            "complete": complete,
            "first_rx": self.first_rx,
            "last_rx": self.last_rx,
            "hist": self.lat.encoded(),
            "lines": self.lines,
            "loss_samples": samples,
        }


def loss_samples(readers: list, sent_by: dict, limit: int = 5, rooms: int = 0) -> list:
    """A few (client, sender, first missing seqs) to say what was lost;
    with rooms, only of the senders of each client's own room."""
    out = []
    for c in readers:
        tr = c.tracker
        for s, total in sent_by.items():
            s = int(s)
            slot = s
            if rooms:
                if s % rooms != c.room:
                    continue  # not owed to this client
                slot = s // rooms
            miss = sorted(tr.missing.get(slot, ()))[:3]
            if len(miss) < 3 and tr.nxt[slot] < total:
                miss += list(range(tr.nxt[slot], min(total, tr.nxt[slot] + 3 - len(miss))))
            if miss:
                out.append(
                    {
                        "client": c.idx,
                        "sender": s,
                        "missing": miss,
                        "sent": total,
                        "next": tr.nxt[slot],
                    }
                )
                if len(out) >= limit:
                    return out
    return out
