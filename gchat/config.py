"""Every limit and tunable of the server, in one dataclass.

The CLI builds a Config; nothing else reads argv or the environment.  Each
field says why its default is what it is.
"""
from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB

SLOW_POLICIES = ("disconnect", "drop")


@dataclass(frozen=True)
class Config:
    # The seed listens on localhost:8000 (gopl.io ch8/chat).
    host: str = "localhost"
    port: int = 8000

    # Connections the kernel may hold waiting for accept().  Python's and
    # gevent's default is 128, which a burst of thousands of connects
    # overflows (each dropped SYN costs the client a 1 s retransmit); the
    # kernel caps this at net.core.somaxconn (4096 here).
    backlog: int = 4096

    # --compat: the seed's protocol byte for byte: no names, no commands,
    # no roster, every line is chat text, "who" is the remote HOST:PORT.
    compat: bool = False

    # Exercise 8.13 suggests five minutes of silence.  0 turns it off.
    # None means "the mode's default": 300 s in name mode, off in --compat
    # (the seed never disconnects an idle client, and --compat is a drop-in).
    idle_timeout: float = None
    # A client that has not given a name within a minute is a stray
    # connection (a port scan, a forgotten telnet); IRC daemons give about
    # the same for registration (ergo: 60 s).  0 turns it off.
    name_timeout: float = 60.0

    # Bytes that may wait for one client before --slow-policy applies.
    # Redis bounds pub/sub clients at 8-32 MB and Centrifugo at 1 MiB; 1 MiB
    # is some seconds of a busy room for a human client and keeps 10,000
    # stuck clients under 10 GiB in the worst case.
    sendq: int = 1 * MIB
    # The kernel's send buffer per client socket (SO_SNDBUF), in bytes; 0
    # keeps the kernel's autotuning (up to net.ipv4.tcp_wmem's maximum, 4 MiB
    # here).  A slow client can hold this much in the kernel on top of
    # --sendq in the server, so set it to make the bound on a stuck
    # client's backlog tight.
    sndbuf: int = 0
    # disconnect (Redis and ergo do this) or drop (skip messages, count
    # them, and tell the client how many it missed once it catches up).
    slow_policy: str = "disconnect"

    # Flood control: a token bucket per client, in lines.  None means the
    # mode's default: on in name mode, off in --compat (a drop-in for the
    # seed, which has none).  IRC servers allow a human about 1-2 lines/s
    # with a burst of 5-10; rooms here also hold bots and pasted text, so
    # the default is 10 lines/s sustained with a burst of 20 (a short
    # paste goes through at once).  Lines over the rate are delayed, never
    # dropped: the reader stops reading and TCP pushes back on the flooder.
    # 0 turns it off.
    flood_rate: float = None
    flood_burst: int = 20

    # Connections served at once.  None: the per-process file limit
    # (RLIMIT_NOFILE) less fd_headroom, worked out by the CLI; beyond it a
    # connection gets "error: server full" and is closed.
    max_clients: int = None
    # Descriptors kept free below RLIMIT_NOFILE for the listener, logs,
    # /proc reads and the connections being refused.
    fd_headroom: int = 64
    # Connections from one IP address at once; 0 is no limit (the default,
    # so that load tests from loopback work).
    max_per_ip: int = 0
    # When accept() fails for want of descriptors (EMFILE, ENFILE), the
    # server pauses accepting for this long, doubling up to the maximum,
    # instead of spinning or dying; accepted clients are served meanwhile.
    accept_backoff_min: float = 0.05
    accept_backoff_max: float = 1.0

    # Longest line a client may send, in bytes before decoding, without its
    # terminator.  IRC allows 512 for a whole message; chat users paste
    # more, and 4 KiB is one page: long enough for text, small enough that
    # 10,000 clients each holding an unfinished line cost 40 MiB at most.
    max_line: int = 4 * KIB

    # How long a client that is being disconnected (idle, slow, /quit) may
    # take to receive its last lines before its socket is closed anyway.
    # Long enough for a live client on a slow link, short enough that a
    # client that never reads holds its --sendq for only a moment more.
    close_linger: float = 2.0

    # Names shown in the roster line that greets a newcomer (exercise 8.12);
    # the count is always exact and /who lists everyone.  Without a bound
    # a storm of N arrivals sends O(N^2) bytes of rosters; IRC's NAMES reply
    # is split into 512-byte lines for the same reason.
    roster_limit: int = 50

    # In a room of at least this many members, the arrivals of one
    # broadcaster wake-up are announced in one line ("a, b and 40 more have
    # arrived") instead of one line each: a storm of N arrivals would
    # otherwise cost O(N^2) lines.  Smaller rooms and --compat keep the
    # seed's exact per-client lines.
    arrival_merge_threshold: int = 100
    # How long such arrivals may be held back to be merged, in seconds.
    # Each announcement costs one send to every member, so a storm's cost
    # is members x announcements; a quarter second keeps a 10,000-client
    # storm to a few dozen announcements a second while nobody waits long
    # to hear of a newcomer.  Anything else said ends the wait at once.
    arrival_merge_window: float = 0.25

    # Rooms (name mode; --compat is the seed's single room).  Every room
    # counts, the lobby and the empty ones too, since an empty room keeps
    # its history; at the limit the least recently used empty room is
    # dropped, and when every room has people in it a new one is refused.
    # 2,000 is one room per ten clients at the 20,000 sockets one process
    # can hold here, and bounds the history (below) at 2,000 x history x
    # one line.
    max_rooms: int = 2000
    # Chat and /me lines each room keeps for whoever enters it next.  IRC
    # bouncers and Slack replay about a screenful; 20 lines fill most of a
    # terminal without burying the roster.  0 turns history off.  Memory:
    # history x max_rooms lines of at most max_line bytes of text each.
    history: int = 20
    # Longest room name, in characters without the "#": IRC allows channel
    # names of 50 bytes and Slack 80 characters; 32 keeps /rooms readable.
    room_name_max: int = 32

    # The web face (web.py): (host, port) of the HTTP listener for the page,
    # /ws and, unless admin is set, /healthz and /metrics; None: off.
    http: tuple = None
    # (host, port) of a listener for /healthz and /metrics alone, so that
    # operators keep them off the public port; None: they stay on http.
    admin: tuple = None
    # Origins whose pages may open a WebSocket besides the server's own
    # (the Host of the request); browsers send Origin, and checking it
    # stops another site's page from chatting as its visitor.
    allow_origin: tuple = ()
    # Largest WebSocket message a client may send, in bytes; a larger one
    # closes with 1009.  Sixteen lines of --max-line: a paste of several
    # lines fits, a flood of megabytes does not get buffered.
    ws_max_message: int = 64 * KIB
    # Largest HTTP request head (h11's own default is 16 KiB as well;
    # browsers send 1-2 KiB).  A larger one gets 431.
    http_max_head: int = 16 * KIB
    # Seconds an HTTP client has to send a whole request head (and a
    # kept-alive one between requests) before it is closed, so that a
    # client trickling its head holds a greenlet only this long.
    http_header_timeout: float = 10.0

    # TLS on the line port (tls.py): PEM files of the certificate chain and
    # its key; both or neither.  SIGHUP reads them again.
    tls_cert: str = None
    tls_key: str = None
    # A PEM bundle of CAs: when set, clients must present a certificate
    # that one of them signed (mutual TLS); None: no client certificates.
    tls_client_ca: str = None
    # Seconds a new connection has to finish its opening stages (the PROXY
    # header, the TLS handshake) before it is closed, so that a client
    # that never finishes holds a descriptor only this long.  Browsers and
    # load balancers finish in milliseconds; 10 s allows for a slow link.
    # 0 turns the limit off.  (A PROXY header itself is bounded by its
    # protocol: 107 bytes for v1, 16 + 65,535 for v2, and only peers in
    # proxy_from may send one.)  Connections still in these stages are not
    # counted against max_clients: this timeout is what bounds them.
    handshake_timeout: float = 10.0

    # The PROXY protocol (proxy_protocol.py): every connection starts with
    # a v1 or v2 header from a load balancer, and the address it carries is
    # the client's everywhere.  Only peers in proxy_from (CIDRs) may send
    # one: anyone else could claim any address.  Loopback by default, where
    # a local HAProxy runs.
    proxy_protocol: bool = False
    proxy_from: tuple = ("127.0.0.0/8", "::1/128")

    # Under systemd (systemd.py): seconds between STATUS= messages with the
    # client and room counts.  2 s keeps `systemctl status` current for a
    # reader, and a datagram every 2 s is nothing to systemd.
    notify_status_interval: float = 2.0

    # A cluster of nodes over Redis (bus/): the Redis URL
    # (redis://[:PASSWORD@]HOST:PORT/DB, rediss:// for TLS); None: one
    # process, no bus, nothing changes.
    redis: str = None
    # The cluster's name: every Redis key starts with it, so that several
    # clusters (or a test and a deployment) can share one Redis.
    cluster: str = "gchat"
    # Seconds after which a node whose heartbeat key has expired is
    # declared lost, and its members are shown leaving everywhere.  A node
    # renews its key five times per period, so a lost node is noticed
    # within 5-6 s, while a node stalled for up to 4 s (a GC pause, a
    # SIGSTOP, a busy hub) is not declared lost.  Redis Sentinel's
    # down-after-milliseconds and Centrifugo's node info TTL are of the
    # same order.
    node_timeout: float = 5.0
    # Lines (chat lines and other operations) a node may hold while Redis
    # is unreachable.  Each is at most max_line bytes, so 10,000 bound the
    # held bytes at 40 MiB, and hold about a minute of a busy room.  Past
    # it a sender gets "error: ... not sent"; nothing is dropped silently.
    bus_backlog: int = 10_000
    # Seconds for which a node keeps what it published, to publish it
    # again if Redis comes back without the cluster's data.  Every live
    # node reads within node_timeout (or is declared lost), so six times
    # that is ample; the bound below caps its memory.
    bus_replay_window: float = 30.0
    # Entries kept for replay at most, whatever their age (an entry is one
    # hub batch): 20,000 batches bound that memory at a few tens of MiB.
    bus_replay_entries: int = 20_000
    # Largest entry a node reads from the bus, in bytes; a larger one is
    # logged and skipped (another program wrote it).  A batch of the
    # largest inbox (10,000 events) of short lines fits in a few MiB.
    bus_max_entry: int = 8 * MIB
    # Entries the stream keeps (XADD MAXLEN ~): a reader stalled for longer
    # than it takes the cluster to publish this many batches loses its
    # place.  100,000 batches is minutes of the busiest room here, a few
    # hundred MiB of Redis memory at most.
    bus_stream_max: int = 100_000
    # Entries read per XREAD: many per call, so that one round trip serves
    # a burst (the issue measured redis-py at ~15,000 calls/s).
    bus_read_count: int = 1000
    # SO_REUSEPORT on the listening sockets: set by the --workers
    # supervisor (workers.py) for its workers, so that they share one port
    # and the kernel spreads connections over them.
    reuse_port: bool = False

    # How long shutdown waits for queued output to drain before closing.
    shutdown_flush_timeout: float = 3.0

    # Bytes read per recv().  A 4 KiB line plus slack; a larger buffer
    # would only be allocated and freed again for every chunk.
    recv_size: int = 16 * KIB

    # Events the broadcaster may hold unread.  When it is full readers wait
    # (TCP then pushes back on senders) instead of memory growing.
    inbox_size: int = 10_000

    def __post_init__(self):
        if self.slow_policy not in SLOW_POLICIES:
            raise ValueError(f"slow_policy must be one of {SLOW_POLICIES}, not {self.slow_policy!r}")
        for field in ("sendq", "max_line", "recv_size", "inbox_size", "roster_limit", "backlog",
                      "arrival_merge_threshold", "max_rooms", "room_name_max", "ws_max_message",
                      "http_max_head", "notify_status_interval", "node_timeout", "bus_backlog",
                      "bus_replay_window", "bus_replay_entries", "bus_max_entry",
                      "bus_stream_max", "bus_read_count"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field} must be positive")
        for field in ("name_timeout", "shutdown_flush_timeout", "close_linger",
                      "arrival_merge_window", "http_header_timeout", "handshake_timeout"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must not be negative")
        if self.flood_rate is not None and self.flood_rate < 0:
            raise ValueError("flood_rate must not be negative")
        if self.flood_burst < 1:
            raise ValueError("flood_burst must be at least 1")
        if self.max_clients is not None and self.max_clients < 1:
            raise ValueError("max_clients must be positive")
        if self.max_per_ip < 0 or self.fd_headroom < 0:
            raise ValueError("max_per_ip and fd_headroom must not be negative")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        if self.history < 0:
            raise ValueError("history must not be negative")
        if self.sndbuf < 0:
            raise ValueError("sndbuf must not be negative")
        if self.idle_timeout is not None and self.idle_timeout < 0:
            raise ValueError("idle_timeout must not be negative")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be 0..65535")

    @property
    def effective_flood_rate(self) -> float:
        """Lines per second allowed per client, 0 for no limit."""
        if self.flood_rate is not None:
            return self.flood_rate
        return 0.0 if self.compat else 10.0

    @property
    def effective_idle_timeout(self) -> float:
        """Idle timeout in seconds, 0 for none, with the mode's default applied."""
        if self.idle_timeout is not None:
            return self.idle_timeout
        return 0.0 if self.compat else 300.0
