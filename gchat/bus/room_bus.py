"""The cluster's bus over Redis, routed by interest: the I/O.  What entries
mean is entry.py's and room_log.py's (pure); what the chat does with them
is cluster.py's.  docs/cluster.md tells the design whole.

Each room has a log of its own (room_stream.py): an offset, an epoch, a
bounded stream, its members and history, and a sharded channel, all under
one hash tag, so that a room lives on one master of a Redis Cluster (or on
the one Redis).  A node publishes each hub batch as one entry per room it
touched (room_publisher.py, one pipeline per round) and reads only the logs
of the rooms it hosts (room_feed.py: one sharded subscription per room,
gaps and resets filled from the stream).  Besides the rooms, a small
control space (control.py): names one key each, heartbeats, the nodes'
list, each node's room directory, and the cluster's epoch.

Greenlets, none of which touches the chat (they put events on the hub's
inbox):

- the writer publishes what the hub handed over, in order per room;
- the feed hosts and drops rooms as the hub asks (a snapshot, then a
  subscription), and reads the subscriptions;
- the claimer claims and frees names, and routes /msg to the recipient
  node's inbox;
- the heart renews this node's heartbeat, writes its directory, reads the
  others' (for /rooms), finds the nodes that died, and notices a Redis that
  lost the cluster's data (the control epoch changed): the node then claims
  its names again, publishes again what it keeps of every room, and has
  the hub say who is here in each room it hosts.

Exactly once is each room's (node, seq) (room_log.py); a node keeps what
it published for bus_replay_window seconds (at most bus_replay_entries
entries per room) to publish it again when a room lacks it.

While Redis is unreachable (or a master of a Redis Cluster fails over),
what the hub hands over waits in the publisher, in order; the hub refuses
lines past bus_backlog, saying so to the sender.

gevent: redis-py talks through the socket module, which bus/__init__.py
monkey-patches (with threads and queues, which redis-py's cluster client
uses to refresh its slot map) before this module is imported, so every
call here waits cooperatively; hiredis parses replies in C.
"""

import logging
import time
import uuid
from collections import deque
from typing import Any, Optional

import gevent
import gevent.select
import redis
from gevent.event import Event
from gevent.queue import Queue
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.retry import Retry

from gchat.bus.control import Control
from gchat.bus.entry import BadEntry, decode, dumps
from gchat.bus.room_feed import RoomFeed
from gchat.bus.room_log import RoomEntry
from gchat.bus.room_publisher import RoomPublisher
from gchat.bus.room_stream import RoomStream
from gchat.events import (
    BUS,
    CLAIMED,
    DIRECTORY,
    HOSTED,
    KICK_ROUTED,
    NODE_LOST,
    REPLAYED,
    RESTRICTIONS,
    RESYNC,
    ROUTED,
    SESSION_FOUND,
)
from gchat.protocol import (
    BUS_DOWN,
    BUS_DOWN_FOR_NAME,
    name_key,
    render_away_unreachable,
    render_bad_resume_id,
    render_name_taken,
    render_no_such_user,
)
from gchat.protocol import NODE_LOST as NODE_LOST_REASON
from gchat.sessions import resume_from

log = logging.getLogger("gchat")

# Seconds the feed waits for a message at most (a request to host a room
# wakes it at once): an idle node wakes ten times a second, to notice a
# subscription that a redis-py reconnection has made anew.
FEED_POLL = 0.1
# Messages the feed reads in one turn before it hands them to the hub: a
# burst is one event per room, and the hub is not kept waiting for more.
FEED_DRAIN = 512
# Seconds the writer waits after being woken, so that a round carries the
# entries of several hub batches: 5 ms is a quarter of the p99 goal of a
# cluster's line.  Measured (bench/RESULTS.md, issue 17): on 2 nodes at 500
# lines/s each, 2 ms gave 65 us of CPU per delivery, 5-6 ms 46-55 us, 10 ms
# no better; an idle node does not wait (WRITE_BUSY).
WRITE_GATHER = 0.005
# A writer whose last round was this recent is busy, and gathers: rounds
# closer than this would each carry little.
WRITE_BUSY = 0.01
# Seconds between attempts to reach Redis while it is down, doubling up to
# the maximum: quick to notice a restart, and no busy loop.
RETRY_MIN = 0.05
RETRY_MAX = 1.0
# Heartbeats per node_timeout: a node is declared lost only after missing
# several in a row.
BEATS_PER_TIMEOUT = 5
# Seconds a lost node's marker is kept: long past any heartbeat, so that
# its names are freed once.
LOST_MARK_TTL = 3600
# What redis-py raises when Redis cannot serve a call: a RedisClusterException
# ("cannot be connected", every node down) is no RedisError.
FAILURES = (RedisError, RedisClusterException, OSError)
# A sign-in whose name a node holds that cannot hand it over (gone, its
# names kept for a session's window).
SIGN_OVER_GONE = "your name is held by a server that is gone; try again later"
# The prefix of a node's inbox log (cluster.INBOX; no room name holds it).
INBOX = "~"


class BusError(Exception):
    """Redis cannot be used at start (unreachable, wrong password)."""


def open_client(url: str, timeout: float, name: str) -> tuple[Any, bool]:
    """A redis-py client for url, and whether it is a Redis Cluster's: a
    node of a Redis Cluster (INFO's cluster_enabled) is given to
    RedisCluster, which finds the other masters from it."""
    options = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 0,
        "client_name": name,
    }
    probe = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
    if not probe.info("cluster").get("cluster_enabled"):
        return probe, False
    probe.close()
    from redis.cluster import RedisCluster

    # Its retries ride out a failover (a MOVED after the replica took over);
    # what they hide, a write the new master lacks, the rooms' chains find.
    return RedisCluster.from_url(url, **options), True


class RoomBus:
    """One node's link to the cluster.  See the module docstring."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.node = uuid.uuid4().hex[:12]
        self.client: Any = None
        self.sharded = False  # a Redis Cluster
        self.epoch: Optional[str] = None
        self.up = Event()
        self.up_since = 0.0
        self.down_since = 0.0
        self.held_lines = 0  # chat lines waiting to be published (the hub's bound)
        self._lines: dict[tuple[str, int], int] = {}  # (room, seq) -> its lines, while waiting
        self._published_at: deque[tuple[float, str, int]] = deque()  # (time, room, seq)
        self.names: set[str] = set()  # name keys this node holds in Redis
        self.sessions: dict[str, str] = {}  # token -> name key, this node's sessions
        self.unreleased: set[str] = set()  # names to free once Redis answers again
        self.directory_here: dict[str, int] = {}  # room name -> this node's members
        self._directory_changed: dict[str, int] = {}
        self.peers: set[str] = set()  # live nodes, as the last heartbeat round saw
        self.lost: set[str] = set()  # nodes found lost (not checked again)
        self._feed_requests: deque[tuple[str, str, str]] = deque()  # ("host"|"drop", key, name)
        # Set when a subscription's socket can be read, or the hub asks the
        # feed for a room (_wait_for_messages).
        self._feed_ready = Event()
        # The read watchers on the subscriptions' sockets, kept between waits:
        # (socket object's id, fd) -> libev io watcher.
        self._feed_watchers: dict[tuple[int, int], Any] = {}
        self._delivered: dict[str, list[tuple[str, int, list, str, int]]] = {}
        self._wake_writer = Event()
        self._last_round = 0.0  # when the writer's last round went out
        self._requests: Queue = Queue()
        self._put: Any = None  # the hub's put(kind, conn, payload), given by start()
        self._greenlets: list[Any] = []
        self._closing = False
        self.stats = {
            "bus_outages": 0,
            "bus_recoveries": 0,
            "bus_data_lost": 0,
            "bus_published": 0,
            "bus_republished": 0,
            "bus_read": 0,
            "bus_duplicates": 0,
            "bus_bad_entries": 0,
            "bus_nodes_lost": 0,
        }

    # ------------------------------------------------------------------
    # Start and stop

    def connect(self) -> None:
        """Reach Redis before serving.  Raises BusError."""
        config = self.config
        timeout = max(2.0, config.node_timeout)
        try:
            self.client, self.sharded = open_client(config.redis, timeout, f"gchat-{self.node}")
            self.control = Control(self.client, config.cluster)
            self.stream = RoomStream(
                self.client, config.cluster, config.bus_stream_max, config.history
            )
            self.publisher = RoomPublisher(self.stream, self.node, config.bus_replay_entries)
            self.feed = RoomFeed(self.stream, self.client.pubsub(), self._deliver)
            self.feed.bad = self._bad
            self.epoch = self.control.epoch(uuid.uuid4().hex)
            self.control.beat(self.node, self._ttl_ms())
            self.feed.host(INBOX + self.node)
            self._restrictions_at_start = self.control.restrictions(time.time())
        except AuthenticationError as err:
            raise BusError(f"Redis refused the password: {err}") from None
        except ResponseError as err:
            if "NOAUTH" in str(err) or "WRONGPASS" in str(err):
                raise BusError(f"Redis refused the password: {err}") from None
            raise BusError(f"Redis answered with an error: {err}") from None
        except FAILURES as err:
            raise BusError(f"cannot reach Redis: {err}") from None
        self._set_up()

    def start(self, put: Any) -> None:
        """Serve: put(kind, conn, payload) sends the hub an event."""
        self._put = put
        # The cluster's bans and mutes, read before serving (connect), go
        # to the hub first: a name banned is not taken on a node started since.
        put(RESTRICTIONS, None, self._restrictions_at_start)
        for run in (self._write_loop, self._feed_loop, self._claim_loop, self._heart_loop):
            self._greenlets.append(gevent.spawn(run))

    def close(self, timeout: float) -> None:
        """Publish what waits (the departures of this node's members, up to
        timeout seconds), then let the names go and leave the nodes' list:
        the others saw this node's members leave through those entries."""
        deadline = time.monotonic() + timeout
        while self.publisher.waiting and self.up.is_set() and time.monotonic() < deadline:
            self._wake_writer.set()
            gevent.sleep(0.01)
        self._closing = True
        gevent.killall(self._greenlets, timeout=1)
        if self.publisher.waiting:
            log.warning(
                "stopping with %d bus entries unpublished (Redis unavailable)",
                len(self.publisher.waiting),
            )
        try:
            # A session's name is kept for its window, for a resume elsewhere.
            self.control.release_all(sorted(self.names), self.node, self._window_ms())
            self.control.leave(self.node)
        except FAILURES as err:
            log.warning("could not free this node's names in Redis: %s", err)
        self.stream.direct.close()
        self._watch_sockets([])
        self.client.close()

    # ------------------------------------------------------------------
    # From the hub

    def submit(self, batches: dict, requests: list) -> dict[str, int]:
        """One hub batch: room key -> cluster.Batch, each of which becomes
        one entry of its room's log; returns room key -> its sequence
        number.  Its requests go to the claimer, the feed or the heart."""
        seqs = {}
        for room_key, batch in batches.items():
            seq = self.publisher.submit(
                room_key, dumps(batch.ops), tuple(batch.history), tuple(batch.members)
            )
            seqs[room_key] = seq
            if batch.lines:
                self._lines[(room_key, seq)] = batch.lines
                self.held_lines += batch.lines
        if batches:
            self._wake_writer.set()
        for request in requests:
            kind = request[0]
            if kind == "host" or kind == "drop":
                self._feed_requests.append((kind, request[1], request[2] if kind == "host" else ""))
                self._wake_feed()
            elif kind == "directory":
                self.directory_here.update(request[1])
                self._directory_changed.update(request[1])
            else:
                self._requests.put(request)
        return seqs

    def snapshot(self) -> dict:
        """Counters for /stats."""
        publisher, feed = self.publisher, self.feed
        return {
            **self.stats,
            "bus_up": int(self.up.is_set()),
            "bus_pending": len(publisher.waiting),
            "bus_held_lines": self.held_lines,
            "bus_window": len(self._published_at),
            "bus_rooms_hosted": len(feed.readers) - 1,  # not the inbox
            "bus_gaps": feed.stats["gaps"],
            "bus_resets": feed.stats["resets"],
            "bus_refusals": publisher.stats["refusals"],
            "bus_entries_lost": publisher.stats["lost"],
            "nodes": 1 + len(self.peers - {self.node} - self.lost),
        }

    # ------------------------------------------------------------------
    # Redis up and down

    def _set_up(self) -> None:
        self.up.set()
        self.up_since = time.monotonic()

    def _fail(self, err: Exception) -> None:
        if self.up.is_set():
            self.up.clear()
            self.down_since = time.monotonic()
            self.stats["bus_outages"] += 1
            log.warning(
                "lost the cluster's Redis: %s; holding entries (bound: %d lines)",
                err,
                self.config.bus_backlog,
            )

    def _back(self, data_lost: bool) -> None:
        if not self.up.is_set():
            self.stats["bus_recoveries"] += 1
            log.warning(
                "Redis is back%s; %d entries to publish",
                " without the cluster's data" if data_lost else "",
                len(self.publisher.waiting),
            )
            self._set_up()
            self._wake_writer.set()

    def _ttl_ms(self) -> int:
        return int(self.config.node_timeout * 1000)

    def _window_ms(self) -> int:
        return int(self.config.resume_window * 1000)

    # ------------------------------------------------------------------
    # The writer

    def _write_loop(self) -> None:
        pause = RETRY_MIN
        while not self._closing:
            self._wake_writer.wait()
            if time.monotonic() - self._last_round < WRITE_BUSY:
                # Busy: a moment for the hub's next batches to join this
                # round, so that one pipeline carries several entries (a
                # round costs about as much whatever it holds).  An idle
                # node's line goes out at once.
                gevent.sleep(WRITE_GATHER)
            self._wake_writer.clear()
            publisher = self.publisher
            if not publisher.waiting:
                continue
            if not self.up.is_set():
                continue  # the heart finds Redis back, and wakes this
            republished = publisher.stats["republished"]
            try:
                taken = publisher.flush()
            except FAILURES as err:
                self._fail(err)
                gevent.sleep(pause)
                pause = min(RETRY_MAX, pause * 2)
                self._wake_writer.set()
                continue
            pause = RETRY_MIN
            self._last_round = time.monotonic()
            self.stats["bus_published"] += taken
            self.stats["bus_republished"] += publisher.stats["republished"] - republished
            self._published()
            self._trim_window()

    def _published(self) -> None:
        """What the rooms took no longer counts against the outage bound,
        and starts its time in the replay window."""
        taken, self.publisher.taken = self.publisher.taken, []
        now = time.monotonic()
        lines = self._lines
        for item in taken:
            self.held_lines -= lines.pop(item, 0)
            self._published_at.append((now, *item))

    def _trim_window(self) -> None:
        """Entries older than bus_replay_window are kept no more."""
        horizon = time.monotonic() - self.config.bus_replay_window
        window = self._published_at
        while window and window[0][0] < horizon:
            _, room_key, seq = window.popleft()
            self.publisher.forget(room_key, seq)

    # ------------------------------------------------------------------
    # The feed

    def _deliver(self, room_key: str, entry: RoomEntry) -> None:
        """An entry of a hosted room, new and in order (RoomFeed)."""
        try:
            ops = decode(entry.ops[0], self.config.bus_max_entry)
        except BadEntry as err:
            self._bad(room_key, f"from node {entry.node}: {err}")
            return
        self.stats["bus_read"] += 1
        self._delivered.setdefault(room_key, []).append(
            (entry.node, entry.seq, ops, entry.epoch, entry.offset)
        )

    def _bad(self, room_key: str, why: str) -> None:
        self.stats["bus_bad_entries"] += 1
        log.warning("skipped bus entry in %s: %s", room_key, why)

    def _feed_loop(self) -> None:
        feed = self.feed
        pause = RETRY_MIN
        broken = False
        while not self._closing:
            try:
                if broken:
                    self._renew_feed()
                    broken = False
                self._serve_feed_requests()
                self._wait_for_messages()
                turns = 0
                while turns < FEED_DRAIN and feed.poll(0) is not None:
                    turns += 1
            except FAILURES as err:
                self._fail(err)
                self._hand_over()
                gevent.sleep(pause)
                pause = min(RETRY_MAX, pause * 2)
                broken = True
                continue
            pause = RETRY_MIN
            self._hand_over()
            self.stats["bus_duplicates"] = feed.stats["duplicates"]

    def _wait_for_messages(self) -> None:
        """Until a subscription's socket can be read, or the hub asks for a
        room, or FEED_POLL has passed.  One cooperative wait per burst:
        each message is then read without waiting (poll(0): redis-py asks
        the socket with a plain, non-blocking poll(), which the process
        does not patch).

        The sockets' read watchers stay started between waits, each setting
        _feed_ready: gevent.select would add and remove them at every wait
        (two epoll_ctl calls and a select() per socket, each a slow system
        call here), and the hub's requests set the same event instead of
        writing to a pipe."""
        sockets = []
        pubsub = self.feed.pubsub
        for each in getattr(pubsub, "node_pubsub_mapping", {}).values() or [pubsub]:
            connection = getattr(each, "connection", None)
            sock = getattr(connection, "_sock", None)
            if sock is not None:
                sockets.append(sock)
        self._watch_sockets(sockets)
        self._feed_ready.wait(FEED_POLL)
        self._feed_ready.clear()

    def _watch_sockets(self, sockets: list) -> None:
        """Keep a started read watcher on each of sockets, and on no other."""
        watchers = self._feed_watchers
        wanted = {}
        for sock in sockets:
            try:
                wanted[(id(sock), sock.fileno())] = sock
            except OSError:
                continue  # closed under us: redis-py makes a new one
        for key in [key for key in watchers if key not in wanted]:
            watcher = watchers.pop(key)
            watcher.stop()
            watcher.close()
        if len(wanted) > len(watchers):
            loop = gevent.get_hub().loop
            for key in wanted.keys() - watchers.keys():
                watcher = loop.io(key[1], 1)  # 1: readable
                watcher.start(self._feed_ready.set)
                watchers[key] = watcher

    def _wake_feed(self) -> None:
        self._feed_ready.set()

    def _serve_feed_requests(self) -> None:
        requests = self._feed_requests
        while requests:
            kind, room_key, name = requests[0]
            if kind == "host":
                snapshot = self.feed.host(room_key, name)
                self._hand_over()  # what came before, first
                self._put(HOSTED, None, (room_key, snapshot))
            else:
                self.feed.drop(room_key)
                self._delivered.pop(room_key, None)
            requests.popleft()

    def _hand_over(self) -> None:
        delivered, self._delivered = self._delivered, {}
        for room_key, entries in delivered.items():
            self._put(BUS, None, (room_key, entries))

    def _renew_feed(self) -> None:
        """After an error: a new subscription for every hosted room (each
        catches up from its stream when Redis confirms it).  Raises what
        the client raises while Redis is still away."""
        # New sockets: watch them afresh (an old socket's descriptor may be
        # reused by a new one, which epoll would not report on the old
        # watcher).
        self._watch_sockets([])
        try:
            self.feed.pubsub.close()
        except FAILURES:
            pass
        self.feed.pubsub = self.client.pubsub()
        for room_key in list(self.feed.readers):
            channel = self.stream.keys(room_key).channel
            self.feed.by_channel[channel.encode()] = room_key
            self.feed.pubsub.ssubscribe(channel)

    # ------------------------------------------------------------------
    # Names and private lines

    def _claim_loop(self) -> None:
        """Claims, releases, re-claims and /msg routes, in the order the hub
        asked (a name released and claimed again stays claimed)."""
        while not self._closing:
            requests = [self._requests.get()]
            while not self._requests.empty():
                requests.append(self._requests.get())
            for request in requests:
                if request[0] == "release":
                    self.names.discard(request[1])
                    self.unreleased.add(request[1])  # until Redis has done it
            if not self.up.is_set():
                self._refuse(requests)
                continue
            try:
                self._serve_requests(requests)
            except FAILURES as err:
                self._fail(err)
                self._refuse(requests)

    def _refuse(self, requests: list) -> None:
        """Redis cannot answer: claims fail; /msg are refused too."""
        for request in requests:
            if request[0] == "claim":
                _, conn, name = request
                self._put(CLAIMED, conn, (name, BUS_DOWN_FOR_NAME))
            elif request[0] == "msg":
                _, conn, _, target, text = request
                self._put(ROUTED, conn, (target, False, text))
            elif request[0] == "resume":
                self._put(SESSION_FOUND, request[1], (request[2], BUS_DOWN))
            elif request[0] == "sign-over":
                self._put(CLAIMED, request[1], (request[2], BUS_DOWN_FOR_NAME))
            elif request[0] == "replay":
                self._put(REPLAYED, request[1], (request[2], None, []))
            elif request[0] in ("kick", "room-info") and callable(request[-1]):
                request[-1]((503, {"error": BUS_DOWN}))

    def _serve_requests(self, requests: list) -> None:
        control, node = self.control, self.node
        for key in list(self.unreleased):
            if not any(r[0] == "claim" and name_key(r[2]) == key for r in requests):
                control.release(key, node)
            self.unreleased.discard(key)
        # Sessions' records are written in one pipeline at the end of the
        # round, and resumes' records read in one before it: a storm of
        # resumes (a node died) is a few round trips, not a few per client.
        writes = self.client.pipeline(transaction=False)
        sessions = control.find_sessions([r[2] for r in requests if r[0] == "resume"])
        answers: list = []
        takes: list = []
        for index, request in enumerate(requests):
            kind = request[0]
            if kind == "claim":
                _, conn, name = request
                ok = control.claim(name_key(name), node, name)
                if ok:
                    self.names.add(name_key(name))
                self._put(CLAIMED, conn, (name, None if ok else render_name_taken(name)))
            elif kind == "reassert":
                self._rejoin()
            elif kind == "msg":
                _, conn, sender, target, text = request
                found = control.holder_and_name(name_key(target))
                routed: Any = found is not None
                if found is not None:
                    holder, spelt = found
                    target = spelt or target  # as its holder spells it
                    if holder != node and (
                        holder in self.lost
                        or (holder not in self.peers and not control.alive([holder])[holder])
                    ):
                        # A session's name, kept while its node is gone:
                        # nobody reads that node's inbox; the sender is told.
                        routed = render_away_unreachable(target)
                    else:
                        ops = dumps([["msg", sender, target, text]])
                        self.publisher.submit(INBOX + holder, ops)
                        self._wake_writer.set()
                self._put(ROUTED, conn, (target, routed, text))
            elif kind == "session":
                _, token, name, room, start, earlier = request
                key = name_key(name)
                old = self.sessions.get(token)
                if old is not None and old != key:
                    control.end_session(writes, token, old)  # renamed: the old marker goes
                control.open_session(writes, token, key, name, room, start, earlier)
                self.sessions[token] = key
            elif kind == "session-gone":
                _, key, owner = request
                control.forget_session(key, owner)
                if owner == node:
                    self.names.discard(key)
            elif kind == "session-keep":
                # Its client went before its resume was through: its name
                # and record are kept for its window, as a lost node's are.
                _, token, key = request
                control.let_go([key], node, self._window_ms())
            elif kind == "session-end":
                _, token, key = request
                control.end_session(writes, token, self.sessions.pop(token, key))
            elif kind == "resume":
                _, conn, token, last = request
                session: Any = sessions.pop(0)
                if session is not None:
                    name, room, start, earlier = session
                    try:
                        session = (name, room, resume_from(last, start, earlier.split(",")))
                        takes.append((token, name_key(name), name))
                    except ValueError:
                        session = render_bad_resume_id(last)  # and nothing taken
                answers.append((conn, token, session))
                continue  # answered once the names are taken
            elif kind == "kick":
                # An operator's or the API's kick of a user on any node: to
                # its node's inbox.  answer: the API's callable (it touches
                # no state of the chat's), or the operator to tell, through
                # the hub, if nobody has the name.
                _, name, by, reason, answer = request
                found = control.holder_and_name(name_key(name))
                ok = found is not None and (
                    found[0] == node
                    or found[0] in self.peers
                    or control.alive([found[0]])[found[0]]  # a node newer than our last beat
                )
                spelt = (found[1] if found is not None else "") or name
                if ok:
                    assert found is not None
                    self.publisher.submit(INBOX + found[0], dumps([["kick", spelt, by, reason]]))
                    self._wake_writer.set()
                if callable(answer):
                    if ok:
                        answer((200, {"name": spelt, "disconnected": True}))
                    else:
                        answer((404, {"error": render_no_such_user(name)}))
                elif answer is not None:
                    self._put(KICK_ROUTED, answer, (name, ok))
            elif kind == "sign-over":
                # The same sub signed in here while another node has its
                # name: that node is asked to hand it over (cluster.py).
                _, conn, name = request
                found = control.holder_and_name(name_key(name))
                if (
                    found is not None
                    and found[0] != node
                    and (found[0] in self.peers or control.alive([found[0]])[found[0]])
                ):
                    ops = dumps([["hand-over", found[1] or name, node]])
                    self.publisher.submit(INBOX + found[0], ops)
                    self._wake_writer.set()
                else:
                    ok = control.claim(name_key(name), node, name)
                    if ok:
                        self.names.add(name_key(name))
                    self._put(CLAIMED, conn, (name, None if ok else SIGN_OVER_GONE))
            elif kind == "handed":
                _, to, name, room = request
                self.publisher.submit(INBOX + to, dumps([["handed", name, room]]))
                self._wake_writer.set()
            elif kind == "take-name":
                _, name = request
                control.take(name_key(name), node, name)
                self.names.add(name_key(name))
                self.unreleased.discard(name_key(name))
            elif kind == "restrict":
                _, table, key, until, lifted = request
                if lifted:
                    control.lift(table, key)
                else:
                    control.restrict(table, key, until)
            elif kind == "room-info":
                _, room_key, name, answer = request
                snapshot = self.stream.snapshot(room_key, name)
                answer(
                    (
                        200,
                        {
                            "room": f"#{snapshot.name}",
                            "members": sorted(member for _, member in snapshot.members),
                            "history": [
                                line.decode("utf-8", "replace").rstrip("\n")
                                for line in snapshot.history
                            ],
                        },
                    )
                )
            elif kind == "replay":
                _, conn, room_key, first = request
                self._put(REPLAYED, conn, (room_key, *self._replay(room_key, first)))
            requests[index] = ("done",)
        if len(writes):
            writes.execute()
        taken = iter(control.take_sessions(takes, node))
        for conn, token, session in answers:
            if isinstance(session, str):
                pass  # refused: an id the session never received
            elif session is not None and next(taken):
                key = name_key(session[0])
                self.names.add(key)
                self.unreleased.discard(key)
                self.sessions[token] = key
            else:
                session = None  # ended or expired meanwhile
            self._put(SESSION_FOUND, conn, (token, session))
        for index, request in enumerate(requests):
            if request[0] == "resume":
                requests[index] = ("done",)

    def _replay(self, room_key: str, first: int) -> tuple[Optional[str], list]:
        """The room's epoch and its log's entries from offset first on, as
        (offset, node, operations), each (node, seq) once: what a client that
        resumed here missed before this node's own record of the room."""
        epoch, entries = self.stream.read(room_key, first)
        seen = set()
        out = []
        for entry in entries:
            if (entry.node, entry.seq) in seen:
                continue  # a copy published again after a failover
            seen.add((entry.node, entry.seq))
            try:
                ops = decode(entry.ops[0], self.config.bus_max_entry)
                out.append((entry.offset, entry.node, ops))
            except BadEntry as err:
                self._bad(room_key, f"from node {entry.node}: {err}")
        return epoch, out

    def _rejoin(self) -> None:
        """This node was declared lost while alive (stalled): clear the
        marker, so that a loss for real later is handled, claim its names
        again, and write its whole directory again (the survivor that freed
        the names deleted it)."""
        self.control.unmark_lost(self.node)
        self._reclaim()
        self._directory_changed.update(self.directory_here)

    def _reclaim(self) -> None:
        taken = [key for key in sorted(self.names) if not self.control.claim(key, self.node)]
        if taken:
            log.warning(
                "%d of this node's names were taken by others while it was away", len(taken)
            )

    # ------------------------------------------------------------------
    # Heartbeats, the directory, lost nodes, lost data

    def _heart_loop(self) -> None:
        interval = self.config.node_timeout / BEATS_PER_TIMEOUT
        pause = RETRY_MIN
        while not self._closing:
            gevent.sleep(interval if self.up.is_set() else pause)
            try:
                self._beat()
            except FAILURES as err:
                self._fail(err)
                pause = min(RETRY_MAX, pause * 2)
                continue
            pause = RETRY_MIN

    def _beat(self) -> None:
        control = self.control
        epoch = control.epoch(uuid.uuid4().hex)
        data_lost = epoch != self.epoch
        control.beat(self.node, self._ttl_ms())
        if self.node in control.lost_nodes():
            # Declared lost while it had no member in any room (no room's
            # "lost" told it): it finds out here.
            log.warning("this node was declared lost; rejoining")
            self._rejoin()
        changed, self._directory_changed = self._directory_changed, {}
        if data_lost:
            changed = dict(self.directory_here)
        if changed:
            control.publish_directory(self.node, changed)
            for room, count in changed.items():
                if count <= 0:
                    self.directory_here.pop(room, None)
        nodes = control.nodes()
        gone = control.lost_nodes()
        alive = control.alive(nodes)
        live = [node for node, ok in alive.items() if ok]
        directory = control.directory(live)
        restrictions = control.restrictions(time.time())
        self._back(data_lost)
        if data_lost:
            self._data_lost(epoch)
        self._put(DIRECTORY, None, directory)
        self._put(RESTRICTIONS, None, restrictions)
        self.peers = set(live)
        self.lost -= self.peers
        for node in gone:
            if node not in self.lost and node != self.node and not alive.get(node):
                # Another survivor found it lost: its members leave where
                # this node knows them too.
                self.lost.add(node)
                self._put(NODE_LOST, None, (node, NODE_LOST_REASON))
        self._trim_window()
        if time.monotonic() - self.up_since < self.config.node_timeout:
            return  # after an outage everyone needs a beat to show up again
        for node, ok in alive.items():
            if not ok and node != self.node and node not in self.lost:
                self._declare_lost(node)

    def _data_lost(self, epoch: str) -> None:
        """Redis came back without the cluster's data."""
        self.stats["bus_data_lost"] += 1
        log.warning("Redis lost the cluster's data (its epoch changed)")
        self.epoch = epoch
        self._reclaim()
        self.publisher.republish_all()
        self._wake_writer.set()
        self._put(RESYNC, None, None)

    def retire(self, node: str) -> None:
        """node was this worker slot's previous process, dead (workers.py):
        declare it lost now instead of after --node-timeout."""
        try:
            self.client.delete(self.control.heartbeat(node))
            self._declare_lost(node)
        except FAILURES as err:
            self._fail(err)

    def _declare_lost(self, node: str) -> None:
        """node's heartbeat expired: its members leave.  Every survivor has
        the hub publish "lost" where it knows node's members; the one that
        frees node's names also publishes it into the rooms of node's
        directory (applying it twice changes nothing)."""
        self.lost.add(node)
        rooms = self.control.directory_of(node)
        # Its names first: whoever sees its members leave may take them.
        won = self.control.free_lost(node, LOST_MARK_TTL, self._window_ms()) is not None
        self._put(NODE_LOST, None, (node, NODE_LOST_REASON))
        if not won:
            return
        self.control.gone(node, time.time(), LOST_MARK_TTL)
        for room in rooms:
            ops = dumps([["lost", node, NODE_LOST_REASON]])
            self.publisher.submit(name_key(room), ops, (), ("!" + node,))
        self._wake_writer.set()
        self.stats["bus_nodes_lost"] += 1
        log.warning(
            "node %s lost (no heartbeat for %gs): its members leave",
            node,
            self.config.node_timeout,
        )
