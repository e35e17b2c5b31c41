"""The chat of one node in a cluster (--redis).  Pure: no Redis, no gevent.

Every node holds the whole cluster's rooms, names and histories, and every
node applies the same entries in the same order: the order of the bus's
stream (bus/redis_bus.py).  That is the seed's one broadcaster, spread out:
one order per room, whichever node a member is on.

So a node does not act on its own clients' lines and commands at once.  It
publishes them (one bus entry per hub batch, `outgoing`) and acts when it
reads them back, in the stream's order, like everyone else's:

- a line is said to its room when its "say" comes back, on every node;
- a name is claimed in Redis first (a request to the bus, answered by a
  claimed() event: atomic, so two nodes can never hand out one name), and
  the client is named, greeted and given its roster and history when its
  "enter" comes back; what it types meanwhile is held and replayed;
- /join, /nick and departures likewise (see ClusterChat.__init__ on
  what a client's later lines wait for).

Members served by other nodes are `Remote` objects: in their room's
`remote` set, counted in rosters, /who and /rooms, never delivered to.  A
local client that disconnects leaves its room's delivery list at once (its
socket is gone) but stays there as a Remote of this node until its
"leave" comes back, so that every node announces the departure at the same
point of the room's order.

Nodes learn of each other from the stream: a node that starts publishes
"hello", and every node answers with "present", the members it holds as
its own published operations describe them (`published`), which a reader
that applied every earlier entry of that node already has, and a reader
that started later takes as the truth.  A node that stops or is lost
("lost", published by whichever survivor first finds its heartbeat key
expired) has its members leave everywhere, at the same point of the
order; applying it twice changes nothing.
"""

import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Optional

from gchat import protocol as p
from gchat.bus.entry import Entry
from gchat.chat import Chat
from gchat.config import Config
from gchat.events import Member
from gchat.room import Room

log = logging.getLogger("gchat")


def _release_if_empty(table: dict[Any, Any]) -> None:
    """A dict keeps the room it grew to after its items go; one emptied
    after a storm (thousands of claims out at once) gives it back, so that
    an idle member costs what it cost before the storm."""
    if not table:
        table.clear()


class Remote:
    """A member this node does not serve: on another node, or a local
    client that has left but whose departure has not come back yet."""

    __slots__ = ("name", "node", "room")

    def __init__(self, name: str, node: str, room: Optional[Room] = None) -> None:
        self.name = name
        self.node = node
        self.room: Any = room  # typed as events.Member's: a Room once it is in one

    @property
    def who(self) -> str:
        return f"{self.name}@{self.node}"

    def __repr__(self) -> str:
        return f"<Remote {self.who}>"


class ClusterChat(Chat):
    """A Chat whose changes go through the bus.  See the module docstring."""

    # A node that stops takes its members with it; the others stay.
    SHUTDOWN_REASON = p.NODE_STOPPED

    def __init__(
        self,
        config: Config,
        node: str,
        stats: Optional[Callable[[], Mapping[str, object]]] = None,
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        super().__init__(config, stats=stats, clock=clock)
        self.node = node
        self.outgoing: list[list[Any]] = []  # operations of this batch: the bus's next entry
        # ("claim", conn, name), ("release", key), ("reassert",)
        self.requests: list[tuple[Any, ...]] = []
        # conn -> (name, renaming): asked the bus, no answer yet
        self.claims: dict[Member, tuple[str, bool]] = {}
        self.claiming: dict[str, Member] = {}  # name_key -> conn: the same, by name
        self.entering: dict[str, Member] = {}  # name_key -> conn: its "enter" is out, not back yet
        # conn -> [name, room] as published, while that differs from what
        # has been applied (its "enter", /nick or /join is out); otherwise
        # conn.name and conn.room say it, and no memory is spent on it.
        self.published: dict[Member, list[str]] = {}
        # node id -> {Remote: None}, in order (ours: the departed)
        self.nodes: dict[str, dict[Remote, None]] = {}
        self.lost: set[str] = set()  # nodes whose departure was applied
        # lines the bus holds unpublished (the hub sets it)
        self.backlog: Callable[[], int] = lambda: 0
        self.bus_up: Callable[[], bool] = lambda: True  # whether Redis answers (the hub sets it)
        self._queued_lines = 0
        # One client, one order.  A client whose claim, /join or /nick is
        # out is busy: what it types meanwhile is held and handled once that
        # is back, so that each line and command acts on the state its
        # earlier ones made (a line after /join goes to the new room).  A
        # command (or an error) of a client whose chat lines are out waits
        # for them too, so that every answer comes in the order asked.  A
        # plain chat line needs only its room, as published, and goes out
        # at once behind the client's earlier ones.
        self.busy: dict[Member, list[p.Line]] = {}  # conn -> lines held while it is busy
        self._held = 0  # lines held over all clients (the outage bound)
        self._senders: set[Member] = set()  # conns that published in this batch
        # (seq, conns) of our entries not back yet
        self.awaiting: deque[tuple[int, set[Member]]] = deque()
        self.inflight: dict[Member, int] = {}  # conn -> how many of those it is in
        self.counts.update(bus_refused=0, bus_ops_skipped=0)
        self._apply: dict[str, Callable[..., None]] = {
            "enter": self._apply_enter,
            "join": self._apply_join,
            "leave": self._apply_leave,
            "say": self._apply_say,
            "nick": self._apply_nick,
            "msg": self._apply_msg,
            "hello": self._apply_hello,
            "present": self._apply_present,
            "lost": self._apply_lost,
        }

    # ------------------------------------------------------------------
    # For the hub and the bus

    def take(self) -> tuple[list[list[Any]], list[tuple[Any, ...]]]:
        """This batch's operations and requests, for the bus."""
        ops, requests = self.outgoing, self.requests
        self.outgoing, self.requests = [], []
        self._queued_lines = 0
        return ops, requests

    def sent(self, seq: int) -> None:
        """The bus took this batch's operations; seq is the sequence
        number of its (last) entry."""
        senders, self._senders = self._senders, set()
        if not senders:
            return
        self.awaiting.append((seq, senders))
        inflight = self.inflight
        for conn in senders:
            inflight[conn] = inflight.get(conn, 0) + 1

    def apply(self, entries: Iterable[Entry]) -> None:
        """Entries read from the bus (new ones, in the stream's order)."""
        now = self._clock()
        for entry in entries:
            for op in entry.ops:
                try:
                    self._apply[op[0]](entry.node, now, *op[1:])
                except Exception:
                    # Checked by entry.decode, so this is a bug or a
                    # state this node cannot reach: skip the operation,
                    # never the broadcaster.
                    self.counts["bus_ops_skipped"] += 1
                    log.exception("cannot apply %s from node %s; skipped", op[0], entry.node)
            if entry.node == self.node and self.awaiting:
                self._came_back(entry.seq)

    def _came_back(self, seq: int) -> None:
        """Our entries up to seq have been applied."""
        awaiting = self.awaiting
        while awaiting and awaiting[0][0] <= seq:
            for conn in awaiting.popleft()[1]:
                left = self.inflight.pop(conn, 1) - 1
                if left:
                    self.inflight[conn] = left
                else:
                    self._maybe_free(conn)
        _release_if_empty(self.inflight)

    def claimed(self, conn: Member, name: str, error: Optional[str]) -> None:
        """The bus's answer to a claim: error is None when conn got name."""
        _, renaming = self.claims.pop(conn, (name, False))
        key = p.name_key(name)
        if self.claiming.get(key) is conn:
            del self.claiming[key]
        _release_if_empty(self.claiming)
        _release_if_empty(self.claims)
        if conn not in self.connected:
            if error is None:
                self.requests.append(("release", key))
            return
        if error is not None:
            self._error(conn, error)
            if not renaming:
                self.lobby.out.send(conn, p.NAME_PROMPT_AGAIN, member=False)
        elif renaming:
            published = self._publishing(conn)
            old, published[0] = published[0], name
            self._publish(["nick", old, name], conn)
        else:
            self._publish_enter(conn, name)
        self._maybe_free(conn)

    def load_histories(self, histories: Mapping[str, list[bytes]]) -> None:
        """The rooms' histories as Redis keeps them, for a node that starts
        after they were written ({room name: [encoded lines]})."""
        for name, lines in histories.items():
            room = self._room(name)
            if room.history is not None:
                room.history.extend(lines)

    def resync(self, first_seq: int) -> None:
        """Redis came back without the cluster's data; our entries from
        first_seq on are published again, the older ones never come back.
        Say again who is here."""
        self._came_back(first_seq - 1)
        self._publish_present()

    def named_here(self) -> int:
        return sum(1 for conn in self.connected if conn.room is not None)

    # ------------------------------------------------------------------
    # Local events, published instead of applied

    def _register(self, conn: Member, name: str) -> None:
        # --compat: the seed's names are addresses, unique without asking
        # Redis; conn is registered when its "enter" comes back.
        self._publish_enter(conn, name)

    def lines(self, conn: Member, lines: Sequence[p.Line]) -> None:
        busy = self.busy
        for index, line in enumerate(lines):
            if conn in busy or (self._out(conn) and self._asks(conn, line)):
                self._set_busy(conn)
                self._hold(conn, lines[index:])
                return
            super().lines(conn, [line])

    def _out(self, conn: Member) -> bool:
        """Whether some line or /msg of conn's has not come back yet."""
        return conn in self.inflight or conn in self._senders

    def _asks(self, conn: Member, line: p.Line) -> bool:
        """Whether line may be answered here or change what conn is: all
        but a named client's chat line, which needs nothing but the room
        it was published to, and so may follow its earlier ones at once."""
        if line is p.TOO_LONG or conn.name is None:
            return True
        return not self.compat and line[:1] == b"/"

    def _hold(self, conn: Member, lines: Sequence[p.Line]) -> None:
        """Lines of a busy client, for later.  While Redis answers, its
        busy time is a round trip and its reader's pace bounds them; during
        an outage they count against bus_backlog with what the bus holds."""
        held = self.busy[conn]
        for line in lines:
            if self._room_for_line(conn, self._held):
                held.append(line)
                self._held += 1

    def _set_busy(self, conn: Member) -> None:
        if conn not in self.busy:
            self.busy[conn] = []

    def _maybe_free(self, conn: Member) -> None:
        """conn is busy no more if nothing of its is out: handle what it
        typed meanwhile."""
        if conn in self.claims or conn in self.inflight or conn in self._senders:
            return
        if conn.room is None and conn in self.published:
            return  # its "enter" is out
        if conn.room is not None:
            self.published.pop(conn, None)  # all of it applied: conn says it
            _release_if_empty(self.published)
        held = self.busy.pop(conn, None)
        _release_if_empty(self.busy)
        if held:
            self._held -= len(held)
            if conn in self.connected:
                self.lines(conn, held)

    def _publish(self, op: list[Any], conn: Optional[Member] = None, hold: bool = True) -> None:
        """op into this batch's entry; conn: the client it is from, busy
        until it comes back if hold (a /join, a /nick: what it types next
        depends on them)."""
        self.outgoing.append(op)
        if conn is not None:
            self._senders.add(conn)
            if hold:
                self._set_busy(conn)

    def _publishing(self, conn: Member) -> list[str]:
        """conn's [name, room] as published, to be changed by what it
        publishes now."""
        published = self.published.get(conn)
        if published is None:
            published = self.published[conn] = [conn.name, conn.room.name]
        return published

    def _as_published(self, conn: Member) -> Optional[list[str]]:
        """conn's [name, room] as its published operations say, or None."""
        published = self.published.get(conn)
        if published is None and conn.room is not None:
            return [conn.name, conn.room.name]
        return published

    def _publish_enter(self, conn: Member, name: str) -> None:
        key = p.name_key(name)
        self.entering[key] = conn
        self.published[conn] = [name, self.lobby.name]
        self._set_busy(conn)
        self._publish(["enter", name, self.lobby.name])

    def _taken(self, key: str) -> bool:
        # Also the names on their way: asked of Redis, or entering.
        return key in self.names or key in self.entering or key in self.claiming

    def _claim(self, conn: Member, name: str, renaming: bool) -> None:
        self.claims[conn] = (name, renaming)
        self.claiming[p.name_key(name)] = conn
        self._set_busy(conn)
        self.requests.append(("claim", conn, name))

    def _accept_name(self, conn: Member, name: str) -> None:
        # Free here; Redis says whether it is free everywhere (claimed()).
        self._claim(conn, name, renaming=False)

    def depart(self, conn: Member, why: str, detail: str = "") -> None:
        if conn not in self.connected:
            return
        held = self.busy.pop(conn, None)
        if held:
            # What it sent before it went still counts, as on one server:
            # handled now, on the state it published.
            self._held -= len(held)
            if conn.room is not None or conn in self.published:
                for line in held:
                    super().lines(conn, [line])
                    if conn not in self.connected:
                        return  # a /quit among them
            self.busy.pop(conn, None)  # what those lines published made it busy again
        self._senders.discard(conn)
        if self.inflight.pop(conn, None):
            for _, conns in self.awaiting:
                conns.discard(conn)
        if conn.room is None and conn in self.published:
            # Its "enter" is out: its "leave" follows it.
            self._publish_leave(conn, why, detail)
        super().depart(conn, why, detail)

    def _leave_room(self, conn: Member, why: str, detail: str) -> None:
        """conn's socket is gone: it stops receiving now, and stays a
        Remote of this node until its "leave" comes back."""
        room = conn.room
        key = p.name_key(conn.name)
        held_back = conn in room.arriving  # never announced yet
        room.leave(conn, None, moving=False, now=self._clock())
        ghost = Remote(conn.name, self.node, room)
        room.remote[ghost] = None
        if held_back:
            # Announced with the others of its run, or (if it leaves first)
            # never, as on every other node.
            room.remote_arriving.append(ghost)
            self.holding.add(room)
        if self.names.get(key) is conn:
            self.names[key] = ghost
        self.nodes.setdefault(self.node, {})[ghost] = None
        self._publish_leave(conn, why, detail)

    def _publish_leave(self, conn: Member, why: str, detail: str) -> None:
        name = (self.published.pop(conn, None) or [conn.name])[0]
        self._publish(["leave", name, self._leave_reason(why, detail)])

    def _speak(self, conn: Member, line: str, keep: bool) -> None:
        if self._room_for_line(conn):
            self._queued_lines += 1
            room = self.published[conn][1] if conn in self.published else conn.room.name
            self._publish(["say", room, line, keep], conn, hold=False)

    def _room_for_line(self, conn: Member, held: int = 0) -> bool:
        """Whether the bus can take one more line; if not, conn is told.
        The bound is for an outage: while Redis answers, what waits is a
        round trip's worth."""
        if self.bus_up() or self.backlog() + self._queued_lines + held < self.config.bus_backlog:
            return True
        self.counts["bus_refused"] += 1
        self.counts["errors"] += 1
        self._tell(conn, p.render_error(p.BUS_DOWN))
        return False

    def _rename(self, conn: Member, new: str, old_key: str, new_key: str) -> None:
        if new_key == old_key:  # only its spelling changes: nothing to claim
            self._publishing(conn)[0] = new
            self._publish(["nick", conn.name, new], conn)
            return
        self._claim(conn, new, renaming=True)

    def _msg(self, conn: Member, command: p.Msg) -> None:
        # Through the bus even to a member of this node, so that it reaches
        # its recipient in order with everything else it is sent.
        target = self.names.get(p.name_key(command.target))
        if target is None or (isinstance(target, Remote) and target.node == self.node):
            # (A Remote of ours has left; its departure is on its way.)
            self._error(conn, p.render_no_such_user(command.target))
            return
        if not self._room_for_line(conn):
            return
        self._queued_lines += 1
        self._publish(["msg", conn.name, target.name, command.text], conn, hold=False)
        if target is not conn:
            self._tell(conn, p.render_private_to_sender(conn.name, target.name, command.text))

    def _join(self, conn: Member, command: p.Join) -> None:
        name = self._join_target(conn, command)
        if name is None:
            return
        self._publishing(conn)[1] = name
        self._publish(["join", conn.name, name], conn)

    # ------------------------------------------------------------------
    # Applying the bus's entries: the same on every node

    def _room(self, name: str) -> Room:
        room = self.rooms.ensure(name)
        if room.size == 0:
            self.rooms.vacated(room)  # made for a line or a history: droppable
        return room

    def _member(self, node: str, name: str) -> Optional[Member]:
        """The member called name if node serves it, else None (a stale
        operation: the name has changed hands since)."""
        member = self.names.get(p.name_key(name))
        if member is None:
            return None
        owner = member.node if isinstance(member, Remote) else self.node
        return member if owner == node else None

    def _add_remote(self, member: Remote, room: Room) -> None:
        member.room = room
        room.remote[member] = None
        self.rooms.occupied(room)
        self.names[p.name_key(member.name)] = member
        self.nodes.setdefault(member.node, {})[member] = None

    def _drop_remote(self, member: Remote, reason: Optional[str], now: float) -> None:
        """member leaves: announced with reason, or silently if None."""
        room = member.room
        if reason is None:
            room.remote.pop(member, None)
            if member in room.remote_arriving:
                room.remote_arriving.remove(member)
        else:
            room.leave_remote(member, reason, now)
        self.rooms.vacated(room)
        key = p.name_key(member.name)
        if self.names.get(key) is member:
            del self.names[key]
        self.nodes.get(member.node, {}).pop(member, None)

    def _apply_enter(self, node: str, now: float, name: str, room_name: str) -> None:
        key = p.name_key(name)
        room = self.rooms.ensure(room_name)
        conn = self.entering.pop(key, None) if node == self.node else None
        _release_if_empty(self.entering)
        if conn is not None and conn in self.connected:
            # The string it published, not the copy the entry decoded to:
            # one string per name per client.
            name = self.published[conn][0] if conn in self.published else name
            conn.name = name
            self.names[key] = conn
            conn.room = room
            self.rooms.occupied(room)
            self.counts["arrivals"] += 1
            room.enter(conn, [p.render_you_are(name)], b"", now)
            self._maybe_free(conn)
            return
        if key in self.names:
            old = self.names[key]
            if isinstance(old, Remote):
                # Only after Redis lost its data can two nodes have handed
                # out one name; the later claim is the one Redis holds now.
                log.warning("%s entered from node %s while held by node %s", name, node, old.node)
                self._drop_remote(old, None, now)
            else:
                log.warning("%s entered from node %s while held here; ignored", name, node)
                return
        member = Remote(name, node)
        self._add_remote(member, room)
        room.enter_remote(member, now)

    def _apply_join(self, node: str, now: float, name: str, room_name: str) -> None:
        member = self._member(node, name)
        if member is None:
            return
        old, room = member.room, self.rooms.ensure(room_name)
        if room is old:
            return
        reason = p.render_joined_reason(room.name)
        self.counts["joins"] += 1
        if isinstance(member, Remote):
            old.leave_remote(member, reason, now)
            self.rooms.vacated(old)
            self._add_remote(member, room)
            room.enter_remote(member, now)
            return
        carried = old.leave(member, reason, moving=True, now=now)
        self.rooms.vacated(old)
        member.room = room
        self.rooms.occupied(room)
        room.enter(member, [p.render_now_in(room.name)], carried, now)

    def _apply_leave(self, node: str, now: float, name: str, reason: str) -> None:
        member = self._member(node, name)
        if not isinstance(member, Remote):
            return  # unknown, or (a bug) still connected here
        self._drop_remote(member, reason, now)
        if node == self.node:
            self.requests.append(("release", p.name_key(name)))

    def _apply_say(self, node: str, now: float, room_name: str, line: str, keep: bool) -> None:
        self._room(room_name).say(line, keep=keep)

    def _apply_nick(self, node: str, now: float, old: str, new: str) -> None:
        member = self._member(node, old)
        if member is None:
            return
        old_key, new_key = p.name_key(old), p.name_key(new)
        del self.names[old_key]
        self.names[new_key] = member
        member.room.say(p.render_nick(old, new), keep=False)
        member.name = new
        if node == self.node and old_key != new_key:
            self.requests.append(("release", old_key))

    def _apply_msg(self, node: str, now: float, sender: str, target: str, text: str) -> None:
        conn = self.names.get(p.name_key(target))
        if conn is None or isinstance(conn, Remote) or conn not in self.connected:
            return
        if conn in conn.room.arriving:
            conn.room.announce()  # its roster first, as Chat._msg does
        self._tell(conn, p.render_private_to_recipient(sender, text))

    def _apply_hello(self, node: str, now: float) -> None:
        if node != self.node:
            self.nodes.setdefault(node, {})
            self.lost.discard(node)
            self._publish_present()

    def _publish_present(self) -> None:
        members = (self._as_published(conn) for conn in self.connected)
        self._publish(["present", True, [pair for pair in members if pair is not None]])

    def _apply_present(self, node: str, now: float, _full: bool, pairs: list[list[str]]) -> None:
        """node's members are pairs: made so here silently (this is a
        state transfer, not news: each arrival was announced when it
        happened)."""
        if node == self.node:
            return
        self.lost.discard(node)
        wanted = {p.name_key(name): (name, room) for name, room in pairs}
        for member in list(self.nodes.get(node, ())):
            key = p.name_key(member.name)
            name, room = wanted.pop(key, ("", None))
            if room is None or p.name_key(room) != member.room.key:
                self._drop_remote(member, None, now)
                if room is not None:
                    wanted[key] = (name, room)  # in another room: made again below
            else:
                member.name = name  # the spelling may have changed
        for key, (name, room_name) in wanted.items():
            if key in self.names:
                continue  # held by another member here: the stream's order decides
            self._add_remote(Remote(name, node), self._room(room_name))

    def _apply_lost(self, node: str, now: float, lost: str, reason: str) -> None:
        if lost == self.node:
            # We were stalled past --node-timeout and the others let our
            # members go: claim our names again and tell them who is here.
            log.warning("this node was declared lost by node %s; rejoining", node)
            self.requests.append(("reassert",))
            self._publish_present()
            return
        if lost in self.lost:
            return
        self.lost.add(lost)
        for member in list(self.nodes.pop(lost, ())):
            self._drop_remote(member, reason, now)
