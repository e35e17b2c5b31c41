"""One room's order on a sharded bus: the rules of positions, pure (no
Redis, no gevent, no clock).  Groundwork of the bus routed by interest
(issue 17; docs/cluster.md, "Where the cluster goes next"): the server
does not use it yet.

Each room has a log of its own in Redis (bus/room_stream.py): an offset
that counts its entries, an epoch that names the log's life (a Redis that
lost the room's keys starts a new one), and a chain per node: the last
sequence number of that node's entries in the room.  An entry is
(epoch, offset, node, seq, ops).

The reader's side, RoomReader: entries come by sharded pub/sub, in offset
order, but a message can be missed (a subscription that was moving, a
node that was slow), so:

- the next offset is applied;
- an offset past the next one is a gap, filled from the room's stream
  before it is applied;
- an entry applied already, by (node, seq), is skipped, whatever its
  offset (a retried publish, a republish);
- a new entry at or below the last offset applied means that the offsets
  were handed out again: a failover lost the master's last writes, and the
  new master numbered other entries with their offsets.  The position can
  no longer be trusted, so the stream is read again from its start;
- another epoch means the log was lost: the stream is read again from its
  start too;
- a gap, and a subscription that comes back (after a failover it comes back
  on the new master), are read from the stream from the last offset applied,
  included: if the entry there is not the one applied at that offset, the
  offsets were handed out again, and the stream is read from its start.

Exactly once is (node, seq); the offset only finds what was missed.

The writer's side, RoomWriter: each node numbers its entries per room, and
the publish script accepts only the next number of its chain.  A chain that
the script finds short (a failover lost the last writes, or Redis came back
empty) makes the node publish again, from its window, what the room lacks.
"""

from collections import deque
from enum import Enum
from typing import NamedTuple, Optional


class RoomEntry(NamedTuple):
    """One entry of a room's log, as a reader gets it."""

    epoch: str
    offset: int
    node: str
    seq: int
    ops: list
    # Published again (RoomWriter.after): when it was first published, in
    # seconds of the wall clock; 0.0 for an entry published once.
    again: float = 0.0


# Seconds of clock skew between nodes forgiven when a reader judges an entry
# published again by when it was first published (RoomReader.fresh).
AGAIN_SKEW = 1.0


class Verdict(Enum):
    """What a reader does with an entry it was handed."""

    APPLY = "apply"  # new, and next in order: apply it
    DUPLICATE = "duplicate"  # applied already (by node and seq): skip it
    GAP = "gap"  # entries are missing before it: read the stream first
    RESET = "reset"  # the log has a new epoch: read the stream from its start


class RoomReader:
    """What one node has applied of one room's log.  See the module docstring."""

    __slots__ = ("epoch", "offset", "applied", "at", "born")

    def __init__(self, epoch: Optional[str] = None, offset: int = 0, born: float = 0.0) -> None:
        """epoch and offset: where a snapshot of the room left it (a node
        that starts to host the room reads its members and history at that
        position, then everything after it); born: when (wall clock), so
        that an entry first published before it, and published again after
        Redis lost it, is not shown to members who were not there."""
        self.epoch = epoch
        self.offset = offset
        self.born = born
        self.applied: dict[str, int] = {}  # node id -> last seq applied
        # (node, seq) of the entry at `offset`, None at a snapshot's offset:
        # what a read of the stream from there must find first.
        self.at: Optional[tuple[str, int]] = None

    def judge(self, entry: RoomEntry) -> Verdict:
        """The verdict on entry, delivered live; nothing changes until
        mark() says it was seen."""
        if self.epoch is not None and entry.epoch != self.epoch:
            return Verdict.RESET
        if not self.fresh(entry):
            return Verdict.DUPLICATE
        if self.epoch is None:
            return Verdict.APPLY  # no position yet: whatever comes first
        if entry.offset <= self.offset:
            return Verdict.RESET  # offsets handed out again (see the module docstring)
        if entry.offset > self.offset + 1:
            return Verdict.GAP
        return Verdict.APPLY

    def fresh(self, entry: RoomEntry) -> bool:
        """Whether entry was never applied, by node and seq (the test for
        each entry read from the stream to fill a gap or after a reset),
        and is not an entry published again that predates this reader."""
        if entry.again and entry.again < self.born - AGAIN_SKEW:
            return False
        return entry.seq > self.applied.get(entry.node, 0)

    def mark(self, entry: RoomEntry) -> None:
        """entry was seen in order: applied, or skipped as a duplicate."""
        self.epoch = entry.epoch
        self.offset = entry.offset
        self.at = (entry.node, entry.seq)
        if entry.seq > self.applied.get(entry.node, 0):
            self.applied[entry.node] = entry.seq

    def continues(self, first: Optional[RoomEntry]) -> bool:
        """Whether a read of the stream from this reader's offset (included)
        continues what it applied: first, the entry found at that offset
        (None if there is none), is the one applied there.  If not, the
        stream is to be read from its start (reset())."""
        if self.at is None:
            return True  # a snapshot's position: nothing applied to compare
        if first is None or first.epoch != self.epoch or first.offset != self.offset:
            return False
        return (first.node, first.seq) == self.at

    def reset(self) -> None:
        """The stream is about to be read from its start: whatever offset
        and epoch it has.  What each node's entries were applied up to is
        kept, so that nothing is applied twice."""
        self.epoch = None
        self.offset = 0
        self.at = None


class Published(NamedTuple):
    """One entry a node keeps after publishing it, to publish it again."""

    seq: int
    ops: list


class RoomWriter:
    """One node's chain in one room: its next sequence number, and the
    entries it may have to publish again (at most `window` of them)."""

    __slots__ = ("seq", "window", "_kept", "taken")

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("a writer keeps at least one entry")
        self.seq = 0
        self.taken = 0  # the last seq a room acknowledged (acked())
        self.window = window
        self._kept: deque[Published] = deque()

    def acked(self, seq: int) -> None:
        """A room took this node's entry seq (the last it is known to have,
        before Redis may lose it)."""
        if seq > self.taken:
            self.taken = seq

    def next(self, ops: list) -> Published:
        """Number ops as this node's next entry in the room, and keep it."""
        self.seq += 1
        entry = Published(self.seq, ops)
        self._kept.append(entry)
        if len(self._kept) > self.window:
            self._kept.popleft()
        return entry

    def forget(self, upto: int) -> None:
        """Keep no entry numbered upto or less (older than the replay
        window: the room is taken to have them)."""
        kept = self._kept
        while kept and kept[0].seq <= upto:
            kept.popleft()

    def after(self, last: int) -> tuple[list[Published], int]:
        """The room's chain for this node ends at last (the publish script
        said so): the kept entries after it, to publish again in order, and
        how many entries after last are no longer kept (lost to the room:
        published before the window began)."""
        again = [entry for entry in self._kept if entry.seq > last]
        first_kept = again[0].seq if again else self.seq + 1
        return again, max(0, first_kept - last - 1)
