"""The client sockets of one generator worker (worker.py): the Client
record, connecting (TCP, then the transport's handshake), the epoll reader
that hands every chunk received to the receiver (worker_receive.py),
writes through the transport's codec, and closing.

Why one epoll: instead of one greenlet per socket, which would cost a
greenlet switch and a gevent watcher per delivery, every client socket
sits in one ``select.epoll`` of this worker; one gevent io watcher on that
epoll fd calls back, takes every ready socket in one ``poll(0)`` and reads
it in 64 KiB chunks (see on_epoll_ready).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
import traceback
from typing import Callable, Optional

import gevent
import gevent.event
import gevent.pool
from gevent.socket import wait_read, wait_write

from gchat_bench.cluster import node_of
from gchat_bench.stats import SeqTracker
from gchat_bench.transports import (
    Closed,
    TlsTransport,
    TransportError,
    WsTransport,
    client_context,
    make_transport,
    send_all,
)

# Read size per ready socket.  Big reads amortise the syscall over many
# lines, but not above 64 KiB: CPython allocates the whole size for every
# recv() and glibc serves 128 KiB and more with mmap/munmap, which measured
# 19 us per recv(256 KiB) against 2.4 us per recv(64 KiB) here.
RECV_SIZE = 64 * 1024
# Most ready sockets taken from epoll per wake-up before gevent runs the
# senders again: bounds how long a burst of reads can delay a send.  At
# 200k deliveries/s, 1024 gave a median send lag of 4.2 ms, 128 gave 1.3 ms
# for the same throughput.
POLL_BATCH = 128
# Linux: let connect() pick the source port per 4-tuple even after bind()
# to a source address (otherwise bind reserves a port for every address and
# the ephemeral range runs out twice as fast).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
# Receive buffer of a client that never reads: small, so the server's
# send queue (what the slow scenario tests) fills instead of our kernel.
SLOW_RCVBUF = 4096

# Where a client is: awaiting the name prompt, awaiting "You are", ready
# (reading chat lines), closed; with --rooms, awaiting the /join's
# confirmation, then its roster line.
PROMPT, WELCOME, READY, CLOSED, JOINING, ROSTER = range(6)
# With --rooms, after the roster line of a /join: the next line may open a
# history block (HIST_MAYBE), or the client is inside one (HIST_IN).
HIST_NONE, HIST_MAYBE, HIST_IN = range(3)


class Client:
    """One simulated client; its state is touched by this worker only."""

    __slots__ = (
        "idx",
        "sock",
        "fd",
        "state",
        "name",
        "attempt",
        "tail",
        "tracker",
        "sync",
        "t_sync",
        "sender_id",
        "credits",
        "event",
        "ready",
        "t_start",
        "t_ready",
        "slow",
        "error",
        "room",
        "hist",
        "tx",
    )

    def __init__(self, idx: int, slow: bool):
        self.idx = idx
        self.sock: Optional[socket.socket] = None
        self.fd = -1
        self.state = PROMPT
        self.name = b""
        self.attempt = 0
        self.tail = b""
        self.tracker: Optional[SeqTracker] = None
        self.sync = 0
        self.t_sync = 0
        self.sender_id = -1
        self.credits = 0
        self.event: Optional[gevent.event.Event] = None
        self.ready = gevent.event.Event()
        self.t_start = 0
        self.t_ready = 0
        self.slow = slow
        self.error = ""
        self.room = -1  # --rooms: index of the client's room
        self.hist = HIST_NONE  # --rooms: where it is in a history block
        self.tx: Optional[WsTransport | TlsTransport] = None  # --ws/--tls: its codec


def send_to(c: Client, buf: bytes) -> None:
    """send_all of line bytes through the client's transport: one
    WebSocket frame (or TLS write) per call, so per send batch."""
    send_all(c.sock, c.tx.encode(buf) if c.tx is not None else buf)


class ClientSockets:
    """The sockets of one worker's clients, read through one epoll.

    What is read goes to on_data(client, bytes) (decoded from the
    transport: line bytes only), and a client about to be closed to
    on_close(client) first; both are the receiver's, given to start().
    """

    on_data: Callable[[Client, bytes], None]
    on_close: Callable[[Client], None]

    def __init__(self, cfg: dict):
        addr = (cfg["host"], cfg["port"])
        # A cluster: every node's address; client i connects to
        # nodes[node_of(i, len(nodes), rooms, local_rooms)] (see node_index).
        self.nodes = [tuple(a) for a in cfg.get("nodes") or [addr]]
        self.rooms = cfg.get("rooms", 0)
        self.local_rooms = bool(cfg.get("local_rooms"))
        # "tcp", "ws" (cfg["port"] is then gchat's --http port) or "tls".
        self.transport = cfg.get("transport", "tcp")
        self.tls_ctx = client_context() if self.transport == "tls" else None
        self.compat = cfg["mode"] == "compat"
        self.source_addrs = cfg.get("source_addrs") or []
        self.by_fd: dict = {}
        self.ep = select.epoll()
        self.reader = gevent.get_hub().loop.io(self.ep.fileno(), 1)

    def start(
        self, on_data: Callable[[Client, bytes], None], on_close: Callable[[Client], None]
    ) -> None:
        """Start reading: for the worker's life, every chunk to on_data."""
        self.on_data = on_data
        self.on_close = on_close
        self.reader.start(self.on_epoll_ready)

    # ------------------------------------------------------------- read

    def on_epoll_ready(self) -> None:
        """Read every ready socket; see the module docstring for why epoll.

        Runs as the callback of one io watcher that stays started for the
        worker's life.  A greenlet calling wait_read(epfd) instead made
        libev add and remove the fd on every wake-up: py-spy found 32% of a
        worker in epoll_ctl at 10,000 clients, where each wake-up finds few
        sockets ready.  When more than POLL_BATCH are ready the epoll fd
        stays readable and the loop calls back after the senders have run.
        """
        by_fd = self.by_fd
        on_data = self.on_data
        for fd, _ in self.ep.poll(0, POLL_BATCH):
            c = by_fd.get(fd)
            if c is None:
                continue
            try:
                data = c.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                c.error = "recv: %s" % e
                data = b""
            try:
                if data and c.tx is not None:
                    try:
                        data = c.tx.decode(data)
                        if not data:
                            continue  # only part of a frame or record so far
                    except Closed as e:
                        # A close frame / close_notify: the data before it, then EOF.
                        if e.args[0]:
                            on_data(c, e.args[0])
                        data = b""
                    except TransportError as e:
                        c.error = "%s: %s" % (self.transport, e)
                        data = b""
                if data:
                    on_data(c, data)
                else:
                    self.close(c)
            except Exception as e:
                # A bug in the receive path: say so on stderr (the parent's
                # terminal) and drop this client, but keep reading the others.
                traceback.print_exc()
                c.error = "receive path: %r" % (e,)
                self.close(c)

    def stop_reading(self, c: Client) -> None:
        """Never read c again (a slow client: the server's queue for it
        fills up); cmd_slowcheck reads it at the end."""
        try:
            self.ep.unregister(c.fd)
        except OSError:
            pass
        self.by_fd.pop(c.fd, None)

    def slowcheck(self, clients: list, quiet: float) -> dict:
        """How many of these never-reading clients the server has closed.

        A client that never reads learns of its end only now.  The server's
        FIN waits behind the data the client never read (its window is
        shut), so read everything until EOF or reset (closed) or until
        nothing comes for quiet seconds (still open).
        """
        result = {}

        def check(c):
            while True:
                try:
                    data = c.sock.recv(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    try:
                        wait_read(c.sock.fileno(), timeout=quiet, timeout_exc=socket.timeout())
                    except socket.timeout:
                        result[c.idx] = "open"
                        return
                    continue
                except OSError:
                    data = b""
                if not data:
                    result[c.idx] = "closed"
                    return

        group = gevent.pool.Group()
        for c in clients:
            if c.state == CLOSED:
                result[c.idx] = "closed"
            elif c.state == READY:
                group.spawn(check, c)
        group.join()
        states = list(result.values())
        return {"closed": states.count("closed"), "open": states.count("open")}

    # ------------------------------------------------------------ write

    def send_line(self, c: Client, line: bytes) -> None:
        """Send a handshake line (name, /join) without blocking."""
        if c.tx is not None:
            line = c.tx.encode(line)
        try:
            # Called from the reader's watcher callback, which must not
            # block: a fresh socket takes a name whole; if not, a greenlet
            # sends the rest.
            n = c.sock.send(line)
        except BlockingIOError:
            n = 0
        except OSError as e:
            c.error = "send name: %s" % e
            self.close(c)
            return
        if n < len(line):
            gevent.spawn(self.send_rest, c, line[n:])

    def send_rest(self, c: Client, data: bytes) -> None:
        try:
            send_all(c.sock, data)
        except OSError as e:
            c.error = "send name: %s" % e
            self.close(c)

    # ---------------------------------------------------- connect, close

    def node_index(self, c: Client) -> int:
        """Which of self.nodes client c connects to (cluster.node_of)."""
        return node_of(c.idx, len(self.nodes), self.rooms, self.local_rooms)

    def addr_of(self, c: Client) -> tuple:
        """The (host, port) client c connects to: its node of a cluster."""
        return self.nodes[self.node_index(c)]

    def connect_all(self, clients: list, concurrency: int, timeout: float) -> None:
        """Connect clients, at most concurrency at once, each through its
        handshake (ready) or closed with its error."""
        pool = gevent.pool.Pool(concurrency)
        for c in clients:
            pool.spawn(self.connect_one, c, timeout)
        pool.join()

    def connect_one(self, c: Client, timeout: float) -> None:
        c.t_start = time.monotonic_ns()
        c.state = WELCOME if self.compat else PROMPT
        addr = self.addr_of(c)
        s = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET)
        c.sock = s
        try:
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if c.slow:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
            if self.source_addrs:
                try:
                    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                except OSError:
                    pass
                s.bind((self.source_addrs[c.idx % len(self.source_addrs)], 0))
            err = s.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
            wait_write(s.fileno(), timeout=timeout, timeout_exc=socket.timeout("connect timed out"))
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            early = b""
            if self.transport != "tcp":
                # The WebSocket upgrade or TLS handshake, before the epoll
                # reader sees the socket; early: line bytes that came with it.
                c.tx = make_transport(self.transport, self.tls_ctx)
                try:
                    early = c.tx.handshake(s, addr[0], addr[1], timeout)
                except Closed:
                    raise OSError("closed by the server during the handshake") from None
            c.fd = s.fileno()
            self.by_fd[c.fd] = c
            self.ep.register(c.fd, select.EPOLLIN)
        except (OSError, socket.timeout) as e:
            c.error = "connect: %s" % e
            self.close(c)
            return
        if early:
            self.on_data(c, early)
        if not c.ready.wait(timeout) and c.state != READY:
            try:
                local = "%s:%d" % c.sock.getsockname()[:2]
            except OSError:
                local = "?"
            c.error = "no welcome within %.0f s (client %s, %s, partial line %r)" % (
                timeout,
                local,
                "awaiting prompt" if c.state == PROMPT else "awaiting 'You are'",
                c.tail[:80],
            )
            self.close(c)

    def close(self, c: Client) -> None:
        """Forget a client: the one place a client is removed."""
        if c.state == CLOSED:
            return
        self.on_close(c)
        c.state = CLOSED
        if self.by_fd.pop(c.fd, None) is not None:
            try:
                self.ep.unregister(c.fd)
            except OSError:
                pass
        try:
            c.sock.close()
        except Exception:
            pass
        c.ready.set()
        if c.event is not None:
            c.event.set()

    def close_all(self, clients: list) -> None:
        """Close the sockets at the worker's end (no accounting left)."""
        for c in clients:
            if c.sock is not None:
                try:
                    c.sock.close()
                except Exception:
                    pass
