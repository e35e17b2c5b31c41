"""What one wake-up of the broadcaster says, rendered once for everyone.

The room (room.py) speaks through a Fanout: broadcast() for lines that
every member receives, send() for a line to one client, joined() and
departed() when the set of members changes in the middle of a batch.
flush() then joins all broadcasts into one bytes object and hands each
member that same object; only clients with something of their own in this
batch (a private line, an arrival, a departure) get a view built for them,
from slices of the same bytes.  So a broadcast to N members costs one
append, and a flush costs one delivery per member, whatever the batch size.

With rooms there is one Fanout per room.  A Fanout that gets its first
output of a batch appends its owner (the room) to a list shared by all
rooms, so that the hub flushes only the rooms that have something to say,
not all of them.  A client that moves to another room in the middle of a
batch takes its share so far along (detach), so that everything it is
sent stays in order across the two rooms.

Pure: no sockets, no gevent.  deliver(conn, data) is given by the caller.
"""

from collections.abc import Hashable, Iterable
from typing import Any, Callable, Optional


class _View:
    """How one client's share of a batch differs from the plain broadcast."""

    __slots__ = ("start", "stop", "inserts")

    def __init__(self, start: Optional[int]) -> None:
        # start: offset into the batch where the client began receiving
        # broadcasts (None: it never did, e.g. still choosing a name).
        self.start = start
        self.stop: Optional[int] = None  # offset where it stopped (it left), None: the end
        self.inserts: list[tuple[int, bytes]] = []  # (offset, bytes) of lines for this client alone

    def render(self, blob: bytes) -> bytes:
        if self.start is None:
            return b"".join(data for _, data in self.inserts)
        stop = len(blob) if self.stop is None else self.stop
        cursor = self.start
        out = []
        for offset, data in self.inserts:
            offset = min(offset, stop)
            if offset > cursor:
                out.append(blob[cursor:offset])
                cursor = offset
            out.append(data)
        if stop > cursor:
            out.append(blob[cursor:stop])
        return b"".join(out)


class Fanout:
    """Collects one batch of output and delivers it in order."""

    __slots__ = ("_parts", "_size", "_views", "lines", "_owner", "_dirty", "_queued", "sent_bytes")

    def __init__(self, owner: object = None, dirty: Optional[list[Any]] = None) -> None:
        """owner is appended to the list dirty when this Fanout gets the
        first output of a batch (both None: nobody is told)."""
        self._parts: list[bytes] = []
        self._size = 0
        self._views: dict[Hashable, _View] = {}
        self.lines = 0  # broadcast lines in this batch (for the stats)
        self.sent_bytes = 0  # bytes handed to deliver, all batches (for the stats)
        self._owner = owner
        self._dirty = dirty
        self._queued = False

    def _mark(self) -> None:
        self._queued = True
        if self._dirty is not None:
            self._dirty.append(self._owner)

    def broadcast(self, line: str) -> bytes:
        """line to every member; returns it encoded (for the history)."""
        data = (line + "\n").encode("utf-8")
        if not self._queued:
            self._mark()
        self._parts.append(data)
        self._size += len(data)
        self.lines += 1
        return data

    def _view(self, conn: Hashable, member: bool) -> _View:
        if not self._queued:
            self._mark()
        view = self._views.get(conn)
        if view is None:
            view = self._views[conn] = _View(0 if member else None)
        return view

    def send(self, conn: Hashable, line: str, member: bool = True) -> None:
        """One line to conn alone, in order with the broadcasts around it.

        member says whether conn receives broadcasts at this point."""
        self.send_bytes(conn, (line + "\n").encode("utf-8"), member)

    def send_bytes(self, conn: Hashable, data: bytes, member: bool = True) -> None:
        """Encoded lines to conn alone, as one piece (send's twin)."""
        self._view(conn, member).inserts.append((self._size, data))

    def detach(self, conn: Hashable, member: bool) -> bytes:
        """conn leaves for another room's Fanout: its share of this batch
        so far, which the other Fanout delivers first.  member says whether
        conn has been receiving broadcasts here."""
        view = self._views.pop(conn, None)
        if view is None:
            if not member or not self._parts:
                return b""
            view = _View(0)
        parts = self._parts
        if len(parts) > 1:  # joined once, however many clients leave
            parts[:] = [b"".join(parts)]
        view.stop = self._size
        return view.render(parts[0] if parts else b"")

    def joined(self, conn: Hashable) -> None:
        """conn receives broadcasts from now on (it was not a member)."""
        self._view(conn, False).start = self._size

    def departed(self, conn: Hashable, member: bool) -> None:
        """conn receives no more broadcasts from now on."""
        view = self._view(conn, member)
        view.stop = self._size

    def flush(self, members: Iterable[Hashable], deliver: Callable[[Any, bytes], object]) -> int:
        """Deliver the batch: the broadcast to every conn in members, plus
        every view.  Returns the number of deliveries: broadcast lines x
        recipients, a member with a view of its own counted for the
        broadcasts in its share.  sent_bytes adds up every byte handed
        to deliver."""
        blob = b"".join(self._parts)
        views = self._views
        plain = 0
        if blob:
            for conn in members:
                if conn in views:
                    continue
                deliver(conn, blob)
                plain += 1
        deliveries = self.lines * plain
        sent = len(blob) * plain
        for conn, view in views.items():
            data = view.render(blob)
            if data:
                deliver(conn, data)
                sent += len(data)
                if view.start is not None:  # the broadcasts in its share count too
                    stop = len(blob) if view.stop is None else view.stop
                    deliveries += blob.count(b"\n", view.start, stop)
        self._parts = []
        self._size = 0
        self._views = {}
        self._queued = False
        self.lines = 0
        self.sent_bytes += sent
        return deliveries
