"""The rooms a node hosts, read from their logs: subscriptions by interest
(issue 17), groundwork: the server does not use it yet.

A node subscribes to a room's sharded channel (room_stream.RoomKeys.channel)
when the room gets its first local member, and unsubscribes when the last
one leaves; it receives nothing of the rooms it does not host.  What it is
handed goes through the room's RoomReader (room_log.py):

- the next entry is delivered;
- a gap is read from the room's stream, from the last offset applied;
- a reset (a new epoch, or offsets handed out again after a failover)
  reads the stream from its start, and (node, seq) keeps what was
  delivered from being delivered twice.

A subscription is caught up from the stream each time Redis confirms it,
the first time and after every return: what was published while it was
away (a failover, a slot that moved) exists only in the stream.

Redis 7.0 ends a shard channel's subscription with an `sunsubscribe` when
its slot moves to another master, and redis-py 8.2 does not subscribe again
by itself until its client happens to refresh its slot map
(tests/test_redis_cluster_procs.py shows it); an `sunsubscribe` this feed
did not ask for is therefore answered by subscribing again at once, and the
catch-up on its confirmation fills what was published in between.

gevent: redis-py's cluster client refreshes its slot map and moves sharded
subscriptions on threads of its own, so a node on a Redis Cluster must
patch threads and queues as well as sockets (tests/test_room_feed.py runs
the feed so through a reshard); with sockets alone, those threads touch
the loop's sockets and fail.
"""

import time
from typing import Any, Callable, Optional

from gchat.bus.room_log import RoomEntry, RoomReader, Verdict
from gchat.bus.room_stream import RoomStream, Snapshot, parse_message


class RoomFeed:
    """One node's subscriptions.  deliver(room_key, entry) is called for
    every entry in order, once; pubsub: redis-py's pub/sub object (of a
    redis.Redis or a RedisCluster), which this feed alone reads."""

    def __init__(
        self,
        stream: RoomStream,
        pubsub: Any,
        deliver: Callable[[str, RoomEntry], None],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.stream = stream
        self.pubsub = pubsub
        self.deliver = deliver
        self.readers: dict[str, RoomReader] = {}
        self.by_channel: dict[bytes, str] = {}
        self.leaving: set[str] = set()  # unsubscribed on purpose
        self.stats = {
            "delivered": 0,
            "duplicates": 0,
            "gaps": 0,
            "resets": 0,
            "resubscribed": 0,
            "bad": 0,
        }
        # Told of what is skipped, with why: (room_key, reason).
        self.bad: Callable[[str, str], None] = lambda room_key, why: None
        self._clock = clock
        self._wall = wall  # when a room starts to be read (RoomReader.born)

    def host(self, room_key: str, name: str = "") -> Snapshot:
        """Start reading room_key: its snapshot, as of the position from
        which entries will be delivered (name: as this node spells it)."""
        snapshot = self.stream.snapshot(room_key, name)
        reader = RoomReader(snapshot.epoch, snapshot.offset, born=self._wall())
        # What the snapshot holds counts as applied: a copy of it published
        # again later (after a failover) is not applied twice.
        reader.applied.update(snapshot.chains)
        self.readers[room_key] = reader
        channel = self.stream.keys(room_key).channel
        self.by_channel[channel.encode()] = room_key
        self.leaving.discard(room_key)
        self.pubsub.ssubscribe(channel)
        return snapshot

    def drop(self, room_key: str) -> None:
        """Stop reading room_key (its last local member left)."""
        if self.readers.pop(room_key, None) is None:
            return
        channel = self.stream.keys(room_key).channel
        self.leaving.add(room_key)
        self.pubsub.sunsubscribe(channel)

    def poll(self, timeout: float) -> Optional[int]:
        """Handle what the subscriptions bring within timeout seconds (one
        message at most); returns how many entries were delivered, None if
        no message came."""
        message = self.pubsub.get_sharded_message(timeout=timeout)
        if message is None:
            return None
        room_key = self.by_channel.get(_bytes(message["channel"]))
        if room_key is None:
            return 0
        kind = message["type"]
        if kind == "ssubscribe":
            return self.catch_up(room_key)
        if kind == "sunsubscribe":
            if room_key in self.leaving:
                self.leaving.discard(room_key)
                del self.by_channel[_bytes(message["channel"])]
            elif room_key in self.readers:
                # The slot moved (or its master went): subscribe again; the
                # confirmation catches up.
                self.stats["resubscribed"] += 1
                self.pubsub.ssubscribe(self.stream.keys(room_key).channel)
            return 0
        if kind != "smessage" or room_key not in self.readers:
            return 0
        try:
            entry = parse_message(_bytes(message["data"]))
        except ValueError as err:
            # Another program's message on the channel: the stream holds
            # only what the script wrote, so nothing is missed.
            self.stats["bad"] += 1
            self.bad(room_key, f"message does not parse: {err}")
            return 0
        return self._live(room_key, entry)

    def catch_up(self, room_key: str) -> int:
        """Read what the room's stream holds after what was delivered."""
        reader = self.readers.get(room_key)
        if reader is None:
            return 0
        return self._read(room_key, reader)

    def _live(self, room_key: str, entry: RoomEntry) -> int:
        reader = self.readers[room_key]
        verdict = reader.judge(entry)
        if verdict is Verdict.APPLY:
            reader.mark(entry)
            self._deliver(room_key, entry)
            return 1
        if verdict is Verdict.DUPLICATE:
            self.stats["duplicates"] += 1
            return 0
        if verdict is Verdict.RESET:
            self.stats["resets"] += 1
            reader.reset()
        else:
            self.stats["gaps"] += 1
        return self._read(room_key, reader)

    def _read(self, room_key: str, reader: RoomReader) -> int:
        """Deliver the stream's fresh entries after the reader's position.
        The read starts at its offset, included, to check that the stream
        continues what was delivered; if it does not (a new epoch, offsets
        handed out again), the stream is read from its start."""
        epoch, entries = self.stream.read(room_key, reader.offset or 1)
        if epoch is None:
            return 0  # the room has no log (yet, or any more)
        if reader.offset:
            first = entries[0] if entries and entries[0].offset == reader.offset else None
            if epoch != reader.epoch or not reader.continues(first):
                self.stats["resets"] += 1
                reader.reset()
                epoch, entries = self.stream.read(room_key, 1)
            elif first is not None:
                entries = entries[1:]
        delivered = 0
        for entry in entries:
            if reader.fresh(entry):
                self._deliver(room_key, entry)
                delivered += 1
            reader.mark(entry)
        return delivered

    def _deliver(self, room_key: str, entry: RoomEntry) -> None:
        self.stats["delivered"] += 1
        self.deliver(room_key, entry)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
