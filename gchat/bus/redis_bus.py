"""The cluster's bus over Redis: the I/O.  What entries mean is entry.py's
(pure); what the chat does with them is cluster.py's.

Why Redis Streams.  One stream (KEY:stream) carries every node's entries;
its IDs give the one order that every node applies, and a reader resumes
from the last ID it saw, so a node that is slow for a moment misses
nothing.  Centrifugo keeps its history in Redis Streams for the same
reasons, and detects lost history with an epoch, as this module does.  One
stream for the cluster orders every room; sharding rooms over several
streams is on paper in bench/RESULTS.md.  Pub/Sub would lose whatever a
node was not connected for, and a list per node would need a protocol of
our own.

Batches, not lines.  The hub hands the bus each batch as one entry (one
XADD, in a MULTI with the batch's history pushes, so that the history
lists keep the stream's order); the writer sends every entry waiting in one
round trip, and the reader takes up to bus_read_count entries per XREAD.

Exactly once, in order, across a Redis restart:
- every entry carries the node id and a per-node sequence number, and
  readers drop what they applied already (entry.Deduper);
- a node keeps what it published for bus_replay_window seconds (at most
  bus_replay_entries entries; only entries with chat or private lines,
  since every node says again who is where after a resync): reading its
  own entry back proves nothing
  about the others, one of which may have been stopped (SIGSTOP) when
  Redis died;
- KEY:epoch holds a random value, set by the first node that finds it
  missing.  Every write and heartbeat round trip reads it; a node that
  sees another value than its own knows that Redis lost the cluster's data.
  It then claims its names again, publishes its window and whatever waited
  during the outage, has the hub say who is here (cluster.ClusterChat.resync),
  and reads the new stream from its start;
- while Redis is down, what the hub hands over waits in `pending` (the
  hub refuses lines past bus_backlog, saying so to the sender).

Names: KEY:names is a hash from name key to node id; HSETNX in a script
makes a claim atomic cluster-wide.  KEY:node:ID:names lists a node's names
so that they can be freed when it is lost.  KEY:node:ID is its heartbeat,
renewed five times per node_timeout with that TTL; a node that finds a
known node's key gone (and has itself been connected for node_timeout, so
that a Redis restart is not taken for deaths) runs the LOST script, which
frees the names and publishes the departure once (KEY:lost:ID is the
marker).

gevent: redis-py talks through the socket module, which bus/__init__.py
monkey-patches before this module is imported, so every call here
waits cooperatively; hiredis parses replies in C.  The greenlets here (a
reader, a writer, a claimer and a heart) never touch the chat: they put
events on the hub's inbox.
"""

import logging
import os
import time
import uuid
from collections import deque
from typing import Any

import gevent
import redis
from gevent.event import Event
from gevent.queue import Queue
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.retry import Retry

from gchat.bus.entry import BadEntry, Deduper, decode, dumps, encode, fields
from gchat.events import BUS, CLAIMED, RESYNC
from gchat.protocol import (
    BUS_DOWN_FOR_NAME,
    NODE_LOST,
    NODE_STOPPED,
    REDIS_CLUSTER_UNSUPPORTED,
    name_key,
    render_name_taken,
)

log = logging.getLogger("gchat")

# Milliseconds an XREAD waits for entries before it asks again: short, so
# that a dead connection is noticed soon even on an idle cluster.
READ_BLOCK_MS = 1000
# Seconds between attempts to reach Redis while it is down, doubling up to
# the maximum: quick to notice a restart, and no busy loop.
RETRY_MIN = 0.05
RETRY_MAX = 1.0
# Heartbeats per node_timeout: a node is declared lost only after missing
# several in a row.
BEATS_PER_TIMEOUT = 5

CLAIM = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('SADD', KEYS[2], ARGV[1])
  return 1
end
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 1 end
return 0
"""
RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""
# KEYS: heartbeat, lost marker, the node's names, names, stream;
# ARGV: node id, marker TTL, stream max length, then the entry's fields.
# KEYS: heartbeat, lost marker, the node's names, names, stream, lost counter;
# ARGV: node id, marker TTL, stream max length, then the entry's fields but
# its sequence number, which is the node's count of losses: every survivor
# that runs this publishes the same entry (the marker lets only one), and a
# node lost again after it came back gets a new one, not a copy.
LOST = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return 0 end
for _, name in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if redis.call('HGET', KEYS[4], name) == ARGV[1] then redis.call('HDEL', KEYS[4], name) end
end
redis.call('DEL', KEYS[3])
local seq = redis.call('INCR', KEYS[6])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*', 's', seq, unpack(ARGV, 4))
return 1
"""
# What a node reads at start, in one atomic step: where the stream ends
# (it reads on from there) and every room's history.
SNAPSHOT = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local out = {'0-0'}
if #last > 0 then out[1] = last[1][1] end
local rooms = redis.call('HGETALL', KEYS[2])
for i = 1, #rooms, 2 do
  table.insert(out, {rooms[i + 1], redis.call('LRANGE', ARGV[1] .. rooms[i], 0, -1)})
end
return out
"""
# The node id under which a node's "lost" entry is published.
LOST_PREFIX = "~"
# The sequence number of a stopping node's own "lost" entry: above any count
# of losses, so that a survivor's later LOST entry for it is a copy.
STOPPED_SEQ = 1 << 40
# Seconds a LOST marker is kept: long past any heartbeat, so that the
# departure is published once.
LOST_MARK_TTL = 3600


# An entry as the bus holds it (RedisBus.pending, RedisBus.window).
_Held = tuple[int, str, str, int, tuple[tuple[str, str], ...]]


class BusError(Exception):
    """Redis cannot be used at start (unreachable, wrong password, a Redis
    Cluster)."""


class Keys:
    """Every Redis key of one cluster, under its name."""

    def __init__(self, cluster: str):
        self.prefix = cluster
        self.stream = f"{cluster}:stream"
        self.epoch = f"{cluster}:epoch"
        self.names = f"{cluster}:names"
        self.rooms = f"{cluster}:rooms"
        self.history = f"{cluster}:history:"

    def node(self, node: str) -> str:
        return f"{self.prefix}:node:{node}"

    def node_names(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:names"

    def lost(self, node: str) -> str:
        return f"{self.prefix}:lost:{node}"

    def losses(self, node: str) -> str:
        return f"{self.prefix}:losses:{node}"


class RedisBus:
    """One node's link to the cluster.  See the module docstring."""

    def __init__(self, config):
        self.config = config
        self.node = uuid.uuid4().hex[:12]
        self.keys = Keys(config.cluster)
        timeout = max(2.0, config.node_timeout)
        self.redis = redis.Redis.from_url(
            config.redis,
            socket_timeout=timeout + READ_BLOCK_MS / 1000,
            socket_connect_timeout=timeout,
            health_check_interval=0,
            retry=Retry(NoBackoff(), 0),
            client_name=f"gchat-{self.node}",
        )
        self._claim = self.redis.register_script(CLAIM)
        self._release = self.redis.register_script(RELEASE)
        self._lost = self.redis.register_script(LOST)
        self._snapshot = self.redis.register_script(SNAPSHOT)
        self.epoch = None
        self.seq = 0
        # Entries as (seq, node id, operations as JSON, chat lines, history
        # lines): small tuples, since an outage or the window holds many.
        self.pending: deque[_Held] = deque()  # entries not yet published, in order
        # (time published, entry): kept for a resync
        self.window: deque[tuple[float, _Held]] = deque()
        self.held_lines = 0  # chat lines in pending (the hub's bound)
        self.names = set()  # name keys this node holds in Redis
        self.unreleased = set()  # names to free once Redis answers again
        self.peers = {}  # node id -> None: nodes seen on the stream
        self.lost = set()  # nodes found lost (not checked again)
        self.dedupe = Deduper()
        self.last_id = "0-0"
        self.up = Event()
        self.up_since = 0.0
        self.down_since = 0.0
        self._wake_writer = Event()
        self._requests = Queue()
        self._put: Any = None  # the hub's put(kind, conn, payload), given by start()
        self._greenlets = []
        self._closing = False
        self.stats = {
            "bus_up": 0,
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

    def connect(self) -> dict:
        """Reach Redis and read the cluster's state, before serving:
        returns {room name: [history lines]}.  Raises BusError."""
        try:
            self.redis.ping()
            if self.redis.info("cluster").get("cluster_enabled"):
                raise BusError(REDIS_CLUSTER_UNSUPPORTED)
            self._take_epoch()
            snapshot = self._snapshot(
                keys=[self.keys.stream, self.keys.rooms], args=[self.keys.history]
            )
            self._beat()
        except AuthenticationError as err:
            raise BusError(f"Redis refused the password: {err}") from None
        except ResponseError as err:
            if "NOAUTH" in str(err) or "WRONGPASS" in str(err):
                raise BusError(f"Redis refused the password: {err}") from None
            raise BusError(f"Redis answered with an error: {err}") from None
        except (RedisError, OSError) as err:
            raise BusError(f"cannot reach Redis: {err}") from None
        self.last_id = snapshot[0].decode() if isinstance(snapshot[0], bytes) else snapshot[0]
        histories = {}
        for name, lines in snapshot[1:]:
            histories[name.decode("utf-8", "replace")] = list(lines)
        self._set_up()
        return histories

    def start(self, put):
        """Serve: put(kind, conn, payload) sends the hub an event."""
        self._put = put
        self.submit([["hello"]], [])
        for run in (self._read_loop, self._write_loop, self._claim_loop, self._heart_loop):
            self._greenlets.append(gevent.spawn(run))

    def close(self, timeout: float):
        """Publish what waits (up to timeout seconds), then let the names go
        and remove the heartbeat: the others see this node's members leave
        through the entries already published."""
        # The others let this node's members go at this point of the order
        # (those who left already left); under the id that a survivor's
        # LOST script would use, so that only one of the two is applied.
        self.pending.append(
            (
                STOPPED_SEQ,
                LOST_PREFIX + self.node,
                dumps([["lost", self.node, NODE_STOPPED]]),
                0,
                (),
            )
        )
        self._wake_writer.set()
        deadline = time.monotonic() + timeout
        while (self.pending and self.up.is_set()) and time.monotonic() < deadline:
            self._wake_writer.set()
            gevent.sleep(0.01)
        self._closing = True
        gevent.killall(self._greenlets, timeout=1)
        if self.pending:
            log.warning(
                "stopping with %d bus entries unpublished (Redis unavailable)", len(self.pending)
            )
        try:
            pipe = self.redis.pipeline(transaction=True)
            for key in self.names:
                self._release(
                    keys=[self.keys.names, self.keys.node_names(self.node)],
                    args=[key, self.node],
                    client=pipe,
                )
            pipe.delete(self.keys.node(self.node))
            pipe.execute()
        except (RedisError, OSError) as err:
            log.warning("could not free this node's names in Redis: %s", err)
        self.redis.close()

    # ------------------------------------------------------------------
    # From the hub

    def submit(self, ops: list, requests: list) -> int:
        """One hub batch: its operations become one entry (or several, if
        one would pass half of bus_max_entry, what every reader accepts);
        the sequence number of the last is returned.  Its requests (claims,
        releases) go to the claimer."""
        if ops:
            for part, text in self._parts(ops):
                self.seq += 1
                lines = 0
                history = []
                for op in part:
                    if op[0] == "say" or op[0] == "msg":
                        lines += 1
                        if op[0] == "say" and op[3]:
                            history.append((op[1], op[2]))
                self.pending.append((self.seq, self.node, text, lines, tuple(history)))
                self.held_lines += lines
            self._wake_writer.set()
        for request in requests:
            self._requests.put(request)
        return self.seq

    def _parts(self, ops: list) -> list:
        """ops in pieces (with their JSON) that each encode to at most half
        of bus_max_entry: one piece, but for a batch of thousands of long
        lines."""
        text = dumps(ops)
        if len(ops) == 1 or len(text.encode("utf-8")) <= self.config.bus_max_entry // 2:
            return [(ops, text)]
        half = len(ops) // 2
        return self._parts(ops[:half]) + self._parts(ops[half:])

    def snapshot(self) -> dict:
        """Counters for /stats."""
        return {
            **self.stats,
            "bus_up": int(self.up.is_set()),
            "bus_pending": len(self.pending),
            "bus_held_lines": self.held_lines,
            "bus_window": len(self.window),
            "nodes": 1 + len([n for n in self.peers if n not in self.lost]),
        }

    # ------------------------------------------------------------------
    # Redis up and down

    def _take_epoch(self) -> bool:
        """Read the cluster's epoch (setting it if missing); True if it is
        not the one this node knew, i.e. Redis lost the cluster's data."""
        self.redis.set(self.keys.epoch, uuid.uuid4().hex, nx=True)
        epoch = self.redis.get(self.keys.epoch)
        changed = self.epoch is not None and epoch != self.epoch
        self.epoch = epoch
        return changed

    def _set_up(self):
        self.up_since = time.monotonic()
        self.up.set()

    def _fail(self, why):
        """A call failed: Redis is down (or lost our data); the keeper
        greenlet that noticed first brings the link back."""
        if not self.up.is_set():
            return
        self.up.clear()
        self.down_since = time.monotonic()
        self.stats["bus_outages"] += 1
        log.error(
            "lost the cluster's Redis: %s; holding entries (bound: %d lines)",
            why,
            self.config.bus_backlog,
        )
        gevent.spawn(self._recover)

    def _recover(self):
        delay = RETRY_MIN
        while not self._closing:
            gevent.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            try:
                self.redis.ping()
                lost = self._take_epoch()
                if lost:
                    self._resync()
                self._beat()
            except (RedisError, OSError):
                continue
            self.stats["bus_recoveries"] += 1
            log.warning(
                "Redis is back%s; %d entries to publish",
                " without the cluster's data: publishing again" if lost else "",
                len(self.pending),
            )
            self._set_up()
            self._wake_writer.set()
            return

    def _resync(self):
        """Redis came back empty: claim our names again, publish the window
        again before what waits, read the new stream from its start."""
        self.stats["bus_data_lost"] += 1
        # What was published within the window before Redis was lost.
        horizon = self.down_since - self.config.bus_replay_window
        keep = [item for published, item in self.window if published >= horizon]
        self.stats["bus_republished"] += len(keep)
        self.pending.extendleft(reversed(keep))
        self.held_lines += sum(item[3] for item in keep)  # they count as held again
        self.window.clear()
        first = self.pending[0][0] if self.pending else self.seq + 1
        self.unreleased.clear()  # nothing is held any more
        taken = 0
        for key in list(self.names):
            if not self._claim(
                keys=[self.keys.names, self.keys.node_names(self.node)], args=[key, self.node]
            ):
                taken += 1
        if taken:
            log.warning("%d of this node's names were taken by others while Redis was down", taken)
        self.last_id = "0-0"
        if self._put is not None:
            self._put(RESYNC, None, first)

    def _beat(self):
        ttl = int(self.config.node_timeout * 1000)
        self.redis.set(self.keys.node(self.node), os.getpid(), px=ttl)

    def _epoch_ok(self, epoch) -> bool:
        if epoch == self.epoch:
            return True
        self._fail("Redis lost the cluster's data (its epoch changed)")
        return False

    # ------------------------------------------------------------------
    # The greenlets

    def _read_loop(self):
        keys = self.keys
        max_entry = self.config.bus_max_entry
        while not self._closing:
            self.up.wait()
            # No epoch check here (the writer and the heart make one): a
            # stream's IDs grow with the clock, so after a restart the new
            # stream's entries, republished ones included, all come after
            # the last ID read, and reading on is right either way.  One
            # command per read keeps a read round trip cheap.
            try:
                # RESP2's [[stream, [(id, {field: value}), ...]]]; redis-py types
                # it as a union with RESP3's dict.
                reply: Any = self.redis.xread(
                    {keys.stream: self.last_id},
                    count=self.config.bus_read_count,
                    block=READ_BLOCK_MS,
                )
            except (RedisError, OSError) as err:
                self._fail(err)
                continue
            entries = []
            for _, items in reply or ():
                for entry_id, raw in items:
                    self.last_id = entry_id
                    try:
                        entry = decode(raw, max_entry)
                    except BadEntry as err:
                        self.stats["bus_bad_entries"] += 1
                        log.warning("skipped bus entry %s: %s", entry_id.decode(), err)
                        continue
                    self.stats["bus_read"] += 1
                    if entry.node.startswith(LOST_PREFIX):
                        for op in entry.ops:  # found lost by someone: no need to check it
                            if op[0] == "lost":
                                self.lost.add(op[1])
                    elif entry.node != self.node:
                        self.peers[entry.node] = None
                        self.lost.discard(entry.node)  # declared lost, but alive
                    if self.dedupe.fresh(entry):
                        entries.append(entry)
                    else:
                        self.stats["bus_duplicates"] += 1
            if entries:
                self._put(BUS, None, entries)

    def _write_loop(self):
        keys = self.keys
        maxlen = self.config.bus_stream_max
        history = self.config.history
        while not self._closing:
            self._wake_writer.wait()
            self._wake_writer.clear()
            self.up.wait()
            while self.pending and self.up.is_set():
                batch = list(self.pending)
                try:
                    pipe = self.redis.pipeline(transaction=True)
                    pipe.get(keys.epoch)
                    for seq, node, text, _, lines in batch:
                        # (redis-py wants a dict of its own key and value unions.)
                        pipe.xadd(
                            keys.stream,
                            fields(node, seq, text),  # type: ignore[arg-type]
                            maxlen=maxlen,
                            approximate=True,
                        )
                        for room, line in lines:
                            if history:
                                room_key = name_key(room)
                                pipe.hset(keys.rooms, room_key, room)
                                pipe.rpush(keys.history + room_key, (line + "\n").encode())
                                pipe.ltrim(keys.history + room_key, -history, -1)
                    replies = pipe.execute()
                except (RedisError, OSError) as err:
                    self._fail(err)
                    break
                now = time.monotonic()
                for item in batch:
                    # By identity: a resync may have put entries back in
                    # front of them meanwhile (then those go out next).
                    pending = self.pending
                    if pending and pending[0] is item:
                        pending.popleft()
                    else:
                        try:
                            pending.remove(item)
                        except ValueError:
                            continue
                    self.held_lines -= item[3]
                    if item[3]:
                        # Only entries with lines are kept to publish again:
                        # who is where, the rest, is said again by every
                        # node's "present" after a resync, so a join storm
                        # does not fill the window.
                        self.window.append((now, item))
                self.stats["bus_published"] += len(batch)
                self._trim_window(now)
                if not self._epoch_ok(replies[0]):
                    break  # they went into a new stream: the resync publishes them again

    def _trim_window(self, now):
        window = self.window
        horizon = now - self.config.bus_replay_window
        while window and (window[0][0] < horizon or len(window) > self.config.bus_replay_entries):
            window.popleft()

    def _claim_loop(self):
        """Claims, releases and re-claims, in the order the hub asked (a
        name released and claimed again in one drain stays claimed), all
        waiting ones in one round trip."""
        keys = [self.keys.names, self.keys.node_names(self.node)]
        while not self._closing:
            requests = [self._requests.get()]
            while not self._requests.empty():
                requests.append(self._requests.get())
            for request in requests:
                if request[0] == "release":
                    self.names.discard(request[1])
                    self.unreleased.add(request[1])  # until Redis has done it
            claims = [r for r in requests if r[0] == "claim"]
            if not self.up.is_set():
                for _, conn, name in claims:
                    self._put(CLAIMED, conn, (name, BUS_DOWN_FOR_NAME))
                continue
            try:
                pipe = self.redis.pipeline(transaction=False)
                older = self.unreleased - {r[1] for r in requests if r[0] == "release"}
                for key in older:  # asked for during an outage
                    self._release(keys=keys, args=[key, self.node], client=pipe)
                reasserted = []
                for request in requests:
                    if request[0] == "claim":
                        self._claim(keys=keys, args=[name_key(request[2]), self.node], client=pipe)
                    elif request[0] == "release":
                        self._release(keys=keys, args=[request[1], self.node], client=pipe)
                    elif request[0] == "reassert":
                        # Declared lost while alive (stalled): claim the names
                        # again, and clear the marker, so that a real loss
                        # later is published.
                        pipe.delete(self.keys.lost(self.node))
                        reasserted = list(self.names)
                        for key in reasserted:
                            self._claim(keys=keys, args=[key, self.node], client=pipe)
                results = pipe.execute()
            except (RedisError, OSError) as err:
                self._fail(err)
                for _, conn, name in claims:
                    self._put(CLAIMED, conn, (name, BUS_DOWN_FOR_NAME))
                continue
            self.unreleased.clear()
            replies = iter(results[len(older) :])
            for request in requests:
                if request[0] == "claim":
                    _, conn, name = request
                    ok = next(replies)
                    if ok:
                        self.names.add(name_key(name))
                    self._put(CLAIMED, conn, (name, None if ok else render_name_taken(name)))
                elif request[0] == "release":
                    next(replies)
                elif request[0] == "reassert":
                    next(replies)  # the DEL
                    taken = sum(1 for _ in reasserted if not next(replies))
                    if taken:
                        log.warning(
                            "%d of this node's names were taken by others while it "
                            "was declared lost",
                            taken,
                        )

    def _heart_loop(self):
        keys = self.keys
        interval = self.config.node_timeout / BEATS_PER_TIMEOUT
        while not self._closing:
            gevent.sleep(interval)
            if not self.up.is_set():
                continue  # the window is what an outage may need again
            self._trim_window(time.monotonic())  # when nothing is published too
            peers = [node for node in self.peers if node not in self.lost]
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.get(keys.epoch)
                pipe.set(keys.node(self.node), os.getpid(), px=int(self.config.node_timeout * 1000))
                for node in peers:
                    pipe.exists(keys.node(node))
                replies = pipe.execute()
            except (RedisError, OSError) as err:
                self._fail(err)
                continue
            if not self._epoch_ok(replies[0]):
                continue
            if time.monotonic() - self.up_since < self.config.node_timeout:
                continue  # after an outage everyone needs a beat to show up again
            for node, alive in zip(peers, replies[2:]):
                if not alive:
                    self._declare_lost(node)

    def retire(self, node: str):
        """node was this worker slot's previous process, dead (workers.py):
        declare it lost now instead of after --node-timeout."""
        try:
            self.redis.delete(self.keys.node(node))
        except (RedisError, OSError) as err:
            self._fail(err)
            return
        self._declare_lost(node)

    def _declare_lost(self, node):
        self.lost.add(node)
        # Not under this node's id and sequence: whichever survivor
        # publishes it, it is the same entry, and readers apply it once.
        lost = encode(LOST_PREFIX + node, 1, [["lost", node, NODE_LOST]])
        del lost["s"]  # the script numbers it
        keys = self.keys
        try:
            published = self._lost(
                keys=[
                    keys.node(node),
                    keys.lost(node),
                    keys.node_names(node),
                    keys.names,
                    keys.stream,
                    keys.losses(node),
                ],
                args=[
                    node,
                    LOST_MARK_TTL,
                    self.config.bus_stream_max,
                    *[x for pair in lost.items() for x in pair],
                ],
            )
        except (RedisError, OSError) as err:
            self.lost.discard(node)
            self._fail(err)
            return
        if published:
            self.stats["bus_nodes_lost"] += 1
            log.warning(
                "node %s lost (no heartbeat for %gs): its members leave",
                node,
                self.config.node_timeout,
            )
