"""The chat of one node in a cluster (--redis).  Pure: no Redis, no gevent.

Each room has a log of its own (bus/room_log.py): one order per room,
whichever node a member is on.  A node reads the logs of the rooms it
hosts, those with a member of its own, and no other: the bus is routed by
interest (docs/cluster.md).  Every node that hosts a room applies the
room's entries in the log's order, and that is the seed's one broadcaster,
spread out per room.

So a node does not act on its own clients' lines and commands at once.  It
publishes them (one entry per room per hub batch, `take`) and acts when it
reads them back, in the room's order, like every other host of the room:

- a line is said to its room when its "say" comes back;
- a name is claimed in Redis first (a request to the bus, answered by
  claimed(): atomic, so two nodes can never hand out one name), and the
  client is named, greeted and given its roster and history when its
  "enter" comes back from the lobby's log; what it types meanwhile is held
  and replayed;
- /join is a "leave" into the old room's log and, once that is back, an
  "enter" into the new one's; the client is busy until both are back, and
  between them it is in neither room, as on every other node;
- a departure is a "leave" into its room's log;
- /msg goes into the recipient node's inbox, a log that only that node
  reads (the bus finds the node from the name, answering routed()).

A node starts to host a room when a member of its own is about to enter it:
it asks the bus for the room (request "host"), and the bus answers
hosted() with a snapshot of the room's members, history and position,
taken just before it subscribes; the entry of the member that brought the
room is published after that, so that it is part of what the node reads.
The node stops hosting a room (request "drop") when no member of its own is
in it, entering it or leaving it; it forgets the room's other members then.

Members served by other nodes are `Remote` objects: in their room's
`remote` set, counted in rosters and /who, never delivered to.  A local
client that disconnects leaves its room's delivery list at once (its socket
is gone) but stays there as a Remote of this node until its "leave" comes
back, so that every host of the room announces the departure at the same
point of the room's order.

Nodes that die are found by their heartbeats (bus); each survivor
publishes "lost" into the rooms where it knows members of the lost node, and
the one that frees the lost node's names into the rooms of its directory
too; applying it twice changes nothing.  /rooms counts the whole cluster
from the nodes' directories, which the bus reads at each heartbeat, and
the rooms this node hosts exactly.
"""

import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from heapq import nlargest
from typing import Any, Callable, Optional

from gchat import protocol as p
from gchat.auth import AuthKey
from gchat.bus.entry import LINES
from gchat.chat import Chat
from gchat.config import Config
from gchat.events import (
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
    Member,
    Why,
)
from gchat.room import Room
from gchat.sessions import ParsedId, Position, Session, format_id, parse_id, replay, tag

log = logging.getLogger("gchat")

# A node's inbox is a log of its own: the room key "~NODE" (no room name
# can hold a "~", protocol._validate_label).
INBOX = "~"


# A line's SEQ in a cluster (its id for a session client, sessions.py) is
# its place in the room's log: the entry's offset, the operation's index in
# the entry, and the line's in what the operation says, so that every node
# that hosts the room gives a line the same id, and a client that resumes
# on another node is understood there.  Room.out.seq is raised to each
# operation's first value before it is applied; a line said between
# operations (a held announcement made on a timer) takes the next number.
OP_BITS = 10  # lines one operation may say (a "lost" of a crowd: its departures)
OFFSET_BITS = 30  # OP_BITS plus 2**20 operations in one entry


def line_seq(offset: int, index: int) -> int:
    """The SEQ before the first line of the entry at offset's index-th
    operation."""
    return (offset << OFFSET_BITS) | (index << OP_BITS)


def op_lines(op: list[Any]) -> Optional[list[str]]:
    """What an operation says to a room, as far as the operation alone
    tells (a resume that reads the room's log from Redis): None when that
    depends on who was in the room then ("lost": its node's members)."""
    kind = op[0]
    if kind == "say":
        return [op[1]]
    if kind == "enter":
        return [p.render_arrived(op[1])]
    if kind == "leave":
        return [p.render_left(op[1], op[2])]
    if kind == "nick":
        return [p.render_nick(op[1], op[2])]
    if kind == "expire":
        return [p.render_left(op[1], p.SESSION_LOST)]
    if kind == "lost":
        return None
    return []  # present, session, away, move: nothing said


def logged_lines(
    entries: Sequence[tuple[int, str, list[list[Any]]]], epoch: str, after: int, upto: int
) -> Optional[list[tuple[int, bytes]]]:
    """The lines with SEQs in (after, upto], with their ids, that entries
    (offset, node, operations) of a room's log said; None if they cannot
    all be told (the log no longer reaches back to after, or an operation
    whose lines depend on the room's state then)."""
    if not entries or entries[0][0] > (after >> OFFSET_BITS) + 1:
        return None
    out: list[tuple[int, bytes]] = []
    expired: set[str] = set()
    moved: dict[str, str] = {}  # name key -> the node it last resumed on
    for offset, node, ops in entries:
        for index, op in enumerate(ops):
            base = line_seq(offset, index)
            if base >= upto:
                return out
            kind = op[0]
            if kind == "move":
                moved[p.name_key(op[1])] = node
            elif kind == "expire":
                key = p.name_key(op[1])
                if key in expired or moved.get(key, op[2]) != op[2]:
                    continue  # applied as nothing: expired already, or resumed
                expired.add(key)
            lines = op_lines(op)
            if lines is None:
                if base + 1 > after:
                    return None
                continue
            for k, line in enumerate(lines, 1):
                seq = base + k
                if after < seq <= upto:
                    out.append((seq, tag(epoch, seq, (line + "\n").encode())))
    return out


def inbox_key(node: str) -> str:
    return INBOX + node


def _release_if_empty(table: dict[Any, Any]) -> None:
    """A dict keeps the room it grew to after its items go; one emptied
    after a storm (thousands of claims out at once) gives it back, so that
    an idle member costs what it cost before the storm."""
    if not table:
        table.clear()


class Remote:
    """A member this node does not serve: on another node, or a local
    client that has left but whose departure has not come back yet."""

    __slots__ = ("name", "node", "room", "session", "away_until")

    def __init__(self, name: str, node: str, room: Optional[Room] = None) -> None:
        self.name = name
        self.node = node
        self.room: Any = room  # typed as events.Member's: a Room once it is in one
        self.session = False  # it has a session: when its node goes, it is away
        # Away (its node stopped or was lost): when its window ends, here.
        self.away_until: Optional[float] = None

    @property
    def who(self) -> str:
        return f"{self.name}@{self.node}"

    def __repr__(self) -> str:
        return f"<Remote {self.who}>"


class Heading:
    """A local client on its way into a room: its first entry (into the
    lobby) or a /join.  carried: what its old room's batch held for it
    (None while its "leave" from the old room is out); sent: its "enter"
    is out."""

    __slots__ = ("room", "carried", "sent", "first")

    def __init__(self, room: str, carried: Optional[bytes], first: bool) -> None:
        self.room = room
        self.carried = carried
        self.sent = False
        self.first = first


class Batch:
    """One room's share of a hub batch: the bus's next entry in its log."""

    __slots__ = ("ops", "history", "members", "lines")

    def __init__(self) -> None:
        self.ops: list[list[Any]] = []
        self.history: list[bytes] = []  # lines for the room's history in Redis
        self.members: list[str] = []  # room_stream.MEMBER_CHANGES
        self.lines = 0  # chat and private lines (the outage bound)


def _plus(name: str, session: bool = False) -> str:
    # " *": a member with a session, so that a node that starts to host the
    # room knows it (room_stream.Snapshot.sessions).
    return f"+{p.name_key(name)} {name}{' *' if session else ''}"


def _minus(name: str) -> str:
    return f"-{p.name_key(name)}"


class ClusterChat(Chat):
    """A Chat whose changes go through the room logs.  See the module
    docstring."""

    # A node that stops takes its members with it; the others stay.
    SHUTDOWN_REASON = p.NODE_STOPPED

    def __init__(
        self,
        config: Config,
        node: str,
        stats: Optional[Callable[[], Mapping[str, object]]] = None,
        clock: Optional[Callable[[], float]] = None,
        auth: Optional[AuthKey] = None,
        wall: Optional[Callable[[], float]] = None,
    ) -> None:
        super().__init__(config, stats=stats, clock=clock, auth=auth, wall=wall)
        self.node = node
        self.outgoing: dict[str, Batch] = {}  # room key -> this batch's entry
        # ("claim", conn, name), ("release", key), ("reassert",),
        # ("host", room key, name), ("drop", room key),
        # ("msg", conn, sender, target, text), ("directory", {room: count})
        self.requests: list[tuple[Any, ...]] = []
        # conn -> (name, renaming): asked the bus, no answer yet
        self.claims: dict[Member, tuple[str, bool]] = {}
        # name_key -> conn: the same, by name (a new nick's until it is back)
        self.claiming: dict[str, Member] = {}
        self.entering: dict[str, Member] = {}  # name_key -> conn: its "enter" is out
        self.heading: dict[Member, Heading] = {}  # conns on their way into a room
        self.heading_to: dict[str, int] = {}  # room key -> how many of them go there
        # conn -> [name, room] as published, while that differs from what
        # has been applied; otherwise conn.name and conn.room say it.
        self.published: dict[Member, list[str]] = {}
        self.hosted: set[str] = set()  # room keys whose log this node reads
        # room key -> what waits for its snapshot (hosted())
        self.hosting: dict[str, list[Callable[[], None]]] = {}
        self.remotes: dict[tuple[str, str], Remote] = {}  # (room key, name key) -> Remote
        self.nodes: dict[str, dict[Remote, None]] = {}  # node id -> its Remotes here
        # The cluster's rooms and their members, from the nodes' directories
        # as the bus last read them (room name -> count).
        self.directory: dict[str, int] = {}
        self._counted: set[Room] = set()  # rooms whose local count changed
        self.routing: dict[Member, int] = {}  # conn -> its /msgs the bus is routing
        # Nodes found lost: a room hosted later may still list their members
        # (a directory written too late for the lost node's "lost" to reach it).
        self.lost_nodes: set[str] = set()
        # lines the bus holds unpublished (the hub sets it)
        self.backlog: Callable[[], int] = lambda: 0
        self.bus_up: Callable[[], bool] = lambda: True  # whether Redis answers (the hub sets it)
        self._queued_lines = 0
        # One client, one order.  A client whose claim, /join or /nick is
        # out is busy: what it types meanwhile is held and handled once that
        # is back, so that each line and command acts on the state its
        # earlier ones made.  A command of a client whose chat lines are
        # out waits for them too, so that every answer comes in the order
        # asked.  A plain chat line needs only its room, as published, and
        # goes out at once behind the client's earlier ones.
        self.busy: dict[Member, list[p.Line]] = {}  # conn -> lines held while it is busy
        self._held = 0  # lines held over all clients (the outage bound)
        self._senders: dict[str, set[Member]] = {}  # room key -> conns in this batch's entry
        self._sending: set[Member] = set()  # the same conns, over every room
        # room key -> (seq, conns) of our entries there not back yet
        self.awaiting: dict[str, deque[tuple[int, set[Member]]]] = {}
        self.inflight: dict[Member, int] = {}  # conn -> how many of those it is in
        # Sessions across nodes.  conn -> (token, last id, address): a
        # /resume whose token the bus is looking up in Redis.
        self.resuming: dict[Member, tuple[str, str, str]] = {}
        # name key -> (conn, token, last id): its "move" is out.
        self.moving: dict[str, tuple[Member, str, str]] = {}
        # conn -> (the id it resumed from, what it was sent before): its
        # missed lines are being read from the room's log in Redis.
        self.replaying: dict[Member, tuple[ParsedId, bytes]] = {}
        # Away sessions known here (other nodes'), in the order their windows
        # end; then those whose "expire" this node has sent.
        self.away_remotes: dict[Remote, None] = {}
        self.expiring: set[Remote] = set()
        # name key -> conn: signed in here as a sub another node holds,
        # waiting for that node to hand the name over.
        self.signing_over: dict[str, Member] = {}
        # (table, name key) -> (when, until, lifted): bans and mutes set
        # here lately, which a heartbeat's reading may not hold yet.
        self._restricted_here: dict[tuple[str, str], tuple[float, Optional[float], bool]] = {}
        self.counts.update(bus_refused=0, bus_ops_skipped=0)
        self._apply: dict[str, Callable[..., None]] = {
            "enter": self._apply_enter,
            "leave": self._apply_leave,
            "say": self._apply_say,
            "nick": self._apply_nick,
            "present": self._apply_present,
            "lost": self._apply_lost,
            "session": self._apply_session,
            "away": self._apply_away,
            "move": self._apply_move,
            "handover": self._apply_handover,
            "expire": self._apply_expire,
        }

    # ------------------------------------------------------------------
    # For the hub and the bus

    def take(self) -> tuple[dict[str, Batch], list[tuple[Any, ...]]]:
        """This batch's entries (room key -> Batch) and requests, for the bus."""
        if self._counted:
            counts = {room.name: len(room.members) + len(room.arriving) for room in self._counted}
            self._counted.clear()
            self.requests.append(("directory", counts))
        batches, requests = self.outgoing, self.requests
        self.outgoing, self.requests = {}, []
        self._queued_lines = 0
        return batches, requests

    def sent(self, seqs: Mapping[str, int]) -> None:
        """The bus took this batch's entries: seqs, room key -> the sequence
        number of the entry there."""
        senders_by_room, self._senders = self._senders, {}
        self._sending = set()
        inflight = self.inflight
        for room_key, seq in seqs.items():
            # Every entry is awaited, one of nobody's (a departed client's
            # leave) too: its room stays hosted until it is back
            # (_maybe_unhost), so that this node applies what it published.
            senders = senders_by_room.get(room_key, set())
            self.awaiting.setdefault(room_key, deque()).append((seq, senders))
            for conn in senders:
                inflight[conn] = inflight.get(conn, 0) + 1

    def on_bus(self, kind: str, conn: Any, payload: Any) -> None:
        """An event of the bus's (events.BUS_EVENTS)."""
        if kind == CLAIMED:
            self.claimed(conn, *payload)
        elif kind == HOSTED:
            self.hosted_room(*payload)
        elif kind == ROUTED:
            self.routed(conn, *payload)
        elif kind == DIRECTORY:
            self.directory = payload
        elif kind == NODE_LOST:
            self.node_lost(*payload)
        elif kind == RESYNC:
            self.resync()
        elif kind == SESSION_FOUND:
            self.session_found(conn, *payload)
        elif kind == REPLAYED:
            self.replayed(conn, *payload)
        elif kind == RESTRICTIONS:
            self.restrictions(payload)
        elif kind == KICK_ROUTED:
            self.kick_routed(conn, *payload)
        else:
            self.apply(*payload)

    def apply(self, room_key: str, entries: Iterable[tuple[Any, ...]]) -> None:
        """Entries of one room's log (node, seq, operations[, epoch,
        offset]), new ones, in the log's order."""
        if room_key.startswith(INBOX):
            for _node, _seq, ops, *_place in entries:
                for op in ops:
                    if op[0] == "msg":
                        self._apply_msg(*op[1:])
                    elif op[0] == "kick":
                        self._apply_kick(*op[1:])
                    elif op[0] == "hand-over":
                        self._apply_hand_over(*op[1:])
                    elif op[0] == "handed":
                        self._apply_handed(*op[1:])
            return
        room = self.rooms.get(room_key)
        if room is None or room_key not in self.hosted:
            return  # dropped meanwhile: not ours to apply
        now = self._clock()
        out = room.out
        for node, seq, ops, *place in entries:
            base = -1
            if place:
                epoch, offset = place
                if epoch != out.epoch:
                    out.set_epoch(epoch)
                base = line_seq(offset, 0)
            for index, op in enumerate(ops):
                if base >= 0 and base + (index << OP_BITS) > out.seq:
                    out.seq = base + (index << OP_BITS)
                handler = self._apply.get(op[0])
                if handler is None:
                    continue  # an inbox operation in a room: not for rooms
                try:
                    handler(room, node, now, *op[1:])
                except Exception:
                    # Checked by entry.decode, so this is a bug or a
                    # state this node cannot reach: skip the operation,
                    # never the broadcaster.
                    self.counts["bus_ops_skipped"] += 1
                    log.exception("cannot apply %s from node %s; skipped", op[0], node)
            if node == self.node:
                self._came_back(room_key, seq)
        self._maybe_unhost(room)

    def _came_back(self, room_key: str, seq: int) -> None:
        """Our entries in room_key up to seq have been applied."""
        awaiting = self.awaiting.get(room_key)
        while awaiting and awaiting[0][0] <= seq:
            for conn in awaiting.popleft()[1]:
                left = self.inflight.pop(conn, 1) - 1
                if left:
                    self.inflight[conn] = left
                else:
                    self._maybe_free(conn)
        if awaiting is not None and not awaiting:
            del self.awaiting[room_key]
        _release_if_empty(self.inflight)

    def claimed(self, conn: Member, name: str, error: Optional[str]) -> None:
        """The bus's answer to a claim: error is None when conn got name."""
        _, renaming = self.claims.pop(conn, (name, False))
        key = p.name_key(name)
        if self.signing_over.get(key) is conn:
            del self.signing_over[key]  # the node that had it is gone: asked anew
        if self.claiming.get(key) is conn:
            del self.claiming[key]
        _release_if_empty(self.claiming)
        _release_if_empty(self.claims)
        if conn not in self.connected:
            if error is None:
                self.requests.append(("release", key))
            return
        if error is not None:
            if not renaming and conn in self.signed and error == p.render_name_taken(name):
                # Signed in (--auth-key): the same sub holds the name on
                # another node.  It signed in again here: the name and its
                # place are handed over (sign_over_elsewhere).
                self.signing_over[key] = conn
                self.requests.append(("sign-over", conn, name))
                return
            if not renaming and conn in self.signed:
                self.busy.pop(conn, None)
                self.depart(conn, Why.AUTH_FAILED, p.render_error(error))
                return
            self._error(conn, error)
            if not renaming:
                self.lobby.out.send(conn, p.NAME_PROMPT_AGAIN, member=False)
        elif renaming:
            # Taken here until the nick is back (_apply_nick), so that no
            # other client of this node claims it meanwhile: Redis would
            # say yes, as the name is this node's.
            self.claiming[key] = conn
            published = self._publishing(conn)
            old, published[0] = published[0], name
            self._publish(conn.room, ["nick", old, name], conn, members=(_minus(old), _plus(name)))
        else:
            self._publish_enter(conn, name)
        self._maybe_free(conn)

    def hosted_room(self, room_key: str, snapshot: Any) -> None:
        """The bus reads room_key's log from now on: snapshot (epoch,
        offset, history, members [(node, name)], chains, name) is the room
        as of the position from which its entries come."""
        room = self.rooms.get(room_key) or self.rooms.ensure(snapshot.name)
        self.hosted.add(room_key)
        if snapshot.epoch:
            room.out.set_epoch(snapshot.epoch)
            room.out.seq = max(room.out.seq, line_seq(snapshot.offset + 1, 0) - 1)
        if room.history is not None:
            room.history.clear()
            room.history.extend(snapshot.history)
        gone = set()
        for node, name in snapshot.members:
            if node in self.lost_nodes:
                gone.add(node)  # its "lost" missed this room (see node_lost)
            elif node != self.node:
                member = Remote(name, node)
                self._add_remote(member, room)
                if p.name_key(name) in snapshot.sessions:
                    member.session = True
                    room.out.track(self.config.resume_backlog)
        for node in gone:
            self._publish(room, ["lost", node, p.NODE_LOST], members=("!" + node,))
        for action in self.hosting.pop(room_key, ()):
            action()
        self._maybe_unhost(room)

    def routed(self, conn: Member, target: str, found: bool, text: str) -> None:
        """The bus's answer to a /msg: whether target has a node, which got it."""
        left = self.routing.pop(conn, 1) - 1
        if left:
            self.routing[conn] = left
        _release_if_empty(self.routing)
        if conn not in self.connected:
            return
        if isinstance(found, str):
            self._error(conn, found)  # an away session's, unreachable
        elif not found:
            self._error(conn, p.render_no_such_user(target))
        elif p.name_key(target) != p.name_key(conn.name):
            self._tell(conn, p.render_private_to_sender(conn.name, target, text))
        self._maybe_free(conn)

    def node_lost(self, node: str, reason: str) -> None:
        """node's heartbeat expired: its members leave the rooms where this
        node knows them, at the point of each room's order where this
        node's "lost" lands."""
        self.lost_nodes.add(node)
        rooms = {member.room for member in self.nodes.get(node, ())}
        for room in rooms:
            if room is not None and room.key in self.hosted:
                self._publish(room, ["lost", node, reason], members=("!" + node,))

    def resync(self) -> None:
        """Redis came back without the cluster's data: each room this node
        hosts is told again who of its members are here."""
        for room_key in self.hosted:
            room = self.rooms.get(room_key)
            if room is not None:
                self._publish_present(room)

    def _publish_present(self, room: Room) -> None:
        """Who of this node's is in room as published, not as applied: the
        "present" lands after every entry of ours there that is not back
        yet (an enter, a /join's leave, a nick)."""
        names = []
        for conn in {**room.members, **room.arriving, **self.heading}:
            published = self.published.get(conn)
            heading = self.heading.get(conn)
            if published is None:
                names.append(conn.name)  # nothing of its out: as applied
            elif p.name_key(published[1]) == room.key and (heading is None or heading.sent):
                names.append(published[0])
        self._publish(room, ["present", names], members=("=", *(_plus(n) for n in names)))

    def named_here(self) -> int:
        return sum(1 for conn in self.connected if conn.room is not None and conn.name)

    def cluster_members(self) -> int:
        """Members over the cluster, as the directories last said."""
        return sum(self.directory.values())

    # ------------------------------------------------------------------
    # Hosting rooms

    def _when_hosted(self, name: str, action: Optional[Callable[[], None]] = None) -> None:
        """action once the room called name is hosted (now, if it is)."""
        key = p.name_key(name)
        if key in self.hosted:
            if action is not None:
                action()
            return
        waiting = self.hosting.get(key)
        if waiting is None:
            waiting = self.hosting[key] = []
            self.requests.append(("host", key, name))
        if action is not None:
            waiting.append(action)

    def _maybe_unhost(self, room: Room) -> None:
        """Stop hosting room if no member of this node's is in it, on its
        way in, or on its way out (a leave or an entry not back)."""
        key = room.key
        if key not in self.hosted or room.members or room.arriving or room.away:
            return
        if key in self.awaiting or key in self.outgoing or key in self.hosting:
            return
        if key in self.heading_to:
            return  # someone is on its way in
        if self._remotes(room, self.node):
            return  # a departure of ours, not back yet
        if any(h.carried is None and c.room is room for c, h in self.heading.items()):
            return  # a /join out of it, whose leave is not back
        for member in self._remotes(room):
            self._forget_remote(member)
        room.remote_arriving.clear()
        if room.history is not None:
            room.history.clear()
        self.hosted.discard(key)
        self.requests.append(("drop", key))
        self.rooms.vacated(room)

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
        return conn in self.inflight or conn in self._sending or conn in self.routing

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
        if conn in self.claims or conn in self.inflight or conn in self._sending:
            return
        if conn in self.heading or conn in self.routing or conn in self.resuming:
            return
        if conn.name is None and conn in self.signing_over.values():
            return
        if conn in self.replaying:
            return
        if conn.room is not None:
            self.published.pop(conn, None)  # all of it applied: conn says it
            _release_if_empty(self.published)
        held = self.busy.pop(conn, None)
        _release_if_empty(self.busy)
        if held:
            self._held -= len(held)
            if conn in self.connected:
                self.lines(conn, held)

    def _publish(
        self,
        room: Any,
        op: list[Any],
        conn: Optional[Member] = None,
        hold: bool = True,
        members: tuple[str, ...] = (),
        history: Optional[bytes] = None,
    ) -> None:
        """op into this batch's entry of room (a Room, or a room key);
        conn: the client it is from, busy until it comes back if hold."""
        key = room if isinstance(room, str) else room.key
        batch = self.outgoing.get(key)
        if batch is None:
            batch = self.outgoing[key] = Batch()
        batch.ops.append(op)
        batch.members.extend(members)
        if history is not None:
            batch.history.append(history)
        if op[0] in LINES:
            batch.lines += 1
        if conn is not None:
            self._senders.setdefault(key, set()).add(conn)
            self._sending.add(conn)
            if hold:
                self._set_busy(conn)

    def _publishing(self, conn: Member) -> list[str]:
        """conn's [name, room] as published, to be changed by what it
        publishes now."""
        published = self.published.get(conn)
        if published is None:
            published = self.published[conn] = [conn.name, conn.room.name]
        return published

    def _publish_enter(self, conn: Member, name: str) -> None:
        self.entering[p.name_key(name)] = conn
        self.published[conn] = [name, self.lobby.name]
        self._head(conn, Heading(self.lobby.name, b"", first=True))
        self._set_busy(conn)
        self._advance(conn)

    def _head(self, conn: Member, heading: Heading) -> None:
        self.heading[conn] = heading
        key = p.name_key(heading.room)
        self.heading_to[key] = self.heading_to.get(key, 0) + 1

    def _unhead(self, conn: Member) -> Optional[Heading]:
        heading = self.heading.pop(conn, None)
        if heading is not None:
            key = p.name_key(heading.room)
            left = self.heading_to.pop(key) - 1
            if left:
                self.heading_to[key] = left
        return heading

    def _advance(self, conn: Member) -> None:
        """conn's "enter" goes out once it has left its old room and its
        new room is hosted."""
        heading = self.heading.get(conn)
        if heading is None or heading.carried is None or heading.sent:
            return

        def send() -> None:
            if self.heading.get(conn) is not heading or conn not in self.connected:
                return
            heading.sent = True
            name = self.published[conn][0]
            self.entering[p.name_key(name)] = conn
            key = p.name_key(heading.room)
            session = conn in self.session_of
            self._publish(key, ["enter", name], conn, members=(_plus(name, session),))
            if session:
                self._publish(key, ["session", name])

        self._when_hosted(heading.room, send)

    # ------------------------------------------------------------------
    # Sessions across nodes (sessions.py; docs/protocol.md, "Sessions")
    #
    # A session's record in Redis (its name and room, by token) lets any
    # node resume it.  Every host of the room knows which members have
    # sessions ("session"): when a member's node stops ("away") or is lost
    # ("lost"), such a member stays, away, until it resumes on some node
    # ("move": silently that node's from then on) or its window ends
    # ("expire", sent by every host whose clock says so: the first one in
    # the room's order is applied, and the departure is said once).

    def _session(self, conn: Member, command: p.Session) -> None:
        had = conn in self.session_of
        super()._session(conn, command)
        if had:
            return
        name = conn.name
        self._publish(conn.room, ["session", name], members=(_plus(name, True),))
        self._record(conn)

    def _record(self, conn: Member) -> None:
        """The bus writes conn's session record: its name and room now."""
        session = self.session_of.get(conn)
        if session is not None and conn.room is not None:
            stint = session.stints[-1]
            start = format_id(stint.epoch, stint.joined)
            earlier = ",".join(s.epoch for s in session.stints[:-1]) or "-"
            request = ("session", session.token, conn.name, conn.room.name, start, earlier)
            self.requests.append(request)

    def _end_session(self, conn: Member, session: Session) -> None:
        super()._end_session(conn, session)
        self.requests.append(("session-end", session.token, p.name_key(conn.name or "")))

    def _expire(self, session: Session, now: float) -> None:
        """This node's away session's window ended (its connection dropped;
        the node lives): it leaves through its room's log, as anyone whose
        connection was lost."""
        conn = session.conn
        self.sessions.close(session)
        self.session_of.pop(conn, None)
        self.requests.append(("session-end", session.token, p.name_key(conn.name)))
        room = conn.room
        room.away.pop(conn, None)
        self._ghost(conn)
        self._publish(room, ["leave", conn.name, p.SESSION_LOST], members=(_minus(conn.name),))

    def end_batch(self, now: float) -> None:
        super().end_batch(now)
        away = self.away_remotes
        # In the order their windows end (the window is the same for all,
        # and they went away in this order): only the head is looked at.
        while away:
            member = next(iter(away))
            until = member.away_until
            if until is not None and until > now:
                break
            del away[member]
            self.expiring.add(member)
            self._publish(member.room, ["expire", member.name, member.node])

    def due(self, now: float) -> Optional[float]:
        wait = super().due(now)
        if self.away_remotes:
            until = next(iter(self.away_remotes)).away_until
            if until is not None:
                left = max(0.0, until - now)
                wait = left if wait is None else min(wait, left)
        return wait

    def _resume_elsewhere(self, conn: Member, address: str, now: float, command: p.Resume) -> None:
        """A token of no session here: Redis may know it (another node's, or
        one whose node died).  conn is busy until the bus answers."""
        if command.last != "-" and parse_id(command.last) is None:
            line = p.render_error(p.render_bad_resume_id(command.last))
            self._resume_failed(conn, address, now, line)
            return
        self.resuming[conn] = (command.token, command.last, address)
        self._set_busy(conn)
        self.requests.append(("resume", conn, command.token, command.last))

    def session_found(self, conn: Member, token: str, found: Any) -> None:
        """The bus's answer to a resume: found is (name, room, the id to
        replay after) of the session, whose name this node now holds in
        Redis; None: unknown or expired; a str: an error's reason (an id the
        session never received, or Redis could not say)."""
        _, last, address = self.resuming.pop(conn, (token, "-", ""))
        connected = conn in self.connected
        if not isinstance(found, tuple):
            if connected:
                line = p.RESUME_UNKNOWN if found is None else p.render_error(found)
                self._resume_failed(conn, address, self._clock(), line)
                self._maybe_free(conn)
            return
        name, room_name, after = found
        key = p.name_key(name)
        self.moving[key] = (conn, token, after)
        if connected:
            self.claiming[key] = conn  # nobody here takes it meanwhile
        # else it went meanwhile: the move goes on, and it is away here
        # (_moved_here), its name and record kept for its window.

        def send() -> None:
            sender = conn if conn in self.connected else None
            self._publish(
                p.name_key(room_name), ["move", name], sender, members=(_plus(name, True),)
            )

        self._when_hosted(room_name, send)

    def _apply_session(self, room: Room, node: str, now: float, name: str) -> None:
        if node == self.node:
            return
        member = self.remotes.get((room.key, p.name_key(name)))
        if member is not None and member.node == node:
            member.session = True
            room.out.track(self.config.resume_backlog)

    def _apply_away(self, room: Room, node: str, now: float, name: str) -> None:
        """node is stopping: its member name, a session, is away."""
        member = self.remotes.get((room.key, p.name_key(name)))
        if member is not None and member.node == node:
            self._set_away(member, now)

    def _set_away(self, member: Remote, now: float) -> None:
        if member.away_until is None:
            member.away_until = now + self.config.resume_window
            self.away_remotes[member] = None

    def _apply_expire(self, room: Room, node: str, now: float, name: str, owner: str) -> None:
        key = p.name_key(name)
        member = self.remotes.get((room.key, key))
        if member is None or member.node != owner or member.away_until is None:
            return  # resumed meanwhile, or expired by an earlier "expire"
        self._drop_remote(member, p.SESSION_LOST, now)
        # Its session ends in Redis too (every host asks; once is enough), so
        # that a resume that comes too late cannot take its name back.
        self.requests.append(("session-gone", key, owner))

    def _apply_move(self, room: Room, node: str, now: float, name: str) -> None:
        """name's session resumed on node: silently node's member now."""
        key = p.name_key(name)
        if node == self.node:
            self._moved_here(room, now, name)
            return
        local = self.names.get(key)
        if local is not None and not isinstance(local, Remote) and local.room is room:
            self._moved_away(local, room)
        member = self.remotes.get((room.key, key))
        if member is not None:
            self._forget_remote(member)
        moved = Remote(name, node)
        moved.session = True
        self._add_remote(moved, room)
        room.out.track(self.config.resume_backlog)

    def _moved_away(self, conn: Member, room: Room) -> None:
        """This node's session client conn resumed on another node: it goes
        from here silently (its old connection, if open, is told)."""
        self._let_go(conn, p.RESUMED_ELSEWHERE, Why.RESUMED)
        if conn in room.away:
            del room.away[conn]
        else:
            room.leave(conn, None, moving=False, now=self._clock())
        del self.names[p.name_key(conn.name)]
        self.rooms.vacated(room)
        self._counted.add(room)

    def _let_go(self, conn: Member, line: str, why: str) -> Optional[Session]:
        """conn, a client of this node's, is another node's now (a resume or
        a sign-in there): its connection, if open, is told line and closed,
        and what this node kept of it goes; the room is the caller's.
        Returns its session, closed here."""
        session = self.session_of.pop(conn, None)
        if session is not None:
            self.sessions.close(session)
        if conn in self.connected:
            self._tell(conn, line)
            self.connected.discard(conn)
            self.silent.discard(conn)
            self.departures.append((conn, why))
            self.counts["departures"] += 1
        conn.room.out.untag(conn)
        self.signed.pop(conn, None)
        self.refreshing.pop(conn, None)
        self.published.pop(conn, None)
        self.busy.pop(conn, None)
        return session

    def _moved_here(self, room: Room, now: float, name: str) -> None:
        """Our "move" is back: the resuming client takes the session's
        place, with the lines it missed from this node's log of the room."""
        key = p.name_key(name)
        pending = self.moving.pop(key, None)
        if pending is None:
            return
        conn, token, last = pending
        if self.claiming.get(key) is conn:
            del self.claiming[key]
        # Redis said the session holds its name still (Control.TAKE): it is
        # the room's member again, whether this node knew it there or not
        # (it came to host the room after the session's node was lost, and
        # the room's members in Redis had lost it with its node).
        member = self.remotes.get((room.key, key))
        if member is not None:
            self._forget_remote(member)
        if conn not in self.connected:
            # Gone again before it was back: away here, as if it had dropped.
            away = Remote(name, self.node)
            away.session = True
            self._add_remote(away, room)
            self._set_away(away, now)
            self.requests.append(("session-keep", token, key))
            self._came_back_resume(conn, room)
            return
        session = Session(token, conn, self.config.resume_backlog)
        self.sessions.by_token[token] = session
        out = room.out
        out.track(self.config.resume_backlog)
        parsed = parse_id(last) if last != "-" else None
        # Its stint here starts where it resumes from: a later "-" replays
        # from there.
        resumed_from = parsed.seq if parsed is not None and parsed.epoch == out.epoch else out.seq
        session.enter(out.epoch, room.key, resumed_from)
        carried = self.lobby.out.detach(conn, member=False)
        conn.name = name
        conn.room = room
        self.names[key] = conn
        self.silent.discard(conn)
        self.session_of[conn] = session
        self.rooms.occupied(room)
        self._counted.add(room)
        if parsed is not None and parsed.epoch == out.epoch and parsed.seq < out.log_base:
            # This node's own record of the room starts after the client's
            # id (it came to host the room later): the lines between are
            # read from the room's log in Redis first (replayed()).  Until
            # then the client is in the room, away: counted, not yet sent.
            room.away[conn] = None
            self.replaying[conn] = (parsed, carried)
            self.requests.append(("replay", conn, room.key, parsed.seq >> OFFSET_BITS))
        else:
            self._resumed_here(conn, room, parsed, carried, [])
        self._came_back_resume(conn, room)

    def replayed(self, conn: Member, room_key: str, epoch: Optional[str], entries: list) -> None:
        """The bus read the room's log for conn's resume (epoch None: Redis
        could not say)."""
        pending = self.replaying.pop(conn, None)
        if pending is None:
            return
        parsed, carried = pending
        session = self.session_of.get(conn)
        room = conn.room
        if (
            conn in self.connected
            and session is not None
            and session.conn is conn
            and room is not None
            and room.key == room_key
        ):
            out = room.out
            earlier = None
            if epoch is not None and epoch == out.epoch:
                earlier = logged_lines(entries, epoch, parsed.seq, out.log_base)
            self._resumed_here(conn, room, parsed, carried, earlier)
        self._maybe_free(conn)

    def _resumed_here(
        self,
        conn: Member,
        room: Room,
        parsed: Optional[ParsedId],
        carried: bytes,
        earlier: Optional[list[tuple[int, bytes]]],
    ) -> None:
        """conn, resumed here, is sent the lines it missed after parsed: the
        ones of earlier (read from Redis, up to where this node's log of
        the room starts; None if they could not all be), then this node's
        log's; or, when they are not all there, a gap."""
        out = room.out
        session = self.session_of[conn]
        plan = None
        if parsed is not None and parsed.epoch == out.epoch and earlier is not None:
            start = Position(session.current, parsed.seq, 0)
            kept = [*earlier, *(out.log or ())]
            # Every line after base is in kept: earlier reaches from the
            # client's id to where the log starts (replayed()), or the log
            # reaches back past the id by itself.
            base = min(parsed.seq, out.log_base)
            plan = replay(session, start, kept, out.seq, self.config.resume_backlog, base)
        name = conn.name
        if plan is not None and not plan.gap:
            head = p.render_resumed(name, room.name, len(plan.lines))
            block = b"".join([(head + "\n").encode(), *plan.lines])
        else:
            # No id of this room's current epoch, or its lines are no longer
            # all there: a gap.
            head = p.render_resumed(name, room.name, None)
            block = (head + "\n").encode() + room.welcome_block(exclude=conn, tagged=True)
            # What it has now starts here: a later "-" replays from here.
            session.stints[-1] = session.stints[-1]._replace(joined=out.seq)
        self._record(conn)
        room.away.pop(conn, None)
        out.tag(conn, member=False)
        out.send_bytes(conn, carried + block, member=False)
        room.members[conn] = None
        out.joined(conn)
        if self.auth is not None and conn not in self.signed:
            # Signed in on the node it came from: this one has not seen its
            # token.  It sends it again, or goes as an expired one does.
            self.refreshing[conn] = self._clock() + self.config.auth_refresh
            self._tell(conn, p.render_token_expired(self.config.auth_refresh))

    def _came_back_resume(self, conn: Member, room: Room) -> None:
        self._maybe_free(conn)
        self._maybe_unhost(room)

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
            # handled now.  Lines act on its name and room as applied, so
            # this stops, and the rest is lost with it, where those are not
            # yet what it published: behind a /nick not back, and behind a
            # /join but for chat lines once its "enter" is out (they follow
            # it into the new room).
            self._held -= len(held)
            if conn.room is not None:
                for line in held:
                    heading = self.heading.get(conn)
                    if self.published.get(conn, [conn.name])[0] != conn.name:
                        break
                    if heading is not None and (not heading.sent or self._asks(conn, line)):
                        break
                    super().lines(conn, [line])
                    if conn not in self.connected:
                        return  # a /quit among them
            self.busy.pop(conn, None)  # what those lines published made it busy again
        self._sending.discard(conn)
        for senders in self._senders.values():
            senders.discard(conn)
        self.routing.pop(conn, None)
        if self.inflight.pop(conn, None):
            for queue in self.awaiting.values():
                for _, conns in queue:
                    conns.discard(conn)
        session = self.session_of.get(conn)
        if session is not None:
            if conn in self.heading or conn.room is None:
                # On its way between rooms: it leaves, session and all.
                self._end_session(conn, session)
            elif why == Why.SHUTDOWN and self.config.resume_window > 0:
                self._stop_away(conn, session)
                return
        heading = self._unhead(conn)
        if heading is not None:
            self._depart_heading(conn, heading, why, detail)
        super().depart(conn, why, detail)

    def _stop_away(self, conn: Member, session: Session) -> None:
        """This node stops: its session client conn is told to resume
        elsewhere and goes; the others keep it, away ("away"), and the bus
        keeps its name for its window (RoomBus.close)."""
        self.session_of.pop(conn, None)
        self.sessions.close(session)
        self._tell(conn, p.SESSION_SHUTDOWN)
        room, name = conn.room, conn.name
        self.connected.discard(conn)
        self.silent.discard(conn)
        room.leave(conn, None, moving=False, now=self._clock())
        room.out.untag(conn)
        self.rooms.vacated(room)
        key = p.name_key(name)
        if self.names.get(key) is conn:
            del self.names[key]
        # Out of the room's members in Redis: a node that starts to host the
        # room later does not find it there, as after a lost node ("!NODE").
        self._publish(room, ["away", name], members=(_minus(name),))
        self.departures.append((conn, Why.SHUTDOWN))
        self.counts["departures"] += 1

    def shutdown(self) -> None:
        # Sessions whose connection had dropped already (away here) become
        # away on the other nodes too: nobody here will end their windows.
        for session in list(self.sessions.away.values()):
            conn = session.conn
            room = conn.room
            self.sessions.close(session)
            self.session_of.pop(conn, None)
            room.away.pop(conn, None)
            self._publish(room, ["away", conn.name], members=(_minus(conn.name),))
        super().shutdown()

    def _depart_heading(self, conn: Member, heading: Heading, why: str, detail: str) -> None:
        """conn leaves while on its way into a room."""
        name = self.published.get(conn, [conn.name])[0]
        key = p.name_key(name)
        reason = self._leave_reason(why, detail) or ""
        if heading.carried is not None and self.names.get(key) is conn:
            # Out of its old room already (a /join whose leave is back): its
            # name is held here by its "enter" if that is out, else by nobody.
            del self.names[key]
        if heading.carried is None:
            # Its "leave" from the old room is out: it becomes a Remote of
            # ours there (Chat.depart -> _leave_room), leaving with that.
            self._ghost(conn)
        elif heading.sent:
            # Its "enter" is out: its "leave" follows it into the new room.
            room_key = p.name_key(heading.room)
            self._publish(room_key, ["leave", name, reason], members=(_minus(name),))
        else:
            if self.entering.get(key) is conn:
                del self.entering[key]
            if not self.compat:
                self.requests.append(("release", key))
            old = conn.room
            if old is not None and old.key in self.hosted:
                self._maybe_unhost(old)
        self.published.pop(conn, None)
        conn.room = None
        # The room it was on its way into was kept for it: it may go now.
        target = self.rooms.get(p.name_key(heading.room))
        if target is not None:
            self._maybe_unhost(target)

    def _ghost(self, conn: Member) -> None:
        """conn, which is in its room, leaves its delivery list now and
        stays there as a Remote of this node until its "leave" is back."""
        room = conn.room
        key = p.name_key(conn.name)
        room.away.pop(conn, None)  # a session client whose resume was under way
        held_back = conn in room.arriving  # never announced yet
        room.leave(conn, None, moving=False, now=self._clock())
        ghost = Remote(conn.name, self.node, room)
        room.remote[ghost] = None
        self.remotes[(room.key, key)] = ghost
        if held_back:
            # Announced with the others of its run, or (if it leaves first)
            # never, as on every other node.
            room.remote_arriving.append(ghost)
            self.holding.add(room)
        if self.names.get(key) is conn:
            self.names[key] = ghost
        self.nodes.setdefault(self.node, {})[ghost] = None
        self._counted.add(room)

    def _leave_room(self, conn: Member, why: str, detail: str) -> None:
        """conn's socket is gone: it stops receiving now, and stays a
        Remote of this node until its "leave" comes back."""
        name = self.published.get(conn, [conn.name])[0]  # a /nick of its may be out
        room = conn.room
        self._ghost(conn)
        self.published.pop(conn, None)
        reason = self._leave_reason(why, detail) or ""
        self._publish(room, ["leave", name, reason], members=(_minus(name),))

    def _speak(self, conn: Member, line: str, keep: bool) -> None:
        if self._room_for_line(conn):
            self._queued_lines += 1
            room = self.published[conn][1] if conn in self.published else conn.room.name
            history = (line + "\n").encode() if keep else None
            self._publish(p.name_key(room), ["say", line, keep], conn, hold=False, history=history)

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
            published = self._publishing(conn)
            old, published[0] = published[0], new
            self._publish(conn.room, ["nick", old, new], conn, members=(_plus(new),))
            return
        self._claim(conn, new, renaming=True)

    def _msg(self, conn: Member, command: p.Msg) -> None:
        # Through the recipient's node's inbox, even to a member of this
        # node, so that it reaches its recipient in order with everything
        # else it is sent; the bus finds the node (routed()).
        if p.name_key(command.target) != p.name_key(conn.name) and self._muted(conn):
            return
        if not self._room_for_line(conn):
            return
        self._queued_lines += 1
        self.routing[conn] = self.routing.get(conn, 0) + 1
        self.requests.append(("msg", conn, conn.name, command.target, command.text))

    def _join(self, conn: Member, command: p.Join) -> None:
        name = self._join_target(conn, command)
        if name is None:
            return
        key = p.name_key(name)
        if self.rooms.get(key) is None:
            # Not here: as the cluster spells it, if a directory names it
            # (a room made less than a heartbeat ago is spelt as typed).
            name = next((n for n in self.directory if p.name_key(n) == key), name)
        published = self._publishing(conn)
        published[1] = name
        reason = p.render_joined_reason(name)
        self._publish(conn.room, ["leave", conn.name, reason], conn, members=(_minus(conn.name),))
        self._head(conn, Heading(name, None, first=False))
        self._when_hosted(name)  # asked now, to be ready when the leave is back

    def _list_rooms(self, conn: Member, command: p.ListRooms) -> None:
        """The cluster's rooms: the hosted ones as they are here, the
        others as the nodes' directories last said (one heartbeat old)."""
        rooms: dict[str, tuple[str, int]] = {}
        for name, count in self.directory.items():
            key = p.name_key(name)
            if key not in self.hosted and count > 0:
                seen = rooms.get(key, (name, 0))
                rooms[key] = (seen[0], seen[1] + count)
        for key in self.hosted:
            room = self.rooms.get(key)
            if room is not None and room.size:
                rooms[key] = (room.name, room.size)
        if self.config.rooms_policy == "claims":
            rooms = {k: v for k, v in rooms.items() if self._may_enter(conn, v[0])}
        own = conn.room
        rooms.pop(own.key, None)
        limit = self.config.roster_limit
        shown = [(own.name, own.size, True)] + [
            (name, count, False)
            for name, count in nlargest(limit - 1, rooms.values(), key=lambda pair: pair[1])
        ]
        self._tell(conn, p.render_rooms(shown[:limit], total=len(rooms) + 1))

    # ------------------------------------------------------------------
    # Applying a room's entries: the same on every host of the room

    def _remotes(self, room: Room, node: Optional[str] = None) -> list[Remote]:
        """room's Remotes (of node only, if given)."""
        return [
            m for m in room.remote if isinstance(m, Remote) and (node is None or m.node == node)
        ]

    def _add_remote(self, member: Remote, room: Room) -> None:
        key = p.name_key(member.name)
        old = self.remotes.get((room.key, key))
        if old is not None:
            self._forget_remote(old)
        member.room = room
        room.remote[member] = None
        self.remotes[(room.key, key)] = member
        self.rooms.occupied(room)
        holder = self.names.get(key)
        if holder is None or isinstance(holder, Remote):
            self.names[key] = member  # a client of ours keeps its name here
        self.nodes.setdefault(member.node, {})[member] = None

    def _forget_remote(self, member: Remote) -> None:
        """member is no longer known here (silently)."""
        room = member.room
        room.remote.pop(member, None)
        if member in room.remote_arriving:
            room.remote_arriving.remove(member)
        key = p.name_key(member.name)
        if self.remotes.get((room.key, key)) is member:
            del self.remotes[(room.key, key)]
        if self.names.get(key) is member:
            del self.names[key]
        nodes = self.nodes.get(member.node)
        if nodes is not None:
            nodes.pop(member, None)
            if not nodes:
                del self.nodes[member.node]
        if member.away_until is not None:
            self.away_remotes.pop(member, None)
            self.expiring.discard(member)

    def _drop_remote(self, member: Remote, reason: Optional[str], now: float) -> None:
        """member leaves its room: announced with reason, or silently if None."""
        room = member.room
        if reason is not None and member in room.remote:
            room.leave_remote(member, reason, now)
        self._forget_remote(member)
        self.rooms.vacated(room)

    def _apply_enter(self, room: Room, node: str, now: float, name: str) -> None:
        key = p.name_key(name)
        conn = self.entering.get(key) if node == self.node else None
        if conn is not None:
            heading = self.heading.get(conn)
            if heading is not None and heading.sent and p.name_key(heading.room) == room.key:
                del self.entering[key]
                _release_if_empty(self.entering)
                if conn in self.connected:
                    self._arrive_here(conn, room, now)
                    return
            elif conn not in self.connected:
                # It left before this came back (its "leave" follows): a
                # Remote of ours until then.
                del self.entering[key]
        local = self.names.get(key)
        if local is not None and not isinstance(local, Remote) and node != self.node:
            # Only after Redis lost its data can two nodes have handed out
            # one name; this node's client keeps it here.
            log.warning("%s entered from node %s while held here; ignored", name, node)
            return
        member = Remote(name, node)
        self._add_remote(member, room)
        room.enter_remote(member, now)

    def _arrive_here(self, conn: Member, room: Room, now: float) -> None:
        """conn's "enter" into room is back: it is in."""
        heading = self._unhead(conn)
        name = self.published[conn][0]
        key = p.name_key(name)
        old = conn.room
        conn.name = name
        self.names[key] = conn
        conn.room = room
        self.rooms.occupied(room)
        self._counted.add(room)
        session = self.session_of.get(conn)
        if session is not None:
            room.out.track(self.config.resume_backlog)
            room.out.tag(conn, member=False)
        if heading is None or heading.first:
            self.counts["arrivals"] += 1
            room.enter(conn, [p.render_you_are(name)], b"", now)
        else:
            self.counts["joins"] += 1
            room.enter(conn, [p.render_now_in(room.name)], heading.carried or b"", now)
        if session is not None:
            session.enter(room.out.epoch, room.key, room.out.seq)
            self._record(conn)
        if old is not None and old is not room:
            self._maybe_unhost(old)
        self._maybe_free(conn)

    def _apply_leave(self, room: Room, node: str, now: float, name: str, reason: str) -> None:
        key = p.name_key(name)
        if node == self.node:
            conn = self.names.get(key)
            heading = self.heading.get(conn) if conn is not None else None
            if (
                conn is not None
                and heading is not None
                and heading.carried is None
                and conn.room is room
            ):
                # Our client's /join: out of this room now, into the next
                # once it is hosted.
                heading.carried = room.leave(conn, reason or None, moving=True, now=now)
                room.out.untag(conn)
                self.rooms.vacated(room)
                self._counted.add(room)
                self._advance(conn)
                return
        member = self.remotes.get((room.key, key))
        if member is None or member.node != node:
            return  # unknown here, or the name has changed hands since
        self._drop_remote(member, reason, now)
        if node == self.node and not self.compat and not self._used_here(key):
            self.requests.append(("release", key))

    def _used_here(self, key: str) -> bool:
        """Whether a client of this node still goes by the name key."""
        holder = self.names.get(key)
        if holder is not None and not isinstance(holder, Remote):
            return True
        return key in self.entering or key in self.claiming

    def _apply_say(self, room: Room, node: str, now: float, line: str, keep: bool) -> None:
        room.say(line, keep=keep)

    def _apply_nick(self, room: Room, node: str, now: float, old: str, new: str) -> None:
        old_key, new_key = p.name_key(old), p.name_key(new)
        if node == self.node and old_key != new_key:
            self.claiming.pop(new_key, None)  # held since claimed()
        member: Any = None
        if node == self.node:
            conn = self.names.get(old_key)
            if conn is not None and not isinstance(conn, Remote) and conn.room is room:
                member = conn
        if member is None:
            remote = self.remotes.get((room.key, old_key))
            if remote is None or remote.node != node:
                return
            member = remote
            del self.remotes[(room.key, old_key)]
            self.remotes[(room.key, new_key)] = remote
        if self.names.get(old_key) is member:
            del self.names[old_key]
        self.names[new_key] = member
        room.say(p.render_nick(old, new), keep=False)
        member.name = new
        if not isinstance(member, Remote):
            self._record(member)
        if node == self.node and old_key != new_key and not self._used_here(old_key):
            self.requests.append(("release", old_key))

    def _apply_msg(self, sender: str, target: str, text: str) -> None:
        conn = self.names.get(p.name_key(target))
        if conn is None or isinstance(conn, Remote):
            return  # gone meanwhile
        line = p.render_private_to_recipient(sender, text)
        session = self.session_of.get(conn)
        if session is not None and session.away:
            # Kept for its resume.  The sender was told it went (routed());
            # past the bound the node can only say so in its log.
            if session.kept_away >= self.config.resume_backlog:
                log.warning(
                    "private line to away %s not kept: %d waiting", target, session.kept_away
                )
                return
            session.keep_private(conn.room.out.seq, (line + "\n").encode())
            return
        if conn not in self.connected:
            return  # gone meanwhile
        room = conn.room
        if room is not None and conn in room.arriving:
            room.announce()  # its roster first, as Chat._msg does
        if session is not None and room is not None:
            data = session.keep_private(room.out.seq, (line + "\n").encode())
            room.out.send_bytes(conn, data, member=room.receiving(conn))
        else:
            self._tell(conn, line)

    # The same sub signing in on two nodes (auth.py): the second takes the
    # name and its place over, and the room sees nothing.  The node that has
    # it lets it go ("hand-over" in its inbox: its connection is told
    # "signed in elsewhere"), says from which room ("handed", in the new
    # node's inbox), and the new node takes the name in Redis and publishes
    # "handover" into that room, after which every host has it there.

    def _apply_hand_over(self, name: str, to: str) -> None:
        key = p.name_key(name)
        conn = self.names.get(key)
        room_name = ""
        if conn is not None and not isinstance(conn, Remote) and conn.room is not None:
            room_name = conn.room.name
            session = self._let_go(conn, p.SIGNED_IN_ELSEWHERE, Why.SIGNED_IN_ELSEWHERE)
            if session is not None:
                self.requests.append(("session-end", session.token, key))
            # Until the handover is back it stays a member of ours here (the
            # others still have it as ours too).
            self._ghost(conn)
        self.requests.append(("handed", to, name, room_name))

    def _apply_handed(self, name: str, room_name: str) -> None:
        key = p.name_key(name)
        conn = self.signing_over.pop(key, None)
        if conn is None:
            return
        # Gone meanwhile or not, the name and its place are taken over:
        # the handover's landing then says it leaves, as anyone does.
        if not room_name:
            if conn in self.connected:
                self._claim(conn, name, renaming=False)  # it was not there after all
            return
        self.requests.append(("take-name", name))
        self.claiming[key] = conn
        self.moving[key] = (conn, "", "-")

        def send() -> None:
            sender = conn if conn in self.connected else None
            self._publish(p.name_key(room_name), ["handover", name], sender, members=(_plus(name),))

        self._when_hosted(room_name, send)

    def _apply_handover(self, room: Room, node: str, now: float, name: str) -> None:
        key = p.name_key(name)
        if node != self.node:
            member = self.remotes.get((room.key, key))
            if member is not None:
                self._forget_remote(member)
            self._add_remote(Remote(name, node), room)
            return
        pending = self.moving.pop(key, None)
        if pending is None:
            return
        conn = pending[0]
        if self.claiming.get(key) is conn:
            del self.claiming[key]
        member = self.remotes.get((room.key, key))
        if member is not None:
            self._forget_remote(member)
        if conn not in self.connected:
            # Gone meanwhile: it leaves, as anyone does.
            ghost = Remote(name, self.node, room)
            self._add_remote(ghost, room)
            self._publish(room, ["leave", name, ""], members=(_minus(name),))
            self._came_back_resume(conn, room)
            return
        carried = self.lobby.out.detach(conn, member=False)
        conn.name, conn.room = name, room
        self.names[key] = conn
        self.silent.discard(conn)
        self.rooms.occupied(room)
        self._counted.add(room)
        greeting = (p.render_you_are(name) + "\n").encode()
        welcome = room.welcome_block(exclude=None, tagged=False)
        room.out.send_bytes(conn, carried + greeting + welcome, member=False)
        room.members[conn] = None
        room.out.joined(conn)
        self.counts["arrivals"] += 1
        self._came_back_resume(conn, room)

    def _apply_kick(self, name: str, by: str, reason: str) -> None:
        """An operator's /kick or /ban on another node, or the API's: our
        client name leaves (an operator stays: only operators kick)."""
        conn = self.names.get(p.name_key(name))
        if conn is None or isinstance(conn, Remote) or self._is_operator(conn):
            return
        self._kick(conn, by, reason)

    # The server API across the cluster: a room this node does not host is
    # known from the nodes' directories, its members and history read from
    # Redis; a user on another node is kicked through its node's inbox.

    def _api_rooms(self) -> list[dict[str, Any]]:
        counts: dict[str, tuple[str, int]] = {}
        for name, count in self.directory.items():
            key = p.name_key(name)
            if key not in self.hosted and count > 0:
                seen = counts.get(key, (name, 0))
                counts[key] = (seen[0], seen[1] + count)
        for key in self.hosted:
            room = self.rooms.get(key)
            if room is not None and room.size:
                counts[key] = (room.name, room.size)
        return [{"room": f"#{name}", "members": n} for name, n in counts.values()]

    def _directory_room(self, name: str) -> Optional[tuple[str, int]]:
        """(name as the cluster spells it, members) of a room the nodes'
        directories list, None if none does."""
        key = p.name_key(name)
        found = [(n, c) for n, c in self.directory.items() if p.name_key(n) == key and c > 0]
        if not found:
            return None
        return found[0][0], sum(c for _, c in found)

    def api(self, op: str, args: dict[str, Any], answer: Callable[[Any], object]) -> None:
        key = p.name_key(args.get("room") or args.get("name") or "")
        if op == "room" and key not in self.hosted:
            listed = self._directory_room(args["room"])
            if listed is None:
                self._api_no_room(args["room"], answer)
            else:
                self.requests.append(("room-info", key, listed[0], answer))
            return
        if op == "disconnect":
            target = self.names.get(key)
            if target is None or isinstance(target, Remote):
                # Wherever it is: the bus finds its node in Redis.
                self.requests.append(("kick", args["name"], "api", args["reason"], answer))
                return
        super().api(op, args, answer)

    def _api_publish(self, name: str, line: str, answer: Callable[[Any], object]) -> None:
        key = p.name_key(name)
        room = self.rooms.get(key) if key in self.hosted else None
        if room is not None:
            spelt, members = room.name, room.size
        else:
            listed = self._directory_room(name)
            if listed is None:
                self._api_no_room(name, answer)
                return
            spelt, members = listed
        # Into the room's log, as a member's line is: every host says it.
        history = (line + "\n").encode()
        self._publish(key, ["say", line, True], history=history)
        answer((200, {"room": f"#{spelt}", "members": members}))

    def _kick_elsewhere(self, op: Member, name: str, reason: str, tell: bool) -> None:
        # This node may not know the name (its member is in a room hosted
        # elsewhere, or its arrival is not applied here yet): Redis knows
        # its node; the operator hears of it only if nobody has it.
        self.requests.append(("kick", name, op.name, reason, op if tell else None))

    def kick_routed(self, op: Member, name: str, found: bool) -> None:
        if not found and op in self.connected:
            self._error(op, p.render_no_such_user(name))

    def _restricted_elsewhere(
        self, what: str, key: str, until: Optional[float], lifted: bool
    ) -> None:
        table = "bans" if what == "banned" else "mutes"
        self.requests.append(("restrict", table, key, until, lifted))
        self._restricted_here[(table, key)] = (self._wall(), until, lifted)

    def restrictions(self, tables: dict[str, dict[str, Optional[float]]]) -> None:
        """The cluster's bans and mutes as a heartbeat read them in Redis.
        This node's own changes of the last few seconds stand over them:
        the heart may have read before the claimer wrote them."""
        now = self._wall()
        recent = 2 * self.config.node_timeout
        bans, mutes = dict(tables["bans"]), dict(tables["mutes"])
        for (table, key), (at, until, lifted) in list(self._restricted_here.items()):
            if now - at > recent:
                del self._restricted_here[(table, key)]
                continue
            target = bans if table == "bans" else mutes
            if lifted:
                target.pop(key, None)
            else:
                target[key] = until
        self.bans.until, self.mutes.until = bans, mutes

    def _kick(self, target: Optional[Member], by: str, reason: str) -> bool:
        if isinstance(target, Remote):
            if target.node == self.node:
                return False  # ours, leaving already
            self.requests.append(("kick", target.name, by, reason, None))
            return True
        return super()._kick(target, by, reason)

    def _apply_present(self, room: Room, node: str, now: float, names: list[str]) -> None:
        """node's members in room are names: made so here silently (a state
        transfer, not news: each arrival was announced when it happened)."""
        if node == self.node:
            return
        self.lost_nodes.discard(node)  # back after it was taken for lost
        wanted = {p.name_key(name): name for name in names}
        for member in self._remotes(room, node):
            name = wanted.pop(p.name_key(member.name), None)
            if name is None:
                self._forget_remote(member)
            else:
                member.name = name  # the spelling may have changed
        for key, name in wanted.items():
            holder = self.names.get(key)
            if holder is not None and not isinstance(holder, Remote):
                continue  # ours here: the name's claim in Redis decides
            self._add_remote(Remote(name, node), room)

    def _apply_lost(self, room: Room, node: str, now: float, lost: str, reason: str) -> None:
        if lost == self.node:
            # We were stalled past --node-timeout and the others let our
            # members go: claim our names again and tell them who is here.
            log.warning("this node was declared lost by node %s; rejoining #%s", node, room.name)
            self.requests.append(("reassert",))
            self._publish_present(room)
            return
        for member in self._remotes(room, lost):
            if member.session:
                self._set_away(member, now)  # it may resume on a node of ours
            else:
                self._drop_remote(member, reason, now)
