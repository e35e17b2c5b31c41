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

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Any, Callable, Optional


class _View:
    """How one client's share of a batch differs from the plain broadcast."""

    __slots__ = ("start", "stop", "inserts", "tag_from")

    def __init__(self, start: Optional[int], tag_from: Optional[int] = None) -> None:
        # start: offset into the batch where the client began receiving
        # broadcasts (None: it never did, e.g. still choosing a name).
        self.start = start
        self.stop: Optional[int] = None  # offset where it stopped (it left), None: the end
        self.inserts: list[tuple[int, bytes]] = []  # (offset, bytes) of lines for this client alone
        # Offset from which it receives the broadcasts with their ids (a
        # session client, sessions.py), None: never in this batch.
        self.tag_from = tag_from

    def render(self, blob: bytes, tagged: bytes = b"", where: Optional[dict] = None) -> bytes:
        """Its share: blob's lines from start to stop, with the inserts at
        their offsets; from tag_from on, the same lines taken from tagged
        (where: offset in blob -> offset in tagged, at every line end)."""
        if self.start is None:
            return b"".join(data for _, data in self.inserts)
        stop = len(blob) if self.stop is None else self.stop
        split = self.tag_from
        out: list[bytes] = []

        def emit(first: int, last: int) -> None:
            if split is not None and where is not None and last > split:
                if first < split:
                    out.append(blob[first:split])
                    first = split
                out.append(tagged[where[first] : where[last]])
            else:
                out.append(blob[first:last])

        cursor = self.start
        for offset, data in self.inserts:
            offset = min(offset, stop)
            if offset > cursor:
                emit(cursor, offset)
                cursor = offset
            out.append(data)
        if stop > cursor:
            emit(cursor, stop)
        return b"".join(out)


class Fanout:
    """Collects one batch of output and delivers it in order.

    Line ids (sessions.py): every broadcast line is the next of the room's
    order (`seq`).  Once the room is tracked (`track`: a session client came
    in), each line is also rendered once with its id, `@EPOCH:SEQ LINE`,
    and kept in `log` (the last `log.maxlen` of them) for resumes; the
    members in `tagged` receive that rendering.  A room no session client
    ever entered pays one integer increment per line."""

    __slots__ = (
        "_parts",
        "_size",
        "_views",
        "lines",
        "_owner",
        "_dirty",
        "_queued",
        "sent_bytes",
        "seq",
        "epoch",
        "log",
        "log_base",
        "tagged",
        "_tparts",
        "_tsize",
        "_where",
        "_prefix",
    )

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
        self.seq = 0  # the last line's place in the room's order
        self.epoch = ""  # the room's epoch, for ids (set by the room)
        self.log: Optional[deque[tuple[int, bytes]]] = None  # (seq, tagged line), once tracked
        # Every line after this SEQ is in log (SEQs may skip numbers: in a
        # cluster a line's SEQ is its place in the room's log, cluster.py).
        self.log_base = 0
        self.tagged: set[Hashable] = set()  # members that receive ids
        self._tparts: list[bytes] = []  # this batch's broadcasts with their ids
        self._tsize = 0
        self._where: dict[int, int] = {0: 0}  # offset in _parts -> offset in _tparts
        self._prefix = b""

    def _mark(self) -> None:
        self._queued = True
        if self._dirty is not None:
            self._dirty.append(self._owner)

    def track(self, keep: int) -> None:
        """Render ids and keep the last keep tagged lines from now on."""
        if self.log is None:
            self.log = deque(maxlen=keep)
            self.log_base = self.seq
            self._prefix = b"@" + self.epoch.encode() + b":"
            self._where = {self._size: 0}

    def set_epoch(self, epoch: str) -> None:
        """The room's order starts again under another epoch (a cluster's
        Redis lost the room): what the log kept belongs to the old one."""
        if epoch == self.epoch:
            return
        self.epoch = epoch
        if self.log is not None:
            self.log.clear()
            self.log_base = self.seq
            self._prefix = b"@" + epoch.encode() + b":"

    def broadcast(self, line: str) -> bytes:
        """line to every member; returns it encoded (for the history)."""
        data = (line + "\n").encode("utf-8")
        if not self._queued:
            self._mark()
        self._parts.append(data)
        self._size += len(data)
        self.lines += 1
        self.seq += 1
        log = self.log
        if log is not None:
            tagged = self._prefix + b"%d " % self.seq + data
            if len(log) == log.maxlen:
                self.log_base = log[0][0]  # about to be dropped
            log.append((self.seq, tagged))
            self._tparts.append(tagged)
            self._tsize += len(tagged)
            self._where[self._size] = self._tsize
        return data

    def tag(self, conn: Hashable, member: bool) -> None:
        """conn receives ids from now on (the room must be tracked);
        member: whether it receives broadcasts at this point."""
        if conn in self.tagged:
            return
        view = self._views.get(conn)
        if view is None and self._size:
            view = self._view(conn, member)  # mid-batch: plain so far, tagged from here
        if view is not None and view.tag_from is None:
            view.tag_from = self._size
        self.tagged.add(conn)

    def untag(self, conn: Hashable) -> None:
        self.tagged.discard(conn)

    def _view(self, conn: Hashable, member: bool) -> _View:
        if not self._queued:
            self._mark()
        view = self._views.get(conn)
        if view is None:
            tag_from = 0 if conn in self.tagged else None
            view = self._views[conn] = _View(0 if member else None, tag_from)
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
            view = _View(0, 0 if conn in self.tagged else None)
        parts = self._parts
        if len(parts) > 1:  # joined once, however many clients leave
            parts[:] = [b"".join(parts)]
        tparts = self._tparts
        if len(tparts) > 1:
            tparts[:] = [b"".join(tparts)]
        view.stop = self._size
        return view.render(parts[0] if parts else b"", tparts[0] if tparts else b"", self._where)

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
        tblob = b"".join(self._tparts)
        views = self._views
        tagged = self.tagged
        plain = 0
        sent = 0
        if blob and not tagged:
            # The common case, no session client here: one object for all.
            for conn in members:
                if conn in views:
                    continue
                deliver(conn, blob)
                plain += 1
            sent = len(blob) * plain
        elif blob:
            for conn in members:
                if conn in views:
                    continue
                data = tblob if conn in tagged else blob
                deliver(conn, data)
                sent += len(data)
                plain += 1
        deliveries = self.lines * plain
        where = self._where
        for conn, view in views.items():
            data = view.render(blob, tblob, where)
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
        if self.log is not None:
            self._tparts = []
            self._tsize = 0
            self._where = {0: 0}
        self.sent_bytes += sent
        return deliveries
