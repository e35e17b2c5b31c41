"""Sessions: what lets a client that dropped come back with every line it
missed, exactly once (issue 18).  Pure: no sockets, no gevent, no clock
(times are passed in), no randomness of its own (tokens are made by the
callable the owner passes).

A named client that sends `/session` gets a token, a secret that names its
session.  From then on every line of its room's order reaches it as
`@ID LINE`.  An ID says where in that order the line stands:

    EPOCH:SEQ        the SEQth line of the room whose log has that epoch
    EPOCH:SEQ:K      the Kth private line kept for the session, said after
                     that room's SEQth line (K counts up over the session)

EPOCH is a random word a room takes when it is made (room.py): two rooms,
or one room made again after it was dropped, never share one, so an ID
names its room.  Clients treat IDs as opaque.

A session lives through its stints: the rooms it was in, in order, each
with the room's epoch and the SEQ at which the session came in.  An ID
from the current stint resumes after it; one from the stint before
(`/join` just before the drop) resumes at the join; one from no stint of
the session is bad input.

Private lines (a /msg to the session) are kept, the last resume_backlog
of them, with the position they were said at: a resume replays the ones
after its ID in order among the room's lines.  While the session is away,
a /msg to it is kept too, up to resume_backlog of them; past that the
sender is told that it was not.

The owner (chat.py, through the hub) holds the registry; nothing else
touches it.
"""

import re
from bisect import bisect_right
from collections import deque
from typing import Any, Callable, NamedTuple, Optional

# A token: at least 22 characters of the URL-safe base64 alphabet (128
# bits of a CSPRNG; secrets.token_urlsafe(24) gives 32 of them).
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{22,128}")
# Seconds over which failed resumes from one address are counted.
FAILURE_WINDOW = 60.0


class Position(NamedTuple):
    """Where a line stands in a session's order: its stint (index into
    Session.stints), the room's SEQ, and K (0 for a room line)."""

    stint: int
    seq: int
    k: int


class ParsedId(NamedTuple):
    epoch: str
    seq: int
    k: int  # 0: a room line


def format_id(epoch: str, seq: int, k: int = 0) -> str:
    return f"{epoch}:{seq}:{k}" if k else f"{epoch}:{seq}"


def parse_id(text: str) -> Optional[ParsedId]:
    """An ID as format_id writes it, or None if text is not one."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[0].isalnum():
        return None
    try:
        numbers = [int(part) for part in parts[1:]]
    except ValueError:
        return None
    if any(n < 0 or not part.isdigit() for n, part in zip(numbers, parts[1:])):
        return None
    return ParsedId(parts[0], numbers[0], numbers[1] if len(numbers) == 2 else 0)


def tag(epoch: str, seq: int, data: bytes, k: int = 0) -> bytes:
    """A line (encoded, "\\n" included) as a session client receives it."""
    return b"@" + format_id(epoch, seq, k).encode() + b" " + data


class Stint(NamedTuple):
    epoch: str
    room_key: str
    joined: int  # the room's SEQ when the session came in


# Rooms a session remembers having been in, most recent last: an id from
# an older one is no id of the session's any more.  Eight covers a client
# that hops between a few rooms; each costs a small tuple.
STINTS_KEPT = 8


class Session:
    """One client's session.  conn: its connection (the one it had when
    away_since is set)."""

    __slots__ = ("token", "conn", "stints", "forgotten", "private", "k", "away_since", "kept_away")

    def __init__(self, token: str, conn: Any, backlog: int) -> None:
        self.token = token
        self.conn = conn
        self.stints: list[Stint] = []  # the last STINTS_KEPT, oldest first
        self.forgotten = 0  # stints dropped from the front: positions stay absolute
        # (Position, encoded line with its id): the private lines kept.
        self.private: deque[tuple[Position, bytes]] = deque(maxlen=backlog)
        self.k = 0  # the last K given
        self.away_since: Optional[float] = None
        self.kept_away = 0  # private lines kept since it went away

    @property
    def away(self) -> bool:
        return self.away_since is not None

    @property
    def current(self) -> int:
        """The current stint's index (absolute, as in Positions)."""
        return self.forgotten + len(self.stints) - 1

    def enter(self, epoch: str, room_key: str, seq: int) -> None:
        """The session is in a room from that room's SEQ on."""
        self.stints.append(Stint(epoch, room_key, seq))
        if len(self.stints) > STINTS_KEPT:
            del self.stints[0]
            self.forgotten += 1

    def position(self, parsed: "ParsedId") -> Optional[Position]:
        """Where the id parsed stands in the session's order, None if it is
        from no room the session remembers.  A room the session was in more
        than once gives its lines to the stint whose join came before them;
        an id from before a stint's join (a line of the history block it
        was shown) stands at the join."""
        at_join = None
        for index in range(len(self.stints) - 1, -1, -1):
            stint = self.stints[index]
            if stint.epoch != parsed.epoch:
                continue
            if parsed.seq > stint.joined or (parsed.k and parsed.seq == stint.joined):
                return Position(self.forgotten + index, parsed.seq, parsed.k)
            if at_join is None:
                at_join = Position(self.forgotten + index, stint.joined, 0)
        return at_join

    def keep_private(self, seq: int, data: bytes) -> bytes:
        """A private line said after the current room's SEQth line: kept,
        and returned with its id."""
        self.k += 1
        tagged = tag(self.stints[-1].epoch, seq, data, self.k)
        self.private.append((Position(self.current, seq, self.k), tagged))
        if self.away:
            self.kept_away += 1
        return tagged


def resume_from(last: str, start: str, earlier: "list[str]") -> str:
    """Where a resume on another node starts (a cluster's, which knows the
    session from its record in Redis: start, the id where its stint in its
    room began; earlier, the epochs of the rooms it was in before): the id
    to replay after.  As on the session's own node, "-" and an id of a room
    before the last /join start at the join, and an id of the room before
    the join (a line of the history block it was shown) too.  ValueError
    when last is no id the session received."""
    begun = parse_id(start)
    if last == "-" or begun is None:
        return start
    parsed = parse_id(last)
    if parsed is None:
        raise ValueError(last)
    if parsed.epoch == begun.epoch:
        return last if parsed.seq > begun.seq or parsed.k else start
    if parsed.epoch in earlier:
        return start
    raise ValueError(last)


class Replay(NamedTuple):
    """What a resume sends: the room lines and private lines after the
    client's ID, in order (gap False), or the session's kept private lines
    after it and gap True (the room's lines are no longer all there)."""

    lines: list[bytes]
    gap: bool


def replay(
    session: Session,
    start: Optional[Position],
    room_log: Any,
    room_seq: int,
    backlog: int,
    log_base: Optional[int] = None,
) -> Replay:
    """The lines a resume from start (None: from the session's beginning in
    its room) must send.  room_log: the current room's kept lines, (SEQ,
    tagged bytes) in order; room_seq: the room's last SEQ; log_base: every
    line after that SEQ is in room_log (None: SEQs are consecutive, and
    room_log's first entry says it)."""
    current = session.current
    joined = session.stints[-1].joined
    if start is None or start.stint < current:
        after = joined  # from the join (or the session's start)
        private_after = start if start is not None else Position(-1, 0, 0)
    else:
        after = start.seq
        private_after = start
    privates = [(pos, data) for pos, data in session.private if pos > private_after]
    if log_base is None:
        log_base = room_log[0][0] - 1 if room_log else room_seq
    after_log = _after(room_log, after)
    if len(after_log) > backlog or (room_seq > after and after < log_base):
        return Replay([data for _, data in privates], True)
    lines: list[bytes] = []
    older = [data for pos, data in privates if pos.stint < current]
    lines.extend(older)
    mine = [(pos.seq, pos.k, data) for pos, data in privates if pos.stint == current]
    room = [(seq, 0, data) for seq, data in after_log]
    lines.extend(data for _, _, data in sorted(room + mine, key=lambda item: item[:2]))
    return Replay(lines, False)


def _after(room_log: Any, seq: int) -> list[tuple[int, bytes]]:
    """The entries of room_log (in SEQ order) after seq."""
    if not room_log:
        return []
    skip = bisect_right(room_log, seq, key=lambda entry: entry[0])
    return [room_log[i] for i in range(skip, len(room_log))]


class Throttle:
    """Failures per address within FAILURE_WINDOW seconds: an address with
    limit of them is refused until the oldest is a window old (failed
    resumes here; failed sign-ins, auth.py)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._failed: dict[str, deque[float]] = {}  # address -> times of failures

    def throttled(self, address: str, now: float) -> bool:
        """Whether address has failed limit times in the last window."""
        times = self._failed.get(address)
        if not times:
            return False
        while times and now - times[0] >= FAILURE_WINDOW:
            times.popleft()
        if not times:
            del self._failed[address]
            return False
        return len(times) >= self.limit

    def failed(self, address: str, now: float) -> None:
        self._failed.setdefault(address, deque()).append(now)
        # Old addresses go when they are looked at (throttled); a sweep
        # here keeps the table bounded by the addresses of the last window.
        if len(self._failed) > 4096:
            for key in [k for k, v in self._failed.items() if now - v[-1] >= FAILURE_WINDOW]:
                del self._failed[key]


class Sessions:
    """Every session of this process, by token, with the failed resumes
    per address."""

    def __init__(
        self, new_token: Callable[[], str], backlog: int, window: float, failures: int
    ) -> None:
        self.new_token = new_token
        self.backlog = backlog
        self.window = window
        self.failures = failures
        self.by_token: dict[str, Session] = {}
        # token -> Session, the away ones, in the order they went away
        self.away: dict[str, Session] = {}
        self._throttle = Throttle(failures)

    def __len__(self) -> int:
        return len(self.by_token)

    def open(self, conn: Any) -> Session:
        token = self.new_token()
        while token in self.by_token:  # never, with 128 bits; but never twice
            token = self.new_token()
        session = Session(token, conn, self.backlog)
        self.by_token[token] = session
        return session

    def close(self, session: Session) -> None:
        self.by_token.pop(session.token, None)
        self.away.pop(session.token, None)

    def find(self, token: str) -> Optional[Session]:
        return self.by_token.get(token)

    def went_away(self, session: Session, now: float) -> None:
        """session's connection dropped at now."""
        session.away_since = now
        self.away[session.token] = session

    def came_back(self, session: Session) -> None:
        session.away_since = None
        session.kept_away = 0
        self.away.pop(session.token, None)

    def expired(self, now: float) -> list[Session]:
        """Away sessions whose window has passed (still registered).  The
        away table is in the order they went away, and the window is the
        same for all: only its head is looked at, not every session."""
        out = []
        for session in self.away.values():
            if session.away_since is None or now - session.away_since < self.window:
                break
            out.append(session)
        return out

    def due(self, now: float) -> Optional[float]:
        """Seconds until the next away session expires, or None."""
        for session in self.away.values():
            if session.away_since is not None:
                return max(0.0, session.away_since + self.window - now)
        return None

    def throttled(self, address: str, now: float) -> bool:
        """Whether address has failed too many resumes in the last minute."""
        return self._throttle.throttled(address, now)

    def failed(self, address: str, now: float) -> None:
        self._throttle.failed(address, now)
