"""The broadcaster greenlet: the one owner of the chat (names, rooms).

Readers put events (events.py) on `inbox`, a gevent Queue; the hub waits on it as the
seed's broadcaster waits in select.  On each wake-up it drains every
pending event, lets the Chat apply them, and flushes the batch: rendered
once per room, offered to every member's Outbox with a non-blocking send.  It never
waits on a client.  Connections it removes are closed only after the batch
that says goodbye to them has been delivered.
"""

import logging
import time
from bisect import bisect_left
from time import perf_counter
from typing import Any

import gevent
from gevent.event import Event
from gevent.queue import Empty, Queue

from gchat.chat import Chat
from gchat.events import (
    API,
    ARRIVE,
    BUS_EVENTS,
    INBOX_FULL,
    LEAVE,
    LINES,
    PEER_GONE,
    SHUTDOWN,
    WATCHDOG,
    Why,
)
from gchat.logs import fields as log_fields

log = logging.getLogger("gchat")

# Upper bounds of the buckets of two histograms kept per wake-up (not per
# delivery) for the metrics: events handled in one batch, and seconds one
# flush took.  Plain lists of counts, read at scrape time (metrics.py).
BATCH_SIZE_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
FLUSH_SECONDS_BOUNDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


class Histogram:
    """Counts of observations per bucket (the last bucket is +Inf) and
    their sum: what a Prometheus histogram exposes, for one observation
    per batch at the cost of a bisect."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value):
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


AUTH_EXTRA_MISSING = (
    "--auth-key needs the auth extra, which is not installed: pip install 'gchat[auth]'"
)


def load_auth_key(config):
    """The key of --auth-key (auth.AuthKey), None without; ValueError with
    one line saying what is wrong (the server does not start)."""
    if config.auth_key is None:
        return None
    try:
        import jwt  # noqa: F401  (the extra's)
    except ImportError:
        raise ValueError(AUTH_EXTRA_MISSING) from None
    from gchat.auth import load_key

    try:
        with open(config.auth_key, encoding="utf-8") as file:
            text = file.read()
        return load_key(text)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"--auth-key {config.auth_key}: {err}") from None


def load_oper_hash(config):
    """The line of --oper-password-file, checked; None without; ValueError
    with one line saying what is wrong."""
    if config.oper_password_file is None:
        return None
    from gchat.operators import check_hash_line

    try:
        with open(config.oper_password_file, encoding="utf-8") as file:
            line = file.readline().strip()
        check_hash_line(line)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"--oper-password-file {config.oper_password_file}: {err}") from None
    return line


class Hub:
    def __init__(self, config, bus=None):
        """bus: the cluster's bus (bus/room_bus.RoomBus), None alone."""
        self.config = config
        self.bus = bus
        # Unbounded, so that readers (event-loop callbacks) can always put
        # without waiting; a reader that finds config.inbox_size events
        # queued pauses itself and waits in `paused` for the hub to drain.
        self.inbox = Queue()
        self.paused = []
        self._loop = gevent.get_hub().loop
        auth = load_auth_key(config)
        oper_hash = load_oper_hash(config)
        if bus is None:
            self.chat = Chat(
                config, stats=self.snapshot, clock=self._loop.now, auth=auth, wall=time.time
            )
            self.chat.oper_hash = oper_hash
        else:
            from gchat.cluster import ClusterChat

            self.chat = ClusterChat(
                config,
                bus.node,
                stats=self.snapshot,
                clock=self._loop.now,
                auth=auth,
                wall=time.time,
            )
            self.chat.oper_hash = oper_hash
            self.chat.backlog = lambda: bus.held_lines
            self.chat.bus_up = bus.up.is_set
        self.transport_stats = None  # set by the server: a callable for /stats
        self.stopped = Event()  # set when shutdown has closed every client
        self.stats = {
            "deliveries": 0,
            "batches": 0,
            "events": 0,
            "slow_disconnects": 0,
            "faults": 0,
        }
        self.batch_sizes = Histogram(BATCH_SIZE_BOUNDS)
        self.flush_seconds = Histogram(FLUSH_SECONDS_BOUNDS)
        self._shutting_down = False
        self._batch_limit = config.inbox_size

    def put(self, kind, conn=None, payload=None):
        """Send the hub an event (never waits: the inbox is unbounded)."""
        self.inbox.put((kind, conn, payload))

    def run(self):
        """The broadcaster loop; runs until shutdown has closed every client."""
        inbox = self.inbox
        loop = self._loop
        chat = self.chat
        while True:
            # Held-back announcements (room.py) set a deadline for the next flush.
            due = chat.due(loop.now())
            handled = 0
            try:
                self._handle(inbox.get(timeout=due))
                handled = 1
            except Empty:
                pass
            # Drain everything that is already waiting: one flush (one send
            # per client) serves the whole batch.
            for _ in range(self._batch_limit):
                try:
                    event = inbox.get_nowait()
                except Empty:
                    break
                self._handle(event)
                handled += 1
            started = perf_counter()
            self._flush()
            self.flush_seconds.observe(perf_counter() - started)
            if self.bus is not None:
                # One entry per room per batch: what this batch's clients
                # did.  (With a bus the chat is a ClusterChat, which mypy
                # cannot tell.)
                batches, requests = chat.take()  # type: ignore[attr-defined]
                if batches or requests:
                    chat.sent(self.bus.submit(batches, requests))  # type: ignore[attr-defined]
            self.batch_sizes.observe(handled)
            if self.paused:
                paused, self.paused = self.paused, []
                for conn in paused:
                    conn.resume(INBOX_FULL)
            if self._shutting_down and not self.chat.connected:
                self.stopped.set()
                return

    def _handle(self, event):
        kind, conn, payload = event
        self.stats["events"] += 1
        chat = self.chat
        try:
            if kind is LINES:
                was_named = conn.name is not None
                chat.lines(conn, payload)
                if not was_named and conn.name is not None:
                    log.info(
                        "%s is %s",
                        conn.who,
                        conn.name,
                        extra=log_fields(
                            addr=conn.who, name=conn.name, room=conn.room and f"#{conn.room.name}"
                        ),
                    )
            elif kind is ARRIVE:
                log.info("connection from %s", conn.who, extra=log_fields(addr=conn.who))
                chat.arrive(conn)
                if self._shutting_down:  # accepted just before the listener closed
                    chat.depart(conn, Why.SHUTDOWN)
            elif kind is LEAVE:
                chat.depart(conn, payload)
            elif kind is SHUTDOWN:
                self._shutting_down = True
                chat.shutdown()
            # The bus's events: only with a bus, whose chat is a ClusterChat.
            elif kind in BUS_EVENTS:
                chat.on_bus(kind, conn, payload)  # type: ignore[attr-defined]
            elif kind is WATCHDOG:
                payload()
            elif kind is API:
                chat.api(*payload)
        except Exception:
            # One client's bad event must not stop the broadcaster.
            self.stats["faults"] += 1
            log.exception(
                "error handling %s event of %s; disconnecting it", kind, getattr(conn, "who", conn)
            )
            if conn is not None:
                try:
                    chat.depart(conn, Why.FAULT)
                except Exception:
                    log.exception("error removing %s", getattr(conn, "who", conn))
                    conn.close(0)

    def _flush(self):
        chat = self.chat
        chat.end_batch(self._loop.now())
        config = self.config
        while chat.pending or chat.departures:
            departures, chat.departures = chat.departures, []
            leaving = {conn for conn, _ in departures}
            overflowed = []
            faulty = []

            # Called by chat.flush below, within this iteration: the loop's
            # variables are the ones meant (B023 guards against late calls).
            def deliver(conn, data):
                try:
                    if conn in leaving:  # noqa: B023
                        conn.outbox.offer(data, force=True)
                    elif not conn.outbox.offer(data):
                        overflowed.append(conn)  # noqa: B023
                except Exception:
                    # One client's transport failing must not stop the
                    # broadcaster (nor the batch for the others).
                    self.stats["faults"] += 1
                    log.exception("error delivering to %s; disconnecting it", conn.who)
                    conn.outbox.broken = True
                    faulty.append(conn)  # noqa: B023

            self.stats["deliveries"] += chat.flush(deliver)
            self.stats["batches"] += 1
            # The chat sees events.Members; the hub closes what it gave it: Connections.
            conn: Any
            for conn, why in departures:
                if why in PEER_GONE:
                    conn.close(0)
                elif self._shutting_down:
                    conn.close(config.shutdown_flush_timeout)
                else:
                    conn.close(config.close_linger)
                self._log_departure(conn, why)
            for conn in overflowed:
                self.stats["slow_disconnects"] += 1
                chat.depart(conn, Why.SLOW)
            for conn in faulty:
                chat.depart(conn, Why.FAULT)

    def _log_departure(self, conn, why):
        log.info(
            "%s left (%s, %s)%s",
            conn.name or conn.who,
            conn.who,
            why,
            f", {conn.outbox.dropped} lines dropped" if conn.outbox.dropped else "",
            extra=log_fields(
                addr=conn.who, name=conn.name, reason=why, room=conn.room and f"#{conn.room.name}"
            ),
        )

    def snapshot(self) -> dict:
        """Counters for /stats and the logs."""
        chat = self.chat
        stats = {
            "clients": len(chat.connected),
            "members": chat.named_here(),
            "rooms": len(chat.rooms),
            "rooms_dropped": chat.rooms.dropped,
            **chat.counts,
            **self.stats,
            "inbox": self.inbox.qsize(),
        }
        if self.transport_stats is not None:
            stats.update(self.transport_stats())
        if self.bus is not None:
            stats["cluster_members"] = chat.cluster_members()  # type: ignore[attr-defined]
            stats.update(self.bus.snapshot())
        return stats


def spawn_hub(config, bus=None) -> tuple:
    hub = Hub(config, bus)
    return hub, gevent.spawn(hub.run)
