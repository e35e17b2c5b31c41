"""The line protocol, with no sockets, no gevent and no clock.

Everything here is driven with bytes and strings by the tests:

* LineReader splits a byte stream into lines, with a length bound;
* decode makes received bytes text that is safe to show on another
  person's terminal;
* parse turns a line into a command;
* validate_name and name_key are the rules for names (exercise 8.14);
* the render_* functions are every line the server says, in one place.
"""

import enum
import re
import unicodedata
from collections.abc import Mapping
from typing import NamedTuple, Optional, Union

from gchat.events import Why

# --------------------------------------------------------------------------
# Splitting bytes into lines


class _TooLong(enum.Enum):
    """Marker that LineReader puts where it discarded an over-long line.
    An enum of one member, so that a type checker narrows `line is
    TOO_LONG` (the sentinel idiom mypy understands)."""

    TOO_LONG = "TOO_LONG"

    def __repr__(self) -> str:
        return "TOO_LONG"


TOO_LONG = _TooLong.TOO_LONG
# What a reader hands the hub for each line: its bytes, or TOO_LONG.
Line = Union[bytes, _TooLong]


class LineReader:
    """Split a byte stream into lines, never holding more than max_line bytes.

    feed(data) returns the lines completed by data, in order: each is the
    bytes before "\\n" with one trailing "\\r" dropped (the seed's
    bufio.ScanLines does the same).  A line longer than max_line bytes is
    discarded and stands in the output as TOO_LONG, once, at the point where
    its excess became known; the rest of it, up to its newline, is skipped
    without being stored, so an endless line costs no memory.  The output
    is the same whatever the chunking of the input.
    """

    __slots__ = ("max_line", "_partial", "_discarding")

    def __init__(self, max_line: int) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self._partial = b""
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished line held right now (at most max_line + 1)."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[Line]:
        out: list[Line] = []
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return out
            self._discarding = False
            data = data[newline + 1 :]
        if self._partial:
            data = self._partial + data
            self._partial = b""
        pieces = data.split(b"\n")
        tail = pieces.pop()
        limit = self.max_line
        for line in pieces:
            if line[-1:] == b"\r":
                line = line[:-1]
            out.append(line if len(line) <= limit else TOO_LONG)
        # The unfinished tail may hold max_line bytes plus a "\r" that a
        # later "\n" would turn into a terminator; one byte more and the
        # line is too long whatever follows.
        if len(tail) > limit + 1 or (len(tail) == limit + 1 and tail[-1:] != b"\r"):
            out.append(TOO_LONG)
            self._discarding = True
        else:
            self._partial = tail
        return out

    def finish(self) -> list[bytes]:
        """At end of input: the unterminated last line, if any (the seed's
        Scanner delivers it too)."""
        tail, self._partial = self._partial, b""
        if not tail:
            return []
        return [tail[:-1] if tail[-1:] == b"\r" else tail]


# --------------------------------------------------------------------------
# Text safety

# C0 controls but TAB, DEL, and the C1 controls: a terminal acts on them
# (ESC starts colour, cursor and title sequences), so another client must
# never receive them raw.  They become U+FFFD, which shows that something
# was there without doing anything.
_UNSAFE = dict.fromkeys([*range(0, 9), *range(10, 32), 127, *range(128, 160)], "�")


def decode(line: bytes) -> str:
    """Decode a received line: UTF-8, invalid bytes as U+FFFD, controls made safe."""
    text = line.decode("utf-8", "replace")
    if text.isascii() and text.isprintable():
        return text  # the common case: nothing to translate
    return text.translate(_UNSAFE)


# --------------------------------------------------------------------------
# Things that are not chat

_HTTP_REQUEST_LINE = re.compile(
    r"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE|PRI) \S+ HTTP/[0-9.]+"
)


def looks_like_http(text: str) -> bool:
    """True when a first line is an HTTP request line (a browser, a probe)."""
    return _HTTP_REQUEST_LINE.fullmatch(text) is not None


class TokenBucket:
    """Flood control: `rate` lines a second on average, `burst` at once.

    Pure: the caller passes the time.  The reader spends a token per line
    and, when none are left, stops reading until wait() has passed, so that
    TCP pushes back on the flooder alone.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, wanted: int, now: float) -> int:
        """Spend up to wanted tokens; returns how many were available."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        granted = min(wanted, int(self.tokens))
        self.tokens -= granted
        return granted

    def wait(self) -> float:
        """Seconds until the next whole token, as of the last take()."""
        return max(0.0, (1.0 - self.tokens) / self.rate)


# --------------------------------------------------------------------------
# Names (exercise 8.14)

NAME_MAX = 24  # characters; IRC nicknames are 9-30, 24 fits a roster line
_NAME_PUNCT = frozenset("_-.")


def _validate_label(text: str, limit: int, what: str) -> Optional[str]:
    """Why text is not acceptable as a name of kind `what`, or None.

    1-limit characters: letters of any script (with their combining marks,
    which some scripts cannot be written without), decimal digits, "_",
    "-" and ".".  Control characters never pass (decode made them U+FFFD,
    which is not a letter), so a name cannot drive a terminal.
    """
    if not text:
        return f"a {what} needs at least one character"
    if len(text) > limit:
        return f"a {what} has at most {limit} characters"
    for i, ch in enumerate(text):
        category = unicodedata.category(ch)
        if category[0] == "L" or category == "Nd" or ch in _NAME_PUNCT:
            continue
        if category[0] == "M" and i > 0:
            continue
        shown = ch if ch.isprintable() and not ch.isspace() else f"U+{ord(ch):04X}"
        return f"{shown!r} is not allowed in a {what} (letters, digits, _ - . only)"
    return None


def validate_name(name: str) -> Optional[str]:
    """Return why a user name is not acceptable, or None when it is
    (1-24 characters of the classes in _validate_label)."""
    return _validate_label(name, NAME_MAX, "name")


def validate_room_name(room: str, limit: int) -> Optional[str]:
    """Return why a room name (without its "#") is not acceptable, or None.
    The same classes of characters as user names, at most `limit` of them
    (Config.room_name_max)."""
    return _validate_label(room, limit, "room name")


def name_key(name: str) -> str:
    """The form in which names are compared: NFKC, then case-folded.

    Two names with the same key are the same name, so that "Bob", "BOB" and
    a full-width "Ｂｏｂ" cannot be told apart by the server either.
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


# --------------------------------------------------------------------------
# Commands


class Chat(NamedTuple):
    text: str


class Me(NamedTuple):
    action: str


class Nick(NamedTuple):
    name: str


class Msg(NamedTuple):
    target: str
    text: str


class Who(NamedTuple):
    pass


class Quit(NamedTuple):
    reason: str


class Help(NamedTuple):
    pass


class Stats(NamedTuple):
    pass


class Join(NamedTuple):
    room: str  # as typed, perhaps with a leading "#"


class ListRooms(NamedTuple):
    pass


class Session(NamedTuple):
    """/session: a token to resume with (sessions.py)."""


class Auth(NamedTuple):
    """/auth TOKEN: sign in (with --auth-key), or a fresh token (auth.py)."""

    token: str


class Oper(NamedTuple):
    """/oper PASSWORD: become an operator (operators.py)."""

    password: str


class Moderate(NamedTuple):
    """An operator's command: /kick NAME [REASON], /ban NAME [DURATION],
    /mute NAME [DURATION], /unban NAME, /unmute NAME, /bans."""

    command: str  # kick | ban | mute | unban | unmute | bans
    target: str  # "" for /bans
    rest: str  # the reason, or the duration ("" for none)


MODERATION = ("kick", "ban", "mute", "unban", "unmute", "bans")


class Resume(NamedTuple):
    """/resume TOKEN ID, a connection's first line instead of a name."""

    token: str
    last: str  # the last id received, "-" for none


class Invalid(NamedTuple):
    """A line that is a command but not a usable one; error says why."""

    error: str


HELP_LINES = (
    "Commands:",
    "  /who               who is in your room",
    "  /join ROOM         go to ROOM (#ROOM works too); it is made if it does not exist",
    "  /rooms             the rooms and how many are in each",
    "  /nick NEW          change your name",
    "  /me ACTION         say that you do something: * NAME ACTION",
    "  /msg NAME TEXT     say TEXT to NAME alone",
    "  /quit [REASON]     leave",
    "  /stats             server counters",
    "  /session           a token to come back with after a dropped connection",
    "  /auth TOKEN        a fresh sign-in token, before the one you have expires",
    "  /oper PASSWORD     become an operator (without sign-in tokens)",
    "  /kick NAME [WHY], /ban NAME [30s|10m|2h|1d], /unban NAME, /bans,",
    "  /mute NAME [DURATION], /unmute NAME    for operators",
    "  /help              this list",
    "Any other line is said to everyone. Start a line with // to say one that starts with /.",
)


def _usage(command: str, args: str) -> Invalid:
    return Invalid(f"usage: /{command} {args}")


RESUME_USAGE = _usage("resume", "TOKEN ID (ID: the last id you received, or -)")
AUTH_USAGE = _usage("auth", "TOKEN")


Command = Union[
    Chat,
    Me,
    Nick,
    Msg,
    Who,
    Quit,
    Help,
    Stats,
    Join,
    ListRooms,
    Session,
    Resume,
    Auth,
    Oper,
    Moderate,
    Invalid,
]


def parse(line: str) -> Command:
    """Turn one line of a named client into a command.  Never raises."""
    if not line.startswith("/"):
        return Chat(line)
    if line.startswith("//"):
        return Chat(line[1:])
    word, _, rest = line[1:].partition(" ")
    command = word.lower()
    rest = rest.strip()
    if command == "who":
        return Who()
    if command == "help":
        return Help()
    if command == "quit":
        return Quit(rest)
    if command == "stats":
        return Stats()
    if command == "rooms":
        return ListRooms()
    if command == "session":
        return Session()
    if command == "auth":
        return Auth(rest) if rest and " " not in rest else AUTH_USAGE
    if command == "oper":
        return Oper(rest) if rest else _usage("oper", "PASSWORD")
    if command in MODERATION:
        return _moderation(command, rest)
    if command == "resume":
        token, _, last = rest.partition(" ")
        last = last.strip()
        if not token or not last or " " in last:
            return RESUME_USAGE
        return Resume(token, last)
    if command == "join":
        return Join(rest) if rest else _usage("join", "ROOM")
    if command == "me":
        return Me(rest) if rest else _usage("me", "ACTION")
    if command == "nick":
        if not rest or " " in rest:
            return _usage("nick", "NEW")
        return Nick(rest)
    if command == "msg":
        target, _, text = rest.partition(" ")
        text = text.strip()
        if not target or not text:
            return _usage("msg", "NAME TEXT")
        return Msg(target, text)
    shown = word if len(word) <= 32 else word[:32] + "..."
    return Invalid(f"unknown command /{shown} (try /help)")


def _moderation(command: str, rest: str) -> Command:
    target, _, more = rest.partition(" ")
    more = more.strip()
    if command == "bans":
        return Moderate(command, "", "") if not rest else _usage("bans", "")
    if not target:
        args = {"kick": "NAME [REASON]", "ban": "NAME [DURATION]", "mute": "NAME [DURATION]"}
        return _usage(command, args.get(command, "NAME"))
    if command in ("ban", "mute") and " " in more:
        return _usage(command, "NAME [DURATION: 30s, 10m, 2h or 1d]")
    if command in ("unban", "unmute") and more:
        return _usage(command, "NAME")
    return Moderate(command, target, more)


# --------------------------------------------------------------------------
# What the server says.  Every line in one place, without the "\n".

NAME_PROMPT = "Welcome to gchat. What is your name?"
NAME_PROMPT_AGAIN = "What is your name?"
SHUTDOWN = "Server shutting down. Goodbye."
SENDQ_EXCEEDED = "error: send queue exceeded; disconnecting"
NOT_HTTP = "error: this is a chat server, not an HTTP server; connect with nc or telnet"
SERVER_FULL = "error: server full"
TOO_MANY_FROM_ADDRESS = "error: too many connections from your address"
GOODBYE = "Goodbye."
INTERNAL_ERROR = "error: internal server error; disconnecting"
# A line that could not go out because the cluster's Redis is down and the
# node's backlog (Config.bus_backlog) is full.
BUS_DOWN = "the cluster's bus (Redis) is unavailable; your line was not sent"
# A name claim that could not reach the cluster's Redis.
BUS_DOWN_FOR_NAME = "cannot take a name now: the cluster's Redis is unavailable; try again"
# What the others see after "NAME has left" (name mode only), by why the
# client left (events.Why).  "" says nothing more.
LEFT_REASON = {
    Why.EOF: "",
    Why.ERROR: "connection lost",
    Why.QUIT: "",
    Why.IDLE: "idle timeout",
    Why.NAME_TIMEOUT: "",
    Why.SLOW: "send queue exceeded",
    Why.SHUTDOWN: "",
    Why.FAULT: "server error",
    Why.HTTP: "not a chat client",
    Why.RESUMED: "",
    Why.THROTTLED: "",
    Why.AUTH_FAILED: "",
    Why.TOKEN_EXPIRED: "token expired",
    Why.SIGNED_IN_ELSEWHERE: "",
    Why.KICKED: "",  # the chat says who kicked it and why
}
# Sessions (sessions.py, issue 18).
RESUMED_ELSEWHERE = "error: resumed elsewhere"
SESSION_SHUTDOWN = "server stopping; resume elsewhere"
RESUME_UNKNOWN = "error: cannot resume: unknown or expired session"
RESUME_THROTTLED = "error: too many failed resumes; try later"
RESUME_NAMED = "/resume is the first line of a new connection, instead of a name"
# Signing in with a token (auth.py, issue 19).
AUTH_PROMPT = "Welcome to gchat. Sign in with /auth TOKEN."
AUTH_FIRST = "sign in first: /auth TOKEN"
AUTH_THROTTLED = "error: too many failed sign-ins; try later"
SIGNED_IN_ELSEWHERE = "error: signed in elsewhere"
TOKEN_ACCEPTED = "token accepted"
OPER_GRANTED = "you are an operator now"
OPER_REFUSED = "wrong operator password"
OPER_OFF = "no operator password is set (--oper-password-file)"
OPER_BY_TOKEN = "with sign-in tokens, a token's role (op) makes an operator"
OPER_THROTTLED = "too many failed /oper; try later"
NO_BANS = "bans: none"


def render_for_operators(command: str) -> str:
    return f"/{command} is for operators"


def render_not_an_operator_target(name: str) -> str:
    return f"{name} is an operator; operators cannot be kicked, banned or muted"


def render_kicked(by: str, reason: str) -> str:
    """What the kicked user is told."""
    return f"error: kicked by {by} ({reason})" if reason else f"error: kicked by {by}"


def render_kicked_reason(by: str, reason: str) -> str:
    """What its room sees after "NAME has left"."""
    return f"kicked by {by}: {reason}" if reason else f"kicked by {by}"


def render_banned(until: str) -> str:
    return f"error: banned until {until}"


def render_muted(until: str) -> str:
    return f"you are muted until {until}"


def render_bad_duration(command: str, text: str) -> str:
    shown = text if len(text) <= 20 else text[:20] + "..."
    return f"usage: /{command} NAME [DURATION: 30s, 10m, 2h or 1d], not {shown!r}"


def render_restricted(name: str, what: str, until: str) -> str:
    """An operator's confirmation: "alice is banned until ..."."""
    return f"{name} is {what} until {until}"


def render_lifted(name: str, what: str, lifted: bool) -> str:
    return f"{name} is no longer {what}" if lifted else f"{name} was not {what}"


def render_bans(bans: list[tuple[str, str]]) -> str:
    return "bans: " + ", ".join(f"{name} (until {until})" for name, until in bans)


AUTH_OFF = "this server does not use sign-in tokens"
TOKEN_EXPIRED_REASON = "token expired"


def render_auth_failed(reason: str) -> str:
    return f"error: authentication failed: {reason}"


def render_token_expired(seconds: float) -> str:
    return f"error: token expired; send /auth TOKEN within {max(0, round(seconds))} s"


def render_not_your_token(name: str) -> str:
    return f"a fresh token must be for {name}"


def render_room_not_allowed(room: str) -> str:
    return f"you may not enter #{room}"


# What the others see after "NAME has left" when an away session's window ends.
SESSION_LOST = "connection lost"


def render_session(token: str) -> str:
    return f"session {token}"


def render_resumed(name: str, room: str, count: Optional[int]) -> str:
    """count None: the missed lines are not all there (a gap)."""
    return f"resumed {name} #{room} {'gap' if count is None else count}"


def render_bad_resume_id(last: str) -> str:
    shown = last if len(last) <= 40 else last[:40] + "..."
    return f"cannot resume: {shown!r} is not an id this session received"


def render_away_unreachable(name: str) -> str:
    """A /msg to a session whose node stopped or was lost (cluster.py): the
    line cannot be kept for it until it resumes on a node."""
    return f"{name} is away (its server is gone) and cannot be sent private lines until it is back"


def render_away_full(name: str, kept: int) -> str:
    return f"{name} is away and already has {kept} private lines waiting; yours was not kept"


# The same when a member's whole node goes (cluster.py).
NODE_LOST = "server lost"
NODE_STOPPED = "server stopped"


def render_error(reason: str) -> str:
    return f"error: {reason}"


def render_name_taken(name: str) -> str:
    return f"the name {name} is taken"


def render_no_such_user(name: str) -> str:
    return f"no such user: {name}"


def render_line_too_long(max_line: int) -> str:
    return f"line longer than {max_line} bytes discarded"


def render_already_in(room: str) -> str:
    return f"you are already in #{room}"


def render_too_many_rooms(count: int) -> str:
    return f"too many rooms ({count}); join an existing one (/rooms lists them)"


def render_you_are(who: str) -> str:
    return f"You are {who}"


def render_arrived(who: str) -> str:
    return f"{who} has arrived"


def _render_run(shown: list[str], total: int, verb: str) -> str:
    """One line for a run of arrivals or departures: shown (perhaps only
    the first of them) out of total."""
    more = total - len(shown)
    return f"{', '.join(shown)}{f' and {more} more' if more > 0 else ''} have {verb}"


def render_arrivals(names: list[str], total: int) -> str:
    return _render_run(names, total, "arrived")


def render_left(who: str, reason: str = "") -> str:
    return f"{who} has left ({reason})" if reason else f"{who} has left"


def render_departures(departures: list[tuple[str, str]], total: int) -> str:
    """Departures are (name, reason) pairs; each reason stays beside its name."""
    return _render_run(
        [f"{name} ({reason})" if reason else name for name, reason in departures], total, "left"
    )


def render_joined_reason(room: str) -> str:
    """The reason the old room is given when a client goes to another."""
    return f"joined #{room}"


def render_now_in(room: str) -> str:
    return f"You are now in #{room}"


def render_history_open(room: str, count: int) -> str:
    return f"--- last {count} line{'s' if count != 1 else ''} of #{room} ---"


HISTORY_CLOSE = "--- end of history ---"


def render_rooms(rooms: list[tuple[str, int, bool]], total: int) -> str:
    """/rooms: (name, members, own) triples (perhaps only the first of
    them) out of total rooms."""
    shown = ", ".join(
        f"#{name} ({count}, you are here)" if own else f"#{name} ({count})"
        for name, count, own in rooms
    )
    more = total - len(rooms)
    return f"Rooms ({total}): {shown}{f', and {more} more' if more > 0 else ''}"


def render_chat(who: str, text: str) -> str:
    return f"{who}: {text}"


def render_me(who: str, action: str) -> str:
    return f"* {who} {action}"


def render_nick(old: str, new: str) -> str:
    return f"{old} is now known as {new}"


def render_private_to_recipient(sender: str, text: str) -> str:
    return f"{sender} (private): {text}"


def render_private_to_sender(sender: str, recipient: str, text: str) -> str:
    return f"{sender} (private to {recipient}): {text}"


def render_roster(names: list[str], total: int, newcomer: bool) -> str:
    """The roster: names (perhaps only the first of them) out of total.

    For a newcomer it names everyone else (exercise 8.12); for /who, everyone.
    """
    if not total:
        return "Nobody else is here." if newcomer else "Nobody is here."
    prefix = "Also here" if newcomer else "Here now"
    more = total - len(names)
    tail = f", and {more} more (/who lists all)" if more > 0 else ""
    return f"{prefix} ({total}): {', '.join(names)}{tail}"


def render_missed(count: int) -> str:
    return f"error: you were too slow to read; {count} messages were skipped"


def render_idle(seconds: float) -> str:
    return f"error: idle for {seconds:g} s; disconnecting"


def render_name_timeout(seconds: float) -> str:
    return f"error: no name given within {seconds:g} s; disconnecting"


def render_stats(stats: Mapping[str, object]) -> str:
    return "stats: " + " ".join(f"{key}={value}" for key, value in stats.items())


# --------------------------------------------------------------------------
# What the HTTP ports (transport/http.py) and a WebSocket's close frames
# (transport/websocket.py) say.

HTTP_NOT_FOUND = "404 not found"
HTTP_GET_ONLY = "405 method not allowed"
HTTP_UPGRADE_EXPECTED = "426 a WebSocket upgrade is expected here"
HTTP_HEALTHY = "ok"
HTTP_STOPPING = "shutting down"
HTTP_ORIGIN_REFUSED = "origin not allowed"
HTTP_SERVER_STOPPING = "server shutting down"
WS_TEXT_ONLY = "text frames only"


def render_http_refusal(status: int, why: str) -> str:
    """The body of an error response after which the connection closes."""
    return f"{status} {why}"


def render_bad_handshake(err: object) -> str:
    return f"bad WebSocket handshake: {err}"


def render_ws_too_big(limit: int) -> str:
    return f"message over {limit} bytes"


def format_address(host: str, port: int) -> str:
    """HOST:PORT as Go's net.Addr.String() writes it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
