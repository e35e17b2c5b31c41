"""One load-generator process: a share of the simulated clients on its own
gevent loop.  The parent (runner.py) starts several of these with
``python -m gchat_bench.worker`` and drives them over stdin/stdout with one
JSON object per line.

Why this shape:

- Several processes, because one CPython process cannot use more than one
  core, and the generator must not be what limits the figures.  The parent
  measures each worker's CPU and reports when one was near a full core.
- Receiving is the hot path (a broadcast to N clients is N deliveries).
  Instead of one greenlet per socket, which would cost a greenlet switch
  and a gevent watcher per delivery, every client socket sits in one
  ``select.epoll`` of this worker; one gevent io watcher on that epoll fd
  calls back, takes every ready socket in one ``poll(0)`` and reads it in
  64 KiB chunks.  The chunk's marker lines are parsed in C (``_scan.c``,
  see stats.scan_run); Python only touches a chunk, never a line.  Under
  load a poll returns many sockets and each read many lines, so the cost
  per delivery falls as the load rises.
- Senders are greenlets (one per sending client) because that is where
  gevent's timers and cooperative blocking sends are exactly what is
  needed: an open-loop sender sleeps until its next scheduled send and,
  when late, sends everything overdue at once, each line stamped with its
  scheduled time.

Commands (parent -> worker) and replies (worker -> parent) are documented on
each ``cmd_*`` method.  While a command runs the worker also emits
``{"ev": "progress", ...}`` lines twice a second.
"""
from __future__ import annotations

import errno
import json
import os
import re
import resource
import select
import socket
import sys
import time
import traceback

import gevent
import gevent.event
import gevent.pool
from gevent.socket import wait_read, wait_write

from gchat_bench.cluster import node_of
from gchat_bench.transports import (Closed, TransportError, client_context, make_transport,
                                    send_all)
from gchat_bench.stats import (ROOM_SYNC_RE, SYNC_RE, LatencyRecorder, SeqTracker, census,
                               latency_bucket, make_payload, room_name, room_sync_payload,
                               run_prefix, scan_rooms, scan_run, sync_payload)

# Read size per ready socket.  Big reads amortise the syscall over many
# lines, but not above 64 KiB: CPython allocates the whole size for every
# recv() and glibc serves 128 KiB and more with mmap/munmap, which measured
# 19 us per recv(256 KiB) against 2.4 us per recv(64 KiB) here.
RECV_SIZE = 64 * 1024
# Most ready sockets taken from epoll per wake-up before gevent runs the
# senders again: bounds how long a burst of reads can delay a send.  At
# 200k deliveries/s, 1024 gave a median send lag of 4.2 ms, 128 gave 1.3 ms
# for the same throughput.
POLL_BATCH = 128
# A partial line longer than this is not a chat line we sent; keep only its
# end, so a server that never sends "\n" cannot grow our memory.
MAX_TAIL = 1 << 20
# An open-loop sender that is far behind sends at most this many overdue
# messages in one sendall, so its buffer stays bounded.
MAX_BATCH = 1000
# gevent's libev loop sleeps up to 1 ms past a timer (its epoll backend's
# minimum wait); open-loop senders wake this much early (see open_sender).
EARLY_NS = 1000000
# Linux: let connect() pick the source port per 4-tuple even after bind()
# to a source address (otherwise bind reserves a port for every address and
# the ephemeral range runs out twice as fast).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
# Receive buffer of a client that never reads: small, so the server's
# send queue (what the slow scenario tests) fills instead of our kernel.
SLOW_RCVBUF = 4096

PROMPT, WELCOME, READY, CLOSED, JOINING, ROSTER = range(6)
# With --rooms, after the roster line of a /join: the next line may open a
# history block (HIST_MAYBE), or the client is inside one (HIST_IN).
HIST_NONE, HIST_MAYBE, HIST_IN = range(3)
HISTORY_OPEN = b"--- last "
HISTORY_END = b"--- end of history ---"
# Leaked lines kept as examples (client, its room, sender, sender's room).
LEAK_SAMPLES = 5


class Client:
    """One simulated client; its state is touched by this worker only."""

    __slots__ = ("idx", "sock", "fd", "state", "name", "attempt", "tail",
                 "tracker", "sync", "t_sync", "sender_id", "credits", "event",
                 "ready", "t_start", "t_ready", "slow", "error", "room", "hist", "tx")

    def __init__(self, idx: int, slow: bool):
        self.idx = idx
        self.sock = None
        self.fd = -1
        self.state = PROMPT
        self.name = b""
        self.attempt = 0
        self.tail = b""
        self.tracker = None
        self.sync = 0
        self.t_sync = 0
        self.sender_id = -1
        self.credits = 0
        self.event = None
        self.ready = gevent.event.Event()
        self.t_start = 0
        self.t_ready = 0
        self.slow = slow
        self.error = ""
        self.room = -1          # --rooms: index of the client's room
        self.hist = HIST_NONE   # --rooms: where it is in a history block
        self.tx = None          # --ws/--tls: transports.WsTransport/TlsTransport


def emit(obj: dict) -> None:
    """Write one JSON line to the parent (blocking: the parent always reads)."""
    data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    while data:
        n = os.write(1, data)
        data = data[n:]


class Worker:
    """The clients of one process, their reader loop and their senders."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.addr = (cfg["host"], cfg["port"])
        # A cluster: every node's address; client i connects to
        # nodes[node_of(i, len(nodes), rooms)] (see addr_of).
        self.nodes = [tuple(a) for a in cfg.get("nodes") or [self.addr]]
        # "tcp", "ws" (cfg["port"] is then gchat's --http port) or "tls".
        self.transport = cfg.get("transport", "tcp")
        self.tls_ctx = client_context() if self.transport == "tls" else None
        self.compat = cfg["mode"] == "compat"
        self.size = cfg["size"]
        self.senders_total = cfg["senders_total"]
        self.sender_of = {int(k): v for k, v in cfg["sender_of"].items()}
        self.source_addrs = cfg.get("source_addrs") or []
        self.name_prefix = cfg["name_prefix"].encode()
        self.clients = [Client(i, False) for i in cfg["clients"]]
        # --rooms K: client i joins room i % K after naming; sender s is in
        # room s % K.  A receiver tracks only its own room's senders, so
        # SeqTracker has one slot per sender of a room (slot s // K).
        self.rooms = cfg.get("rooms", 0)
        self.track_size = self.senders_total
        self.leaked = 0          # lines (data or sync) from another room, whole run
        self.leak_samples: list = []
        if self.rooms:
            self.track_size = max(1, -(-self.senders_total // self.rooms))
            for c in self.clients:
                c.room = c.idx % self.rooms
            mine = {c.idx: c for c in self.clients}
            # A room's sync marker is sent by the worker that holds client
            # r (the room's first member); members[r]: its clients here.
            self.members: dict = {}
            for c in self.clients:
                self.members.setdefault(c.room, []).append(c)
            self.lead_rooms = [r for r in range(self.rooms) if r in mine]
            self.scan = self.scan_rooms
        self.slow_clients = [Client(i, True) for i in cfg.get("slow", [])]
        self.by_fd: dict = {}
        self.ep = select.epoll()
        self.lines = 0          # every "\n" received, chat or not
        self.errors = 0         # lines starting "error:" after the handshake
        self.busy = False       # a command is running: emit progress
        self.sync_target = 0    # the sync marker cmd_sync waits for
        # Phase state (reset by cmd_arm).
        self.run_prefix = None  # b"~<run> " of the phase being measured
        self.armed = None       # the run id cmd_arm last prepared for
        self.lat = LatencyRecorder()
        self.lag = LatencyRecorder()
        self.sent = 0
        self.sent_by: dict = {}  # sender id -> messages it sent this phase
        self.stale = 0
        self.unique_total = 0   # unique deliveries to receivers still connected
        self.first_rx = 0
        self.last_rx = 0
        self.disconnected = 0   # receivers closed after they were ready (whole run)
        self.reader = gevent.get_hub().loop.io(self.ep.fileno(), 1)
        self.reader.start(self.on_epoll_ready)
        gevent.spawn(self.progress_loop)

    # ---------------------------------------------------------------- I/O

    def on_epoll_ready(self) -> None:
        """Read every ready socket; see the module docstring for why epoll.

        Runs as the callback of one io watcher that stays started for the
        worker's life.  A greenlet calling wait_read(epfd) instead made
        libev add and remove the fd on every wake-up: py-spy found 32% of a
        worker in epoll_ctl at 10,000 clients, where each wake-up finds few
        sockets ready.  When more than POLL_BATCH are ready the epoll fd
        stays readable and the loop calls back after the senders have run.
        """
        by_fd = self.by_fd
        for fd, _ in self.ep.poll(0, POLL_BATCH):
            c = by_fd.get(fd)
            if c is None:
                continue
            try:
                data = c.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                c.error = "recv: %s" % e
                data = b""
            try:
                if data and c.tx is not None:
                    try:
                        data = c.tx.decode(data)
                        if not data:
                            continue        # only part of a frame or record so far
                    except Closed as e:
                        # A close frame / close_notify: the data before it, then EOF.
                        if e.args[0]:
                            self.on_data(c, e.args[0])
                        data = b""
                    except TransportError as e:
                        c.error = "%s: %s" % (self.transport, e)
                        data = b""
                if data:
                    self.on_data(c, data)
                else:
                    self.close(c)
            except Exception as e:
                # A bug in the receive path: say so on stderr (the parent's
                # terminal) and drop this client, but keep reading the others.
                traceback.print_exc()
                c.error = "receive path: %r" % (e,)
                self.close(c)

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

    def handshake(self, c: Client, data: bytes, end: int, now: int) -> int:
        """Advance the name/welcome exchange; return where chat lines start."""
        pos = 0
        while pos < end:
            nl = data.index(b"\n", pos)
            line = data[pos:nl].rstrip(b"\r")
            pos = nl + 1
            if c.state == PROMPT:
                if not line.startswith(b"error:") and b"name" in line.lower():
                    self.send_name(c)
            elif c.state == WELCOME:
                if line.startswith(b"You are "):
                    if self.rooms:
                        # Named, in the lobby: move to the bench room.
                        c.state = JOINING
                        self.send_line(c, b"/join %s\n" % room_name(self.name_prefix, c.room))
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
                    self.close(c)
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
                    c.hist = HIST_NONE      # no history: this is a live line
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
        self.send_line(c, c.name + b"\n")

    def send_line(self, c: Client, line: bytes) -> None:
        """Send a handshake line (name, /join) without blocking."""
        if c.tx is not None:
            line = c.tx.encode(line)
        try:
            # Called from the reader's watcher callback, which must not
            # block: a fresh socket takes a name whole; if not, a greenlet
            # sends the rest.
            n = c.sock.send(line)
        except BlockingIOError:
            n = 0
        except OSError as e:
            c.error = "send name: %s" % e
            self.close(c)
            return
        if n < len(line):
            gevent.spawn(self.send_rest, c, line[n:])

    @staticmethod
    def send_to(c: Client, buf: bytes) -> None:
        """send_all of line bytes through the client's transport: one
        WebSocket frame (or TLS write) per call, so per send batch."""
        send_all(c.sock, c.tx.encode(buf) if c.tx is not None else buf)

    def send_rest(self, c: Client, data: bytes) -> None:
        try:
            send_all(c.sock, data)
        except OSError as e:
            c.error = "send name: %s" % e
            self.close(c)

    def on_ready(self, c: Client, now: int) -> None:
        c.state = READY
        c.t_ready = now
        if c.slow:
            # Never read again: the server's queue for us fills up.
            try:
                self.ep.unregister(c.fd)
            except OSError:
                pass
            self.by_fd.pop(c.fd, None)
        else:
            c.tracker = SeqTracker(self.track_size)
        c.ready.set()

    def scan(self, c: Client, buf: bytes, start: int, end: int, now: int,
             counts: tuple) -> None:
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

    def _scan_data(self, c: Client, buf: bytes, start: int, end: int, now: int,
                   markers: int, prefix: bytes, by_room: bool) -> int:
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
            c.credits += own
            c.event.set()
        return leaked

    def scan_rooms(self, c: Client, buf: bytes, start: int, end: int, now: int,
                   counts: tuple) -> None:
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
            self.leak_samples.append({"client": c.idx, "room": c.room,
                                      "sender": sender, "sender_room": sender_room})

    def close(self, c: Client) -> None:
        """Forget a client: the one place a client is removed."""
        if c.state == CLOSED:
            return
        if c.state == READY and not c.slow:
            self.disconnected += 1
            if c.tracker is not None:
                self.unique_total -= c.tracker.unique
        c.state = CLOSED
        if self.by_fd.pop(c.fd, None) is not None:
            try:
                self.ep.unregister(c.fd)
            except OSError:
                pass
        try:
            c.sock.close()
        except Exception:
            pass
        c.ready.set()
        if c.event is not None:
            c.event.set()

    # ------------------------------------------------------------ connect

    def addr_of(self, c: Client) -> tuple:
        """The (host, port) client c connects to: its node of a cluster."""
        return self.nodes[node_of(c.idx, len(self.nodes), self.rooms)]

    def connect_one(self, c: Client, timeout: float) -> None:
        c.t_start = time.monotonic_ns()
        c.state = WELCOME if self.compat else PROMPT
        addr = self.addr_of(c)
        s = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET)
        c.sock = s
        try:
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if c.slow:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
            if self.source_addrs:
                try:
                    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                except OSError:
                    pass
                s.bind((self.source_addrs[c.idx % len(self.source_addrs)], 0))
            err = s.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
            wait_write(s.fileno(), timeout=timeout,
                       timeout_exc=socket.timeout("connect timed out"))
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            early = b""
            if self.transport != "tcp":
                # The WebSocket upgrade or TLS handshake, before the epoll
                # reader sees the socket; early: line bytes that came with it.
                c.tx = make_transport(self.transport, self.tls_ctx)
                try:
                    early = c.tx.handshake(s, addr[0], addr[1], timeout)
                except Closed:
                    raise OSError("closed by the server during the handshake")
            c.fd = s.fileno()
            self.by_fd[c.fd] = c
            self.ep.register(c.fd, select.EPOLLIN)
        except (OSError, socket.timeout) as e:
            c.error = "connect: %s" % e
            self.close(c)
            return
        if early:
            self.on_data(c, early)
        if not c.ready.wait(timeout) and c.state != READY:
            try:
                local = "%s:%d" % c.sock.getsockname()[:2]
            except OSError:
                local = "?"
            c.error = ("no welcome within %.0f s (client %s, %s, partial line %r)"
                       % (timeout, local, "awaiting prompt" if c.state == PROMPT
                          else "awaiting 'You are'", c.tail[:80]))
            self.close(c)

    def cmd_connect(self, msg: dict) -> dict:
        """Connect ("which": "normal" or "slow") clients through the handshake.

        Reply: ok, errors (count and first messages), the handshake
        latencies (connect start to "You are") as an encoded histogram, and
        t_last_ready (monotonic ns).
        """
        todo = self.slow_clients if msg.get("which") == "slow" else self.clients
        pool = gevent.pool.Pool(msg.get("concurrency", 200))
        timeout = msg.get("timeout", 60.0)
        for c in todo:
            pool.spawn(self.connect_one, c, timeout)
        pool.join()
        rec = LatencyRecorder()
        ok = [c for c in todo if c.state == READY]
        for c in ok:
            us = (c.t_ready - c.t_start) // 1000
            rec.buckets[latency_bucket(us)] += 1
        for c in ok:
            if c.idx in self.sender_of:
                c.sender_id = self.sender_of[c.idx]
        errs = [c.error for c in todo if c.state != READY]
        reply = {"ok": len(ok), "errors": len(errs), "error_samples": errs[:3],
                 "hist": rec.encoded(),
                 "t_last_ready": max([c.t_ready for c in ok], default=0)}
        if len(self.nodes) > 1:
            # A cluster: how many got through on each node.
            by_node = [0] * len(self.nodes)
            for c in ok:
                by_node[node_of(c.idx, len(self.nodes), self.rooms)] += 1
            reply["by_node"] = by_node
        return reply

    # --------------------------------------------------------------- sync

    def readers(self):
        return [c for c in self.clients if c.state == READY]

    def cmd_sync(self, msg: dict) -> dict:
        """Wait until every reading client has seen sync marker k.

        The server relays lines in order, so a client that received marker k
        has also received everything the server sent it before (arrivals of
        a join storm, the last messages of a phase).  If "send" is true this
        worker sends the marker from one of its clients first.
        Reply: missing (clients that did not see it in time), t_done.
        """
        k = msg["k"]
        self.sync_target = k
        deadline = time.monotonic() + msg.get("timeout", 60.0)
        if msg.get("send") and self.rooms:
            # Every room needs its own marker, sent by one of its members.
            for r in self.lead_rooms:
                for c in sorted(self.members[r], key=lambda c: c.idx):
                    if c.state != READY:
                        continue
                    try:
                        self.send_to(c, room_sync_payload(k, r))
                        break
                    except OSError:
                        continue
        elif msg.get("send"):
            for c in self.readers():
                try:
                    self.send_to(c, sync_payload(k))
                    break
                except OSError:
                    continue
        while True:
            waiting = [c for c in self.readers() if c.sync < k]
            if not waiting or time.monotonic() > deadline:
                break
            gevent.sleep(0.01)
        done = [c.t_sync for c in self.readers() if c.sync >= k]
        reply = {"missing": len(waiting), "seen": len(done),
                 "t_done": max(done, default=0), "lines": self.lines}
        if self.rooms:
            reply["leaked"] = self.leaked
            reply["leak_samples"] = self.leak_samples
        return reply

    # --------------------------------------------------------------- send

    def open_sender(self, c: Client, run: int, t0: int, end: int,
                    interval: int, offset: int) -> None:
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
            buf = b"".join([make_payload(run, sid, j, min(start + j * interval, now), size)
                            for j in range(k, k + n)])
            if not self.send_batch(c, buf, n, k + n):
                return
            k += n

    def send_batch(self, c: Client, buf: bytes, n: int, upto: int) -> bool:
        """Send n lines of a sender, the last numbered upto - 1, and count
        them; False (and the client closed) if the send failed."""
        try:
            self.send_to(c, buf)
        except OSError as e:
            c.error = "send: %s" % e
            self.close(c)
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

    def cmd_arm(self, msg: dict) -> dict:
        """Get ready for phase msg["run"]: its receivers recognise its lines
        and its counters start from zero.  The runner arms every worker
        before any of them sends, so that no worker meets a line of a phase
        it does not know yet."""
        self.run_prefix = run_prefix(msg["run"])
        self.lat = LatencyRecorder()
        self.lag = LatencyRecorder()
        self.sent = self.stale = self.first_rx = self.last_rx = 0
        self.sent_by = {}
        for c in self.clients:
            if c.tracker is not None:
                c.tracker = SeqTracker(self.track_size)
        self.unique_total = 0
        self.armed = msg["run"]
        return {}

    def cmd_send(self, msg: dict) -> dict:
        """Run one measured phase of sending from this worker's senders.

        msg: run (random id of the phase), t0 (monotonic ns, the same for
        all workers), duration (s), mode "open" (rate_per_sender, msgs/s) or
        "closed" (window).  Resets the phase counters, sends until
        t0+duration, and replies with sent, offered and the send-lag
        histogram (how late the open-loop senders were on their schedule).
        """
        if self.armed != msg["run"]:
            self.cmd_arm(msg)
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
        return {"sent": self.sent, "sent_by": self.sent_by,
                "offered": offered if msg["mode"] == "open" else None,
                "senders": len(senders), "blocked": blocked,
                "lag_hist": self.lag.encoded()}

    def cmd_drain(self, msg: dict) -> dict:
        """Wait for the messages of the phase to arrive, then report.

        msg: total_sent (by all workers), quiet (s without progress that
        ends the wait), timeout (s, hard bound).  Every reading client
        should get every message, its own included.
        """
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
            owed = (total * len(readers) if room_sent is None
                    else sum(room_sent[c.room] for c in readers))
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
        self.run_prefix = None   # later lines of this phase count as stale
        samples = []
        if not complete:
            samples = self.loss_samples(readers, msg.get("sent_by") or {}, rooms=self.rooms)
        extra = {}
        if self.rooms:
            by_room: dict = {}
            for c in readers:
                by_room[c.room] = by_room.get(c.room, 0) + 1
            extra = {"receivers_by_room": by_room, "leaked": self.leaked,
                     "leak_samples": self.leak_samples}
        return {**extra,
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

    @staticmethod
    def loss_samples(readers, sent_by: dict, limit: int = 5, rooms: int = 0) -> list:
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
                        continue        # not owed to this client
                    slot = s // rooms
                miss = sorted(tr.missing.get(slot, ()))[:3]
                if len(miss) < 3 and tr.nxt[slot] < total:
                    miss += list(range(tr.nxt[slot], min(total, tr.nxt[slot] + 3 - len(miss))))
                if miss:
                    out.append({"client": c.idx, "sender": s, "missing": miss,
                                "sent": total, "next": tr.nxt[slot]})
                    if len(out) >= limit:
                        return out
        return out

    def cmd_slowcheck(self, msg: dict) -> dict:
        """How many never-reading clients the server has closed.

        A client that never reads learns of its end only now.  The server's
        FIN waits behind the data the client never read (its window is
        shut), so read everything until EOF or reset (closed) or until
        nothing comes for "quiet" seconds (still open).
        """
        quiet = msg.get("quiet", 1.0)
        result = {}

        def check(c):
            while True:
                try:
                    data = c.sock.recv(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    try:
                        wait_read(c.sock.fileno(), timeout=quiet,
                                  timeout_exc=socket.timeout())
                    except socket.timeout:
                        result[c.idx] = "open"
                        return
                    continue
                except OSError:
                    data = b""
                if not data:
                    result[c.idx] = "closed"
                    return

        group = gevent.pool.Group()
        for c in self.slow_clients:
            if c.state == CLOSED:
                result[c.idx] = "closed"
            elif c.state == READY:
                group.spawn(check, c)
        group.join()
        states = list(result.values())
        return {"closed": states.count("closed"), "open": states.count("open")}

    # ------------------------------------------------------------ control

    def progress_loop(self) -> None:
        while True:
            gevent.sleep(0.5)
            if self.busy:
                emit({"ev": "progress",
                      "connected": sum(1 for c in self.clients if c.state == READY),
                      "synced": sum(1 for c in self.clients if c.sync >= self.sync_target
                                    and self.sync_target),
                      "sent": self.sent, "unique": self.unique_total,
                      "lines": self.lines})

    def serve(self, fin) -> None:
        """Run commands from the parent until "quit" or end of input."""
        for raw in fin:
            msg = json.loads(raw)
            cmd = msg["cmd"]
            if cmd == "quit":
                break
            self.busy = True
            try:
                reply = getattr(self, "cmd_" + cmd)(msg)
                reply["ev"] = cmd
            except Exception as e:  # report, let the parent decide
                reply = {"ev": "error", "cmd": cmd, "error": "%s: %s" % (type(e).__name__, e)}
            self.busy = False
            emit(reply)
        for c in self.clients + self.slow_clients:
            if c.sock is not None:
                try:
                    c.sock.close()
                except Exception:
                    pass


def raise_fd_limit() -> None:
    """Use the hard limit on open files: each client is one descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    raise_fd_limit()
    from gevent.fileobject import FileObjectPosix
    fin = FileObjectPosix(sys.stdin.fileno(), "rb", close=False)
    cfg = json.loads(fin.readline())
    w = Worker(cfg)
    emit({"ev": "hello", "pid": os.getpid()})
    w.serve(fin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
