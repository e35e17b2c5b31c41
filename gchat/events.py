"""What the hub is told, and why a client leaves: the vocabulary shared by
the layers above (transports, the bus, timers) and the hub below them.

A leaf: it imports nothing of gchat, so that a transport can name an event
or a reason without importing the hub, the chat or a room.

Events are (kind, conn, payload) tuples on the hub's inbox (hub.py).
"""

from typing import Any, Protocol

# Event kinds.
ARRIVE = "arrive"  # payload: None
LINES = "lines"  # payload: list of lines (bytes or protocol.TOO_LONG)
LEAVE = "leave"  # payload: a Why
SHUTDOWN = "shutdown"  # conn and payload: None
# From the cluster's bus (bus/room_bus.py), only with --redis; the hub hands
# them to cluster.ClusterChat.on_bus:
# payload: (room key, [(node, seq, operations, epoch, offset)]): new entries,
# in order (the epoch and offset: the entry's place in the room's log)
BUS = "bus"
CLAIMED = "claimed"  # conn: who asked; payload: (name, error or None)
RESYNC = "resync"  # Redis came back without the cluster's data; payload: None
HOSTED = "hosted"  # payload: (room key, snapshot): the room's log is read from now on
ROUTED = "routed"  # conn: who sent a /msg; payload: (target, found, text)
DIRECTORY = "directory"  # payload: {room name: members} over the cluster
NODE_LOST = "node-lost"  # payload: (node id, reason): its heartbeat expired
# conn: who sent /resume TOKEN ID with a token this node does not hold;
# payload: (token, (name, room) of the session, now taken over for this
# node in Redis; or None: unknown or expired; or an error line's reason).
SESSION_FOUND = "session-found"
# conn: an operator whose /kick the bus routed; payload: (name, found).
KICK_ROUTED = "kick-routed"
# payload: {"bans": {name key: until or None}, "mutes": {...}}, the
# cluster's, as Redis holds them (read at each heartbeat).
RESTRICTIONS = "restrictions"
# conn: a client that resumed on this node; payload: (room key, the room's
# epoch, [(offset, node, operations)] of its log from the offset asked on),
# or (room key, None, []) when Redis could not say.
REPLAYED = "replayed"
BUS_EVENTS = frozenset(
    {
        BUS,
        CLAIMED,
        RESYNC,
        HOSTED,
        ROUTED,
        DIRECTORY,
        NODE_LOST,
        SESSION_FOUND,
        REPLAYED,
        RESTRICTIONS,
        KICK_ROUTED,
    }
)
# From the server API (transport/api.py): payload (operation, arguments,
# answer), where answer((status, body)) is called once, by the chat.
API = "api"
# payload: a callable, called in the hub so that it runs only while the
# hub's loop turns (systemd.py's watchdog ping stops when the hub is stuck).
WATCHDOG = "watchdog"

# The reason bit of a reader that waits in Hub.paused because the inbox is
# over Config.inbox_size; the hub resumes it with this bit once drained
# (transport/base.py keeps its other pause reasons beside it).
INBOX_FULL = 2


class Why:
    """Why a client leaves the server.  The hub passes one of these to
    Chat.depart; protocol.LEFT_REASON says what the others are told."""

    EOF = "eof"  # the client closed the connection
    ERROR = "error"  # the connection failed (reset, ...)
    QUIT = "quit"  # /quit
    IDLE = "idle"  # --idle-timeout
    NAME_TIMEOUT = "name-timeout"  # --name-timeout
    SLOW = "slow"  # --sendq exceeded under --slow-policy disconnect
    SHUTDOWN = "shutdown"  # the server is stopping
    FAULT = "fault"  # handling one of its events raised
    HTTP = "http"  # its first line was an HTTP request
    RESUMED = "resumed-elsewhere"  # its session was resumed on another connection
    THROTTLED = "throttled"  # too many failed resumes from its address
    AUTH_FAILED = "auth-failed"  # its sign-in token was refused, or its address throttled
    TOKEN_EXPIRED = "token-expired"  # its token expired and no fresh one came in time
    SIGNED_IN_ELSEWHERE = "signed-in-elsewhere"  # the same sub signed in again
    KICKED = "kicked"  # an operator's /kick or /ban, or the API's disconnect


class Member(Protocol):
    """A connection as the chat (chat.py) and its rooms (room.py) see it:
    any object with these attributes, a transport's Connection or a
    cluster.Remote.  `who` is its address (HOST:PORT); `name` (a str) and
    `room` (a room.Room) are None until the chat, which alone sets them,
    gives it them.  Both are Any: a room's members are named by the chat's
    own rules, which a type cannot say without a check at every use, and
    this leaf cannot name room.Room, a layer above it.  Hashable: rooms and
    their Fanouts key dicts by it."""

    @property
    def who(self) -> str: ...

    name: Any
    room: Any

    def __hash__(self) -> int: ...


# Departures whose peer has gone away: the server does not try to flush
# their output before closing, nor to say goodbye.
PEER_GONE = frozenset({Why.EOF, Why.ERROR})
