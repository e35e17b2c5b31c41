"""Every limit and tunable of the server, in one dataclass.

The CLI builds a Config; nothing else reads argv or the environment.  Each
field says why its default is what it is (the comment above it) and, in
its Option (`option(...)` below), what it means, its command-line flag, how
its text is read and what values it may take.  Everything else is derived
from those declarations: the argparse parser and config_from_args (cli.py),
--config's TOML keys and --print-config (config_file.py), the checks in
Config.__post_init__, and docs/options.md (options_doc.py).

This module is pure: no I/O, no argparse, no parser built at import.
"""

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

KIB = 1024
MIB = 1024 * KIB

SLOW_POLICIES = ("disconnect", "drop")
ROOMS_POLICIES = ("open", "claims")

# The defaults of the two options whose default depends on the mode: in
# name mode these, in --compat none (the seed has neither).  The fields are
# None ("the mode's default"); Config.effective_* and the help both read
# these.
IDLE_TIMEOUT = 300.0
FLOOD_RATE = 10.0

# The groups of `gchat --help` and of docs/options.md, in order:
# (key, title, description).  Every option with a flag names one.
GROUPS: tuple[tuple[str, str, str], ...] = (
    ("listening", "listening", "The line port: where it listens, and what it speaks."),
    (
        "limits",
        "limits",
        "What one client may take (time, bytes, lines, connections), and how "
        "long a leaving client or a stopping server waits.",
    ),
    ("rooms", "rooms", "Rooms, their history, and how arrivals are announced."),
    ("web", "web", "The HTTP listener: the chat page, its WebSocket, /healthz and /metrics."),
    ("tls", "TLS and proxy", "TLS on the line port, and the PROXY protocol from a load balancer."),
    ("access", "access", "Who may sign in, and which rooms they may enter."),
    ("cluster", "cluster", "Several gchat processes, on one machine or many, over Redis."),
    ("logging", "logging and config", "Logs, and the options as a TOML file."),
)
GROUP_KEYS = tuple(key for key, _, _ in GROUPS)


# --------------------------------------------------------------------------
# How an option's text becomes its value


class ValueKind:
    """The `type` of a flag: parse(text) -> value, raising ValueError with
    the message the user sees (cli.py hands it to argparse as is);
    unparse(value) -> the text that parses back (--print-config);
    describe(value) -> the value for a person (help, docs)."""

    def __init__(
        self,
        name: str,
        parse: Callable[[str], Any],
        unparse: Optional[Callable[[Any], str]] = None,
        describe: Optional[Callable[[Any], str]] = None,
    ) -> None:
        self.__name__ = name
        self.parse = parse
        self.unparse = unparse
        self.describe = describe or unparse

    def __call__(self, text: str) -> Any:
        return self.parse(text)

    def __repr__(self) -> str:
        return f"ValueKind({self.__name__!r})"


def _parse_size(text: str) -> int:
    """Bytes, with an optional K/M/G suffix (powers of 1024)."""
    units = {"k": KIB, "m": MIB, "g": 1024 * MIB}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if text and text[-1] in units:
            value = int(float(text[:-1]) * units[text[-1]])
        else:
            value = int(text)
    except ValueError:
        raise ValueError(f"not a size in bytes: {text!r}") from None
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _describe_size(value: int) -> str:
    for unit, name in ((MIB, "MiB"), (KIB, "KiB")):
        if value % unit == 0:
            return f"{value // unit} {name}"
    return str(value)


def _parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _parse_host_port(text: str) -> tuple[Optional[str], int]:
    """[HOST:]PORT; the host is None when not given (then --host's)."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"not [HOST:]PORT: {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range: {number}")
    return (host.strip("[]") or None, number)


def _unparse_host_port(value: tuple[Optional[str], int]) -> str:
    host, port = value
    if host is None:
        return str(port)
    # As protocol.format_address writes it: IPv6 in brackets.
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_cidrs(text: str) -> tuple[str, ...]:
    """Comma-separated networks, checked here so that a typo is an error."""
    import ipaddress

    nets = tuple(part.strip() for part in text.split(",") if part.strip())
    for net in nets:
        ipaddress.ip_network(net, strict=False)  # its ValueError says what is wrong
    if not nets:
        raise ValueError("no network given")
    return nets


def _unparse_cidrs(value: tuple[str, ...]) -> str:
    return ", ".join(value)


SIZE = ValueKind("size", _parse_size, describe=_describe_size)
SECONDS = ValueKind("seconds", _parse_seconds)
HOST_PORT = ValueKind("host_port", _parse_host_port, _unparse_host_port)
CIDRS = ValueKind("cidrs", _parse_cidrs, _unparse_cidrs)


# --------------------------------------------------------------------------
# How an option is declared


@dataclass(frozen=True)
class Option:
    """One setting as a person sees it: what it means (help), the flags
    that set it, how their text is read (type, choices), the values it
    may take (positive, minimum, maximum: Config.__post_init__ checks
    them), and its default as help and docs show it.

    default_text: the default in words, for one that is not a value to
    type (None: "off", "one process"); it may name other fields' defaults
    as {field}.  mode_default: for a None default that means "the mode's",
    the name mode's value (off in --compat).  flag_unset: the flag's own
    default is None ("not given", which config_from_args turns into the
    field's default), for a default the flag cannot spell (--sndbuf 0 is
    refused: a size is positive)."""

    help: str
    default: Any = None
    flags: tuple[str, ...] = ()
    group: Optional[str] = None
    metavar: Optional[str] = None
    type: Optional[Callable[[str], Any]] = None
    choices: Optional[tuple[Any, ...]] = None
    repeatable: bool = False
    default_text: Optional[str] = None
    mode_default: Optional[float] = None
    flag_unset: bool = False
    positive: bool = False
    minimum: Optional[float] = None
    maximum: Optional[float] = None

    @property
    def flag_default(self) -> Any:
        """The argparse default of the flag."""
        if self.flag_unset:
            return None
        if self.repeatable:
            return list(self.default)  # argparse appends to it
        return self.default

    def problem(self, value: Any) -> Optional[str]:
        """What is wrong with value, or None (None values are not checked)."""
        if value is None:
            return None
        if self.choices is not None and value not in self.choices:
            return f"must be one of {self.choices}, not {value!r}"
        if self.minimum is not None and self.maximum is not None:
            if not self.minimum <= value <= self.maximum:
                return f"must be {self.minimum}..{self.maximum}"
        elif self.positive:
            if value <= 0:
                return "must be positive"
        elif self.minimum is not None and value < self.minimum:
            return (
                "must not be negative" if self.minimum == 0 else f"must be at least {self.minimum}"
            )
        return None


OPTION = "option"  # the key of a field's Option in its metadata


def option(
    default: Any,
    help: str,
    *,
    flag: Optional[str] = None,
    aliases: tuple[str, ...] = (),
    **kwargs: Any,
) -> Any:
    """A Config field: dataclasses.field(default=default) with its Option
    in its metadata.  flag: its command-line option (None: it has none,
    then help is the reason for its value); aliases: more spellings of the
    same option; kwargs: the rest of Option."""
    flags = ((flag,) if flag else ()) + tuple(aliases)
    if flags and kwargs.get("group") not in GROUP_KEYS:
        raise ValueError(f"{flags[0]} needs a group, one of {GROUP_KEYS}")
    return dataclasses.field(
        default=default,
        metadata={OPTION: Option(help=help, default=default, flags=flags, **kwargs)},
    )


# --------------------------------------------------------------------------
# The settings


@dataclass(frozen=True)
class Config:
    # The seed listens on localhost:8000 (gopl.io ch8/chat).
    host: str = option("localhost", "address to listen on", flag="--host", group="listening")
    port: int = option(
        8000,
        "TCP port; 0 picks a free port",
        flag="--port",
        group="listening",
        type=int,
        minimum=0,
        maximum=65535,
    )

    # Connections the kernel may hold waiting for accept().  Python's and
    # gevent's default is 128, which a burst of thousands of connects
    # overflows (each dropped SYN costs the client a 1 s retransmit); the
    # kernel caps this at net.core.somaxconn (4096 here).
    backlog: int = option(
        4096,
        "pending connections the kernel may queue",
        flag="--backlog",
        group="listening",
        type=int,
        metavar="N",
        positive=True,
    )

    # --compat: the seed's protocol byte for byte: no names, no commands,
    # no roster, every line is chat text, "who" is the remote HOST:PORT.
    compat: bool = option(
        False,
        "the seed's protocol byte for byte: no names, no commands, "
        "every line is chat, clients are known by HOST:PORT",
        flag="--compat",
        group="listening",
    )

    # Exercise 8.13 suggests five minutes of silence (IDLE_TIMEOUT).  0
    # turns it off.  None means "the mode's default": 300 s in name mode,
    # off in --compat (the seed never disconnects an idle client, and
    # --compat is a drop-in).
    idle_timeout: Optional[float] = option(
        None,
        "disconnect a client silent this long; 0 turns it off",
        flag="--idle-timeout",
        group="limits",
        type=SECONDS,
        metavar="SECONDS",
        mode_default=IDLE_TIMEOUT,
        minimum=0,
    )
    # A client that has not given a name within a minute is a stray
    # connection (a port scan, a forgotten telnet); IRC daemons give about
    # the same for registration (ergo: 60 s).  0 turns it off.
    name_timeout: float = option(
        60.0,
        "disconnect a client that gives no name this long; 0 turns it off",
        flag="--name-timeout",
        group="limits",
        type=SECONDS,
        metavar="SECONDS",
        minimum=0,
    )

    # Bytes that may wait for one client before --slow-policy applies.
    # Redis bounds pub/sub clients at 8-32 MB and Centrifugo at 1 MiB; 1 MiB
    # is some seconds of a busy room for a human client and keeps 10,000
    # stuck clients under 10 GiB in the worst case.
    sendq: int = option(
        1 * MIB,
        "output bytes that may wait for one client before --slow-policy applies; "
        "K/M suffixes allowed",
        flag="--sendq",
        group="limits",
        type=SIZE,
        metavar="BYTES",
        positive=True,
    )
    # The kernel's send buffer per client socket (SO_SNDBUF), in bytes; 0
    # keeps the kernel's autotuning (up to net.ipv4.tcp_wmem's maximum, 4 MiB
    # here).  A slow client can hold this much in the kernel on top of
    # --sendq in the server, so set it to make the bound on a stuck
    # client's backlog tight.
    sndbuf: int = option(
        0,
        "kernel send buffer per client (SO_SNDBUF)",
        flag="--sndbuf",
        group="limits",
        type=SIZE,
        metavar="BYTES",
        default_text="the kernel's autotuning",
        flag_unset=True,
        minimum=0,
    )
    # disconnect (Redis and ergo do this) or drop (skip messages, count
    # them, and tell the client how many it missed once it catches up).
    slow_policy: str = option(
        "disconnect",
        "when a client's send queue is full: disconnect it, or drop messages "
        "for it and tell it how many",
        flag="--slow-policy",
        group="limits",
        choices=SLOW_POLICIES,
    )

    # Flood control: a token bucket per client, in lines.  None means the
    # mode's default: on in name mode, off in --compat (a drop-in for the
    # seed, which has none).  IRC servers allow a human about 1-2 lines/s
    # with a burst of 5-10; rooms here also hold bots and pasted text, so
    # the default is 10 lines/s sustained (FLOOD_RATE) with a burst of 20
    # (a short paste goes through at once).  Lines over the rate are
    # delayed, never dropped: the reader stops reading and TCP pushes back
    # on the flooder.  0 turns it off.
    flood_rate: Optional[float] = option(
        None,
        "lines per second a client may send on average; more are delayed, not "
        "dropped; 0 turns it off",
        flag="--flood-rate",
        group="limits",
        type=float,
        metavar="LINES",
        mode_default=FLOOD_RATE,
        minimum=0,
    )
    flood_burst: int = option(
        20,
        "lines a client may send at once before --flood-rate applies",
        flag="--flood-burst",
        group="limits",
        type=int,
        metavar="LINES",
        minimum=1,
    )

    # Connections served at once.  None: the per-process file limit
    # (RLIMIT_NOFILE) less fd_headroom, worked out by the CLI; beyond it a
    # connection gets "error: server full" and is closed.
    max_clients: Optional[int] = option(
        None,
        "connections served at once; more get 'server full'",
        flag="--max-clients",
        group="limits",
        type=int,
        metavar="N",
        default_text="the open-file limit less {fd_headroom}",
        positive=True,
    )
    fd_headroom: int = option(
        64,
        "Descriptors kept free below RLIMIT_NOFILE, when --max-clients is not given, "
        "for the listener, logs, /proc reads and the connections being refused.",
        minimum=0,
    )
    # Connections from one IP address at once; 0 is no limit (the default,
    # so that load tests from loopback work).
    max_per_ip: int = option(
        0,
        "connections from one IP address at once; 0: no limit",
        flag="--max-per-ip",
        group="limits",
        type=int,
        metavar="N",
        minimum=0,
    )
    accept_backoff_min: float = option(
        0.05,
        "When accept() fails for want of descriptors (EMFILE, ENFILE), the server "
        "pauses accepting for this many seconds, doubling up to accept_backoff_max, instead "
        "of spinning or dying; accepted clients are served meanwhile.",
    )
    accept_backoff_max: float = option(1.0, "The longest such pause, in seconds.")

    # Longest line a client may send, in bytes before decoding, without its
    # terminator.  IRC allows 512 for a whole message; chat users paste
    # more, and 4 KiB is one page: long enough for text, small enough that
    # 10,000 clients each holding an unfinished line cost 40 MiB at most.
    max_line: int = option(
        4 * KIB,
        "longest line accepted, in bytes before decoding; a longer one is discarded with an error",
        flag="--max-line",
        group="limits",
        type=SIZE,
        metavar="BYTES",
        positive=True,
    )

    # How long a client that is being disconnected (idle, slow, /quit) may
    # take to receive its last lines before its socket is closed anyway.
    # Long enough for a live client on a slow link, short enough that a
    # client that never reads holds its --sendq for only a moment more.
    close_linger: float = option(
        2.0,
        "time a disconnected client gets to receive its last lines",
        flag="--close-linger",
        group="limits",
        type=SECONDS,
        metavar="SECONDS",
        minimum=0,
    )

    # Names shown in the roster line that greets a newcomer (exercise 8.12);
    # the count is always exact and /who lists everyone.  Without a bound
    # a storm of N arrivals sends O(N^2) bytes of rosters; IRC's NAMES reply
    # is split into 512-byte lines for the same reason.
    roster_limit: int = option(
        50,
        "names shown in a newcomer's roster line",
        flag="--roster-limit",
        group="rooms",
        type=int,
        metavar="N",
        positive=True,
    )

    # In a room of at least this many members, the arrivals of one
    # broadcaster wake-up are announced in one line ("a, b and 40 more have
    # arrived") instead of one line each: a storm of N arrivals would
    # otherwise cost O(N^2) lines.  Smaller rooms and --compat keep the
    # seed's exact per-client lines.
    arrival_merge_threshold: int = option(
        100,
        "in a room of at least N members, arrivals at the same moment are announced in one line",
        flag="--arrival-merge-threshold",
        group="rooms",
        type=int,
        metavar="N",
        positive=True,
    )
    # How long such arrivals may be held back to be merged, in seconds.
    # Each announcement costs one send to every member, so a storm's cost
    # is members x announcements; a quarter second keeps a 10,000-client
    # storm to a few dozen announcements a second while nobody waits long
    # to hear of a newcomer.  Anything else said ends the wait at once.
    arrival_merge_window: float = option(
        0.25,
        "how long such arrivals may wait to be merged",
        flag="--arrival-merge-window",
        group="rooms",
        type=SECONDS,
        metavar="SECONDS",
        minimum=0,
    )

    # Rooms (name mode; --compat is the seed's single room).  Every room
    # counts, the lobby and the empty ones too, since an empty room keeps
    # its history; at the limit the least recently used empty room is
    # dropped, and when every room has people in it a new one is refused.
    # 2,000 is one room per ten clients at the 20,000 sockets one process
    # can hold here, and bounds the history (below) at 2,000 x history x
    # one line.
    max_rooms: int = option(
        2000,
        "rooms that may exist, the lobby and empty ones included; the least recently "
        "used empty room is dropped for a new one",
        flag="--max-rooms",
        group="rooms",
        type=int,
        metavar="N",
        positive=True,
    )
    # Chat and /me lines each room keeps for whoever enters it next.  IRC
    # bouncers and Slack replay about a screenful; 20 lines fill most of a
    # terminal without burying the roster.  0 turns history off.  Memory:
    # history x max_rooms lines of at most max_line bytes of text each.
    history: int = option(
        20,
        "chat lines each room keeps for newcomers; 0 turns it off",
        flag="--history",
        group="rooms",
        type=int,
        metavar="N",
        minimum=0,
    )
    # Sessions (/session, /resume; gchat/sessions.py).  Two minutes covers a
    # phone changing networks, a laptop waking, a node's restart and a
    # reconnect with backoff; socket.io's connection state recovery keeps 2
    # minutes by default too.  0 turns the window off: a dropped session
    # client leaves at once, as one without a session does.
    resume_window: float = option(
        120.0,
        "seconds a dropped session client keeps its name and place, and may resume",
        flag="--resume-window",
        group="rooms",
        type=SECONDS,
        metavar="SECONDS",
        minimum=0,
    )
    # Lines a resume may replay, room lines and private lines each: 1,000
    # is minutes of a busy room, and what a client can show without
    # scrolling for long; more missed than that is a gap (the roster and
    # the history instead).  It also bounds the private lines kept for an
    # away session, and, alone (no --redis), the lines each room with a
    # session client keeps for resumes (about 100 KiB per such room).
    resume_backlog: int = option(
        1000,
        "lines a resume may replay, and private lines kept for an away session",
        flag="--resume-backlog",
        group="rooms",
        type=int,
        metavar="N",
        minimum=1,
    )
    # Failed resumes from one address within a minute before the address
    # is refused until that minute ends: a token has 128 bits, so this is
    # about a misbehaving client's loop, not about guessing; 20 leaves room
    # for a few tabs retrying a stale token with backoff.
    resume_failures: int = option(
        20,
        "failed resumes from one address within a minute before it is refused",
        flag="--resume-failures",
        group="rooms",
        type=int,
        metavar="N",
        minimum=1,
    )
    # Signing in with a signed token (gchat/auth.py, issue 19).  None: no
    # sign-in, everyone takes any free name, as the seed does.
    auth_key: Optional[str] = option(
        None,
        "a shared secret (HS256) or a PEM public key (RS256, ES256): every client "
        "signs in with /auth TOKEN, a JWT it verifies",
        flag="--auth-key",
        group="access",
        metavar="FILE",
    )
    # Clock skew allowed on a token's exp, nbf and iat, either way: 30 s
    # covers machines kept by NTP and a token made the moment it is used.
    auth_leeway: float = option(
        30.0,
        "seconds of clock skew allowed on a token's times",
        flag="--auth-leeway",
        group="access",
        type=SECONDS,
        metavar="SECONDS",
        minimum=0,
    )
    # Seconds a client whose token expired has to send a fresh one: enough
    # for a page to ask its backend for one, short enough that an expired
    # token is not a session of its own.
    auth_refresh: float = option(
        15.0,
        "seconds a client whose token expired has to send /auth with a fresh one",
        flag="--auth-refresh",
        group="access",
        type=SECONDS,
        metavar="SECONDS",
        minimum=0,
    )
    # Failed sign-ins from one address within a minute before it is refused
    # at once (without verifying anything) until that minute ends: a guess
    # at an HS256 secret is hopeless anyway; this bounds the CPU a script
    # can make the server spend on signatures.  Behind a NAT or a proxy
    # many users share an address: 10 still leaves room for a few typos.
    auth_failures: int = option(
        10,
        "failed sign-ins from one address within a minute before it is refused",
        flag="--auth-failures",
        group="access",
        type=int,
        metavar="N",
        minimum=1,
    )
    # Operators without tokens: a line of `gchat --hash-password` (a salted
    # scrypt hash, gchat/operators.py); /oper PASSWORD checks it.  None: no
    # /oper (with --auth-key a token's role names operators).
    oper_password_file: Optional[str] = option(
        None,
        "the operators' password, as a line of gchat --hash-password: /oper PASSWORD",
        flag="--oper-password-file",
        group="access",
        metavar="FILE",
    )
    # The server API on the --admin port (transport/api.py): a file holding
    # its key, which requests carry as "Authorization: Bearer KEY".  None:
    # the API is off (404).
    api_key_file: Optional[str] = option(
        None,
        "a file holding the server API's key: the --admin port serves /api/ to requests "
        "with Authorization: Bearer KEY",
        flag="--api-key-file",
        group="access",
        metavar="FILE",
    )
    # Which rooms a client may enter: open (any, as before), or claims (the
    # lobby and those its token's rooms claim names, operators included).
    rooms_policy: str = option(
        "open",
        "which rooms a client may enter: any (open), or those its token's rooms claim names",
        flag="--rooms-policy",
        group="access",
        choices=ROOMS_POLICIES,
    )
    # Longest room name, in characters without the "#": IRC allows channel
    # names of 50 bytes and Slack 80 characters; 32 keeps /rooms readable.
    room_name_max: int = option(
        32,
        "longest room name, without the #",
        flag="--room-name-max",
        group="rooms",
        type=int,
        metavar="CHARS",
        positive=True,
    )

    # The web face (transport/http.py): (host, port) of the HTTP listener for the page,
    # /ws and, unless admin is set, /healthz and /metrics; None: off.
    http: Optional[tuple[str, int]] = option(
        None,
        "serve the chat page, its WebSocket (/ws), /healthz and /metrics over HTTP "
        "on this port; 0 picks a free one",
        flag="--http",
        group="web",
        type=HOST_PORT,
        metavar="[HOST:]PORT",
        default_text="off",
    )
    # (host, port) of a listener for /healthz and /metrics alone, so that
    # operators keep them off the public port; None: they stay on http.
    admin: Optional[tuple[str, int]] = option(
        None,
        "serve /healthz and /metrics on this port instead of --http's",
        flag="--admin",
        group="web",
        type=HOST_PORT,
        metavar="[HOST:]PORT",
    )
    # Origins whose pages may open a WebSocket besides the server's own
    # (the Host of the request); browsers send Origin, and checking it
    # stops another site's page from chatting as its visitor.
    allow_origin: tuple[str, ...] = option(
        (),
        "a page origin (e.g. https://chat.example.org) that may open a WebSocket "
        "besides the server's own; repeatable",
        flag="--allow-origin",
        group="web",
        metavar="ORIGIN",
        repeatable=True,
    )
    # Largest WebSocket message a client may send, in bytes; a larger one
    # closes with 1009.  Sixteen lines of --max-line: a paste of several
    # lines fits, a flood of megabytes does not get buffered.
    ws_max_message: int = option(
        64 * KIB,
        "largest WebSocket message a client may send; a larger one closes with 1009",
        flag="--ws-max-message",
        group="web",
        type=SIZE,
        metavar="BYTES",
        positive=True,
    )
    http_max_head: int = option(
        16 * KIB,
        "Largest HTTP request head; a larger one gets 431.  h11's own default is "
        "16 KiB as well; browsers send 1-2 KiB.",
        type=SIZE,
        positive=True,
    )
    # Seconds an HTTP client has to send a whole request head (and a
    # kept-alive one between requests) before it is closed, so that a
    # client trickling its head holds a greenlet only this long.
    http_header_timeout: float = option(
        10.0,
        "time an HTTP client has to send a request head",
        flag="--http-header-timeout",
        group="web",
        type=SECONDS,
        metavar="SECONDS",
        minimum=0,
    )

    # TLS on the line port (transport/tls.py): PEM files of the certificate chain and
    # its key; both or neither.  SIGHUP reads them again.
    tls_cert: Optional[str] = option(
        None,
        "PEM certificate chain: the line port speaks TLS (with --tls-key); SIGHUP reloads it",
        flag="--tls-cert",
        group="tls",
        metavar="FILE",
    )
    tls_key: Optional[str] = option(
        None, "PEM private key of --tls-cert", flag="--tls-key", group="tls", metavar="FILE"
    )
    # A PEM bundle of CAs: when set, clients must present a certificate
    # that one of them signed (mutual TLS); None: no client certificates.
    tls_client_ca: Optional[str] = option(
        None,
        "PEM CA bundle: clients must present a certificate it signed",
        flag="--tls-client-ca",
        group="tls",
        metavar="FILE",
    )
    # Seconds a new connection has to finish its opening stages (the PROXY
    # header, the TLS handshake) before it is closed, so that a client
    # that never finishes holds a descriptor only this long.  Browsers and
    # load balancers finish in milliseconds; 10 s allows for a slow link.
    # 0 turns the limit off.  (A PROXY header itself is bounded by its
    # protocol: 107 bytes for v1, 16 + 65,535 for v2, and only peers in
    # proxy_from may send one.)  Connections still in these stages are not
    # counted against max_clients: this timeout is what bounds them.
    handshake_timeout: float = option(
        10.0,
        "time a connection has for its PROXY header and TLS handshake",
        flag="--tls-handshake-timeout",
        aliases=("--handshake-timeout",),
        group="tls",
        type=SECONDS,
        metavar="SECONDS",
        minimum=0,
    )

    # The PROXY protocol (transport/proxy.py, proxy_header.py): every connection starts with
    # a v1 or v2 header from a load balancer, and the address it carries is
    # the client's everywhere.  Only peers in proxy_from (CIDRs) may send
    # one: anyone else could claim any address.  Loopback by default, where
    # a local HAProxy runs.
    proxy_protocol: bool = option(
        False,
        "expect a PROXY protocol header (v1 or v2) on each connection",
        flag="--proxy-protocol",
        group="tls",
    )
    proxy_from: tuple[str, ...] = option(
        ("127.0.0.0/8", "::1/128"),
        "comma-separated networks allowed to send a PROXY header",
        flag="--proxy-from",
        group="tls",
        type=CIDRS,
        metavar="CIDRS",
    )

    notify_status_interval: float = option(
        2.0,
        "Seconds between STATUS= messages to systemd (systemd.py) with the client and room counts: "
        "often enough to keep `systemctl status` current for a reader, and a datagram "
        "every 2 s is nothing to systemd.",
        positive=True,
    )

    # A cluster of nodes over Redis (bus/): the Redis URL
    # (redis://[:PASSWORD@]HOST:PORT/DB, rediss:// for TLS); None: one
    # process, no bus, nothing changes.
    redis: Optional[str] = option(
        None,
        "join a cluster of gchat nodes over Redis: redis://[:PASSWORD@]HOST:PORT/DB, "
        "rediss:// for TLS; needs pip install 'gchat[cluster]'",
        flag="--redis",
        group="cluster",
        metavar="URL",
        default_text="one process",
    )
    # The cluster's name: every Redis key starts with it, so that several
    # clusters (or a test and a deployment) can share one Redis.
    cluster: str = option(
        "gchat",
        "the cluster's name, the prefix of its Redis keys",
        flag="--cluster",
        group="cluster",
        metavar="NAME",
    )
    # Seconds after which a node whose heartbeat key has expired is
    # declared lost, and its members are shown leaving everywhere.  A node
    # renews its key five times per period, so a lost node is noticed
    # within 5-6 s, while a node stalled for up to 4 s (a GC pause, a
    # SIGSTOP, a busy hub) is not declared lost.  Redis Sentinel's
    # down-after-milliseconds and Centrifugo's node info TTL are of the
    # same order.
    node_timeout: float = option(
        5.0,
        "a node silent this long is declared lost and its members leave",
        flag="--node-timeout",
        group="cluster",
        type=SECONDS,
        metavar="SECONDS",
        positive=True,
    )
    # Lines (chat lines and other operations) a node may hold while Redis
    # is unreachable.  Each is at most max_line bytes, so 10,000 bound the
    # held bytes at 40 MiB, and hold about a minute of a busy room.  Past
    # it a sender gets "error: ... not sent"; nothing is dropped silently.
    bus_backlog: int = option(
        10_000,
        "lines a node holds while Redis is down; past it senders are told their line was not sent",
        flag="--bus-backlog",
        group="cluster",
        type=int,
        metavar="LINES",
        positive=True,
    )
    # Seconds for which a node keeps what it published, to publish it
    # again if Redis comes back without the cluster's data.  Every live
    # node reads within node_timeout (or is declared lost), so six times
    # that is ample; the bound below caps its memory.
    bus_replay_window: float = option(
        30.0,
        "how long a node keeps what it published, to publish it again if Redis restarts empty",
        flag="--bus-replay-window",
        group="cluster",
        type=SECONDS,
        metavar="SECONDS",
        positive=True,
    )
    bus_replay_entries: int = option(
        10_000,
        "Entries kept for replay (bus_replay_window) per room at most, whatever "
        "their age (an entry is one room's share of a hub batch): 10,000 is more "
        "than the window holds of any room but the busiest, and bounds what one "
        "room's burst can hold in memory.",
        positive=True,
    )
    bus_max_entry: int = option(
        8 * MIB,
        "Largest entry a node reads from the bus; a larger one is logged and "
        "skipped (another program wrote it).  A batch of the largest inbox "
        "(inbox_size events) of short lines fits in a few MiB.",
        type=SIZE,
        positive=True,
    )
    bus_stream_max: int = option(
        10_000,
        "Entries each room's stream in Redis keeps (XADD MAXLEN ~): a node that "
        "falls further behind in one room than this many of its entries cannot "
        "fill the gap.  10,000 is minutes of the busiest room here, and a few MiB "
        "of Redis memory per room at most.",
        positive=True,
    )
    # SO_REUSEPORT on the listening sockets: set by the --workers
    # supervisor (workers.py) for its workers, so that they share one port
    # and the kernel spreads connections over them.
    reuse_port: bool = option(
        False,
        "set SO_REUSEPORT on the listening sockets (what --workers gives its workers)",
        flag="--reuse-port",
        group="listening",
    )

    # How long shutdown waits for queued output to drain before closing.
    shutdown_flush_timeout: float = option(
        3.0,
        "on SIGINT/SIGTERM, how long queued output may take to flush",
        flag="--shutdown-timeout",
        group="limits",
        type=SECONDS,
        metavar="SECONDS",
        minimum=0,
    )

    recv_size: int = option(
        16 * KIB,
        "Bytes read per recv(): a line of max_line plus slack; a larger buffer "
        "would only be allocated and freed again for every chunk.",
        type=SIZE,
        positive=True,
    )
    inbox_size: int = option(
        10_000,
        "Events the broadcaster may hold unread.  When it is full readers wait "
        "(TCP then pushes back on senders) instead of memory growing.",
        positive=True,
    )

    def __post_init__(self) -> None:
        for name, opt in _OPTIONS:
            problem = opt.problem(getattr(self, name))
            if problem is not None:
                raise ValueError(f"{name} {problem}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        if self.rooms_policy == "claims" and self.auth_key is None:
            raise ValueError("rooms_policy claims needs auth_key (the claims are a token's)")
        if self.api_key_file is not None and self.admin is None:
            raise ValueError("api_key_file needs admin (the API is served on the --admin port)")
        if self.auth_key is not None and self.compat:
            raise ValueError("auth_key does not go with compat (the seed's clients have no names)")

    @property
    def effective_flood_rate(self) -> float:
        """Lines per second allowed per client, 0 for no limit."""
        if self.flood_rate is not None:
            return self.flood_rate
        return 0.0 if self.compat else FLOOD_RATE

    @property
    def effective_idle_timeout(self) -> float:
        """Idle timeout in seconds, 0 for none, with the mode's default applied."""
        if self.idle_timeout is not None:
            return self.idle_timeout
        return 0.0 if self.compat else IDLE_TIMEOUT


# --------------------------------------------------------------------------
# Reading the declarations


def options() -> dict[str, Option]:
    """field name -> its Option, in declaration order, flag or not."""
    return dict(_OPTIONS)


def flag_options() -> dict[str, Option]:
    """The fields that have a command-line flag: name -> Option."""
    return {name: opt for name, opt in _OPTIONS if opt.flags}


def _collect() -> tuple[tuple[str, Option], ...]:
    found = []
    for field in dataclasses.fields(Config):
        opt = field.metadata.get(OPTION)
        if not isinstance(opt, Option):
            raise TypeError(f"Config.{field.name} is not declared with option()")
        found.append((field.name, opt))
    return tuple(found)


_OPTIONS = _collect()


def format_value(value: Any, kind: Optional[Callable[[str], Any]] = None) -> str:
    """A value as help and docs show it: sizes in KiB/MiB, floats without a
    needless .0, tuples as their flag would spell them."""
    describe = getattr(kind, "describe", None)
    if describe is not None:
        return str(describe(value))
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


class _Defaults(Mapping[str, str]):
    """Config's defaults by field name, formatted, for {field} in default_text."""

    def __getitem__(self, name: str) -> str:
        opt = options()[name]
        return format_value(opt.default, opt.type)

    def __iter__(self) -> Iterator[str]:
        return iter(options())

    def __len__(self) -> int:
        return len(_OPTIONS)


def describe_default(opt: Option) -> Optional[str]:
    """The default as help and docs state it, or None when there is
    nothing to say (a flag that is off, an empty list, an unset file)."""
    if opt.mode_default is not None:
        return f"{format_value(opt.mode_default, opt.type)}; off in --compat unless given"
    if opt.default_text is not None:
        return opt.default_text.format_map(_Defaults())
    if opt.default is None or isinstance(opt.default, bool) or opt.default in ((), []):
        return None
    return format_value(opt.default, opt.type)


def help_text(opt: Option) -> str:
    """The option's help with its default: "meaning (default X)", or
    "(default: X)" for a default in words."""
    default = describe_default(opt)
    if default is None:
        return opt.help
    return f"{opt.help} (default{':' if opt.default_text is not None else ''} {default})"
