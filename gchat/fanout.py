"""What one wake-up of the broadcaster says, rendered once for everyone.

The room (room.py) speaks through a Fanout: broadcast() for lines that
every member receives, send() for a line to one client, joined() and
departed() when the set of members changes in the middle of a batch.
flush() then joins all broadcasts into one bytes object and hands each
member that same object; only clients with something of their own in this
batch (a private line, an arrival, a departure) get a view built for them,
from slices of the same bytes.  So a broadcast to N members costs one
append, and a flush costs one delivery per member, whatever the batch size.

Pure: no sockets, no gevent.  deliver(conn, data) is given by the caller.
"""


class _View:
    """How one client's share of a batch differs from the plain broadcast."""

    __slots__ = ("start", "stop", "inserts")

    def __init__(self, start):
        # start: offset into the batch where the client began receiving
        # broadcasts (None: it never did, e.g. still choosing a name).
        self.start = start
        self.stop = None  # offset where it stopped (it left), None: the end
        self.inserts = []  # (offset, bytes) of lines for this client alone

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

    __slots__ = ("_parts", "_size", "_views", "lines")

    def __init__(self):
        self._parts = []
        self._size = 0
        self._views = {}
        self.lines = 0  # broadcast lines in this batch (for the stats)

    @property
    def pending(self) -> bool:
        return bool(self._parts or self._views)

    def broadcast(self, line: str):
        data = (line + "\n").encode("utf-8")
        self._parts.append(data)
        self._size += len(data)
        self.lines += 1

    def _view(self, conn, member: bool) -> _View:
        view = self._views.get(conn)
        if view is None:
            view = self._views[conn] = _View(0 if member else None)
        return view

    def send(self, conn, line: str, member: bool = True):
        """One line to conn alone, in order with the broadcasts around it.

        member says whether conn receives broadcasts at this point."""
        self._view(conn, member).inserts.append((self._size, (line + "\n").encode("utf-8")))

    def joined(self, conn):
        """conn receives broadcasts from now on (it was not a member)."""
        self._view(conn, False).start = self._size

    def departed(self, conn, member: bool):
        """conn receives no more broadcasts from now on."""
        view = self._view(conn, member)
        view.stop = self._size

    def flush(self, members, deliver) -> int:
        """Deliver the batch: the broadcast to every conn in members, plus
        every view.  Returns the number of deliveries (lines x recipients)."""
        blob = b"".join(self._parts)
        views = self._views
        plain = 0
        if blob:
            for conn in members:
                if conn in views:
                    continue
                deliver(conn, blob)
                plain += 1
        for conn, view in views.items():
            data = view.render(blob)
            if data:
                deliver(conn, data)
        self._parts = []
        self._size = 0
        self._views = {}
        deliveries = self.lines * plain
        self.lines = 0
        return deliveries
