"""One room: who hears its lines, its history, and the announcements of
arrivals and departures.  Pure: no sockets, no gevent, no clock.

The Chat (chat.py) owns every Room and is its only caller; the hub owns
the Chat, and that is what makes the state safe without locks, as the
seed's broadcaster goroutine is.  A room speaks through its own Fanout
(fanout.py): one rendered batch per room, the same bytes for each member.

A connection, as a room sees it, is any object with a `name` attribute
(events.Member).

In a cluster (cluster.py) a room also has members that this node does not
serve: `remote` holds them (cluster.Remote objects), counted in its size,
its roster and /who, but never delivered to; their arrivals and departures
are announced like local ones (enter_remote, leave_remote).
"""

from collections import deque
from itertools import chain, islice
from typing import Any, Optional

from gchat import protocol as p
from gchat.config import Config
from gchat.events import Member
from gchat.fanout import Fanout
from gchat.sessions import tag


class Room:
    """Members, history and announcements of one room.

    In a room of at least arrival_merge_threshold people (not in
    --compat), arrivals and departures are held back for up to
    arrival_merge_window seconds, or until anything else is said in the
    room.  The members present then hear one line naming every departure
    of the run and one naming every arrival (each newcomer's roster, sent
    then, counts everyone present then).  A storm of N arrivals or
    departures so costs one or two lines per member per window instead of
    N.  Someone who arrives and leaves within one window was never
    announced, so nobody hears of either.
    """

    def __init__(
        self, name: str, key: str, config: Config, dirty: list["Room"], holding: set["Room"]
    ) -> None:
        """name: as its creator spelt it; key: protocol.name_key(name);
        dirty: the list a room joins when it has output for the hub to
        flush; holding: the set it joins while it holds announcements."""
        self.name = name
        self.key = key
        self.config = config
        self.compat = config.compat
        self.out = Fanout(self, dirty)
        # conn -> None: who receives the broadcasts, in order of arrival
        self.members: dict[Member, None] = {}
        # conn -> None: newcomers held back, not yet announced
        self.arriving: dict[Member, None] = {}
        self.leaving: list[tuple[str, str]] = []  # (name, reason) of departures held back
        # Remote -> None: members served by other nodes (cluster.py)
        self.remote: dict[Member, None] = {}
        self.remote_arriving: list[Member] = []  # those of them whose arrival is held back
        # conn -> None: session clients whose connection dropped
        # (sessions.py): still here for the others, delivered nothing,
        # until they resume or their window ends.
        self.away: dict[Member, None] = {}
        self.held_since = 0.0
        self._holding = holding
        history = 0 if config.compat else config.history
        # Encoded lines, "\n" included, so that a newcomer's block is one join.
        self.history: Optional[deque[bytes]] = deque(maxlen=history) if history else None
        # The place of each history line in the room's order (its id for a
        # session client), kept beside it.
        self.history_seqs: deque[int] = deque(maxlen=history or 1)

    def __repr__(self) -> str:
        return f"<Room #{self.name} {self.size}>"

    @property
    def size(self) -> int:
        """Everyone in the room, announced or not."""
        return len(self.members) + len(self.arriving) + len(self.remote) + len(self.away)

    def names(self) -> list[str]:
        return [conn.name for conn in chain(self.members, self.arriving, self.remote, self.away)]

    def receiving(self, conn: Member) -> bool:
        """Whether conn gets this room's broadcasts at this point."""
        return conn in self.members

    # ------------------------------------------------------------------

    def say(self, line: str, keep: bool) -> None:
        """line to everyone here; keep: it goes into the history too."""
        if self._held():
            self.announce()
        data = self.out.broadcast(line)
        if keep and self.history is not None:
            self.history.append(data)
            self.history_seqs.append(self.out.seq)

    def enter(self, conn: Member, greeting: list[str], prefix: bytes, now: float) -> None:
        """conn comes in: greeting (its "You are ..." line) and the roster
        and history go to it alone, the members hear of it.  prefix: what
        it was sent in its previous room this batch, delivered first."""
        out = self.out
        if prefix:
            out.send_bytes(conn, prefix, member=False)
        for line in greeting:
            out.send(conn, line, member=False)
        if self._arrival_held(self.size, now):
            self.arriving[conn] = None
            return
        if not self.compat:
            self._welcome(conn, exclude=None)
        out.broadcast(p.render_arrived(conn.name))
        self.members[conn] = None
        out.joined(conn)

    def leave(self, conn: Member, reason: Optional[str], moving: bool, now: float) -> bytes:
        """conn goes.  reason: what the others are told after "has left",
        None to tell them nothing (shutdown).  moving: it goes to another
        room, so its share of this batch so far is returned for that
        room's Fanout to deliver first (else b"")."""
        receiving = conn in self.members
        if moving:
            carried = self.out.detach(conn, member=receiving)
        else:
            carried = b""
            self.out.departed(conn, member=receiving)
        if not receiving:
            self.arriving.pop(conn, None)  # never announced: nobody hears of it
            if not self._held():
                self._holding.discard(self)  # nothing left to announce
            return carried
        size = self.size
        del self.members[conn]
        if reason is not None:
            self._departure(conn.name, reason, size, now)
        return carried

    def enter_remote(self, member: Member, now: float) -> None:
        """A member served by another node comes in: the members here hear
        of it, as of a local arrival (held back the same way)."""
        self.remote[member] = None
        if self._arrival_held(self.size - 1, now):
            self.remote_arriving.append(member)
            return
        self.out.broadcast(p.render_arrived(member.name))

    def leave_remote(self, member: Member, reason: Optional[str], now: float) -> None:
        """A member served by another node goes; reason as for leave()."""
        size = self.size
        del self.remote[member]
        if member in self.remote_arriving:
            self.remote_arriving.remove(member)  # never announced: nobody hears of it
            if not self._held():
                self._holding.discard(self)
            return
        if reason is not None:
            self._departure(member.name, reason, size, now)

    def go_away(self, conn: Member) -> None:
        """conn, a session client, lost its connection: the others are
        told nothing, and it is delivered nothing, until it comes back or
        its window ends (leave_away)."""
        if conn in self.arriving:
            self.announce()  # its arrival is said before it is away
        self.out.departed(conn, member=conn in self.members)
        self.out.untag(conn)
        self.members.pop(conn, None)
        self.away[conn] = None

    def come_back(self, old: Member, new: Member, replay: bytes) -> None:
        """new resumes old's place (old away, or still connected): replay
        (its first lines) and then the room's broadcasts go to new."""
        if old in self.arriving:
            self.announce()
        if old in self.members:
            self.out.departed(old, member=True)
            del self.members[old]
        self.out.untag(old)
        self.away.pop(old, None)
        self.out.tag(new, member=False)
        self.out.send_bytes(new, replay, member=False)
        self.members[new] = None
        self.out.joined(new)

    def leave_away(self, conn: Member, reason: str, now: float) -> None:
        """An away session's window ended: it leaves, and the others hear."""
        size = self.size
        del self.away[conn]
        self._departure(conn.name, reason, size, now)

    def _merges(self, size: int) -> bool:
        """Whether a room of size members holds its announcements back."""
        return not self.compat and size >= self.config.arrival_merge_threshold

    def _arrival_held(self, size: int, now: float) -> bool:
        """An arrival into a room of size members: True when it is held
        back (the caller records it), False when it is announced at once,
        after whatever was held before it."""
        if self._merges(size):
            self._hold(now)
            return True
        if self._held():
            self.announce()
        return False

    def _departure(self, name: str, reason: str, size: int, now: float) -> None:
        """name has left a room of size members (before it left): held
        back with the run it belongs to, or said now."""
        if self._merges(size):
            self._hold(now)
            self.leaving.append((name, reason))
        else:
            self.say(p.render_left(name, "" if self.compat else reason), keep=False)

    def _held(self) -> bool:
        return bool(self.arriving or self.leaving or self.remote_arriving)

    def _hold(self, now: float) -> None:
        if not self._held():
            self.held_since = now
            self._holding.add(self)

    def announce(self) -> None:
        """Announce the departures and arrivals held back, if any."""
        self._holding.discard(self)
        leaving, self.leaving = self.leaving, []
        arriving, self.arriving = self.arriving, {}
        remote, self.remote_arriving = self.remote_arriving, []
        out = self.out
        limit = self.config.roster_limit
        if leaving:
            if len(leaving) == 1:
                out.broadcast(p.render_left(*leaving[0]))
            else:
                out.broadcast(p.render_departures(leaving[:limit], len(leaving)))
        if not arriving and not remote:
            return
        count = len(arriving) + len(remote)
        names = [c.name for c in islice(chain(remote, arriving), limit)]
        if count == 1:
            out.broadcast(p.render_arrived(names[0]))
        else:
            out.broadcast(p.render_arrivals(names, count))
        # Each newcomer's roster counts the others of its own run too.
        self.members.update(arriving)
        for conn in arriving:
            self._welcome(conn, exclude=conn)
            out.joined(conn)

    def due(self, now: float) -> Optional[float]:
        """Seconds until held announcements must be made, or None."""
        if not self._held():
            return None
        return max(0.0, self.held_since + self.config.arrival_merge_window - now)

    def _welcome(self, conn: Member, exclude: Optional[Member]) -> None:
        """The roster (exercise 8.12) and the history, to a newcomer alone,
        in one piece (they reach the client in one write)."""
        block = self.welcome_block(exclude, tagged=conn in self.out.tagged)
        self.out.send_bytes(conn, block, member=False)

    def welcome_block(self, exclude: Optional[Member], tagged: bool) -> bytes:
        """The roster line and the history block: everyone present but
        exclude (the newcomer, when it is already among the members), at
        most roster_limit names, the count exact; tagged: the history's
        lines with their ids."""
        limit = self.config.roster_limit
        others = (
            c.name
            for c in chain(self.members, self.arriving, self.remote, self.away)
            if c is not exclude
        )
        shown = list(islice(others, limit))
        total = self.size - (exclude is not None)
        roster = (p.render_roster(shown, total=total, newcomer=True) + "\n").encode()
        if not self.history:
            return roster
        return roster + self.history_block(tagged)

    def history_block(self, tagged: bool) -> bytes:
        """The history as a newcomer gets it, in one piece (the frame and
        the lines reach the client in one write); tagged: each line with
        its id, for a session client."""
        history = self.history or ()
        lines: Any = history
        if tagged and len(self.history_seqs) == len(history):
            epoch = self.out.epoch
            lines = (tag(epoch, seq, data) for seq, data in zip(self.history_seqs, history))
        return b"".join(
            (
                p.render_history_open(self.name, len(history)).encode(),
                b"\n",
                *lines,
                p.HISTORY_CLOSE.encode(),
                b"\n",
            )
        )
