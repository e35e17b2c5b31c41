"""One node's writes to the room logs (issue 17), groundwork: the server
does not use it yet.  The reading side is room_feed.py.

The hub hands over each batch's entries, per room, in order (submit); one
writer sends everything waiting in one pipeline per round (flush), so that
a node's own writes to a room land in the order it made them, which
concurrent writes to one stream would not promise.

Each room's entries carry this node's chain (room_log.RoomWriter).  The
publish script refuses an entry whose predecessor the room lacks, and says
where the room's chain ends: a failover lost the old master's last writes,
or Redis came back empty.  The writer then publishes again, in order, what
it keeps after that point, and the refused entries with it; entries the
room already has come back as copies (status 0) and count as published.
What the window no longer keeps is lost to the room, counted, and the
chain is moved on past it (the script's force flag), so that the room does
not refuse this node for good.

A round that fails (Redis unreachable, a master moving) leaves its entries
waiting, in order, for the next one: publishing them again is safe for the
same reason.
"""

import time
import uuid
from collections import deque
from typing import Callable, NamedTuple

from gchat.bus.room_log import RoomWriter
from gchat.bus.room_stream import RoomStream

# Rounds of publishing again within one flush before it gives up (each
# round is the reply to a refusal: a second failover in between is what
# needs more than one).
MAX_ROUNDS = 5


class Waiting(NamedTuple):
    room_key: str
    seq: int
    ops: str
    history: tuple
    force: bool = False  # past a gap the room will never fill (lost entries)
    members: tuple = ()  # room_stream.MEMBER_CHANGES
    again: float = 0.0  # published again: when a room first took it (wall clock)


class RoomPublisher:
    """See the module docstring."""

    def __init__(
        self,
        stream: RoomStream,
        node: str,
        window: int,
        new_epoch: Callable[[], str] = lambda: uuid.uuid4().hex,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stream = stream
        self._clock = clock
        # room -> {seq: when a room first took it}, for the entries kept: an
        # entry published again says so, and readers that started after
        # it was first published skip it (room_log.RoomReader.fresh).
        self.taken_at: dict[str, dict[int, float]] = {}
        self.node = node
        self.window = window
        self.new_epoch = new_epoch
        self.writers: dict[str, RoomWriter] = {}
        self.waiting: deque[Waiting] = deque()
        # room -> {seq: (history lines, member changes)} of the entries kept,
        # in seq order, to publish again with them
        self.extras: dict[str, dict[int, tuple[tuple, tuple]]] = {}
        # (room, seq) of what rooms took, for whoever counts it (drained by
        # the bus after each flush: the outage bound, the replay window).
        self.taken: list[tuple[str, int]] = []
        self.stats = {"published": 0, "copies": 0, "refusals": 0, "republished": 0, "lost": 0}

    def submit(self, room_key: str, ops: str, history: tuple = (), members: tuple = ()) -> int:
        """One entry of this node's into room_key (ops: its JSON); its
        sequence number in the room's chain.  Each room's writer (its
        chain's last number) is kept for the node's life: a number used
        again would be taken for a copy."""
        writer = self.writers.get(room_key)
        if writer is None:
            writer = self.writers[room_key] = RoomWriter(self.window)
        entry = writer.next([ops])
        self.waiting.append(Waiting(room_key, entry.seq, ops, history, False, members))
        if history or members:
            self.extras.setdefault(room_key, {})[entry.seq] = (history, members)
        return entry.seq

    def forget(self, room_key: str, upto: int) -> None:
        """Entries of room_key up to seq upto are no longer kept to publish
        again (older than the replay window)."""
        writer = self.writers.get(room_key)
        if writer is not None:
            writer.forget(upto)
        firsts = self.taken_at.get(room_key)
        if firsts:
            for seq in [seq for seq in firsts if seq <= upto]:
                del firsts[seq]
            if not firsts:
                del self.taken_at[room_key]
        extras = self.extras.get(room_key)
        if extras:
            for seq in [seq for seq in extras if seq <= upto]:
                del extras[seq]
            if not extras:
                del self.extras[room_key]

    def republish_all(self) -> None:
        """Redis lost its data: every room is to get again what this node
        keeps of it (entries the rooms have come back as copies)."""
        for room_key in self.writers:
            self._again(room_key, 0)

    def flush(self) -> int:
        """Publish everything waiting; returns how many entries the rooms
        took.  Raises what the client raises when Redis cannot be reached:
        the entries then wait for the next flush."""
        taken = 0
        for _ in range(MAX_ROUNDS):
            if not self.waiting:
                return taken
            batch = list(self.waiting)
            now = self._clock()
            outcomes = self.stream.publish_batch(
                [
                    (
                        w.room_key,
                        self.node,
                        w.seq,
                        w.ops,
                        self.new_epoch(),
                        w.history,
                        w.force,
                        w.members,
                        w.again,
                    )
                    for w in batch
                ]
            )
            refused: dict[str, int] = {}
            for item, outcome in zip(batch, outcomes):
                if outcome.status < 0:
                    refused.setdefault(item.room_key, outcome.value)
                    continue
                taken += 1
                self.stats["published" if outcome.status else "copies"] += 1
                self.taken.append((item.room_key, item.seq))
                firsts = self.taken_at.setdefault(item.room_key, {})
                if item.seq not in firsts:
                    firsts[item.seq] = now
            # Only what this round sent: the hub may have handed over more
            # while it was out (a greenlet switch at each round trip).
            for _ in batch:
                self.waiting.popleft()
            for room_key, last in refused.items():
                self.stats["refusals"] += 1
                self._again(room_key, last)
            # What this round refused waits again, in the order of the
            # rooms' chains (republished entries first within each room).
        return taken

    def _again(self, room_key: str, last: int) -> None:
        """The room's chain for this node ends at last: wait again with
        every kept entry after it, in order."""
        kept, lost = self.writers[room_key].after(last)
        if lost:
            self.stats["lost"] += lost
        for index, entry in enumerate(kept):
            history, members = self.extras.get(room_key, {}).get(entry.seq, ((), ()))
            # The first, past entries the room will never have, moves the
            # room's chain on (the script's force flag).
            force = index == 0 and lost > 0
            again = self.taken_at.get(room_key, {}).get(entry.seq, 0.0)
            self.waiting.append(
                Waiting(room_key, entry.seq, entry.ops[0], history, force, members, again)
            )
            self.stats["republished"] += 1
