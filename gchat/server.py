"""TCP transport: a StreamServer, and a Connection per client.

The StreamServer's handler greenlet is the client's reader: it turns bytes
into lines (protocol.LineReader) and puts them on the hub's inbox.  Output
goes through the client's Outbox; a writer greenlet is started only when the
kernel refuses bytes, and ends when they are sent.  The hub decides when a
connection ends and calls Connection.close(); the handler returns (and the
socket is gone) only after that.
"""
import logging
import socket
import time

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from gchat import hub as events
from gchat.outbox import Outbox
from gchat.protocol import LineReader, TokenBucket, format_address
from gchat.room import Why
from gchat.timeouts import next_wait

log = logging.getLogger("gchat")


class Connection:
    """One client: its socket, its reader loop, its outbox and writer."""

    __slots__ = ("sock", "who", "name", "outbox", "_hub", "_config", "_writer",
                 "_closing", "_closed", "_linger")

    def __init__(self, sock, address, hub, config):
        self.sock = sock
        self.who = format_address(address[0], address[1])
        self.name = None  # set by the Room alone
        self._hub = hub
        self._config = config
        self._writer = None
        self._closing = False
        self._closed = Event()
        self._linger = None
        # Broadcasts are written at once and whole where the kernel takes
        # them, so Nagle's algorithm would only add latency.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if config.sndbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.sndbuf)
        except OSError:
            pass  # not TCP (a test's socketpair); nothing to tune
        # The gevent socket wraps a non-blocking stdlib socket; sending on
        # that one directly is a plain send() that never switches greenlets:
        # the broadcaster's fast path.
        self.outbox = Outbox(config.sendq, config.slow_policy, sock._sock.send, self._wake_writer)

    def __repr__(self):
        return f"<Connection {self.name or '-'} {self.who}>"

    # The reader (the StreamServer's handler greenlet) ----------------------

    def serve(self):
        hub = self._hub
        hub.put(events.ARRIVE, self)
        why = self._read()
        hub.put(events.LEAVE, self, why)
        self._closed.wait()

    def _read(self) -> str:
        """Read lines until the client goes or times out; say why it ended."""
        config = self._config
        hub, sock = self._hub, self.sock
        reader = LineReader(config.max_line)
        idle = config.effective_idle_timeout
        compat = config.compat
        monotonic = time.monotonic
        name_deadline = None
        if not compat and config.name_timeout:
            name_deadline = monotonic() + config.name_timeout
        flood_rate = config.effective_flood_rate
        bucket = TokenBucket(flood_rate, config.flood_burst, monotonic()) if flood_rate else None
        last_heard = monotonic()
        while True:
            # In --compat nobody is ever named: the idle rule applies from the start.
            why, timeout = next_wait(monotonic(), compat or self.name is not None,
                                     name_deadline, last_heard, idle)
            if why is not None:
                return why
            sock.settimeout(timeout)
            try:
                data = sock.recv(config.recv_size)
            except socket.timeout:
                continue  # next_wait decides which deadline passed, if any
            except OSError:
                return Why.EOF if self._closing else Why.ERROR
            if not data:
                tail = reader.finish()
                if tail:
                    hub.put(events.LINES, self, tail)
                return Why.EOF
            last_heard = monotonic()
            lines = reader.feed(data)
            if bucket is None:
                if lines:
                    hub.put(events.LINES, self, lines)
                continue
            # Flood control: pass on what the bucket allows and sleep for
            # the rest.  Meanwhile nothing is read, so the flooder's own TCP
            # window fills and its kernel, not our memory, holds the excess.
            while lines:
                granted = bucket.take(len(lines), monotonic())
                if granted:
                    hub.put(events.LINES, self, lines[:granted])
                    lines = lines[granted:]
                if lines:
                    if self._closing:
                        return Why.EOF
                    gevent.sleep(bucket.wait())

    # The writer ---------------------------------------------------------

    def _wake_writer(self):
        if self._writer is None and not self._closing:
            self._writer = gevent.spawn(self._write_parked)

    def _write_parked(self):
        """Send what the outbox parked, as the socket drains; then end."""
        outbox, sock = self.outbox, self.sock
        try:
            while True:
                data = outbox.pending()
                if not data:
                    break
                try:
                    # A cooperative send: waits for the socket to drain.
                    sent = sock.send(data)
                except socket.timeout:
                    continue  # the reader's timeout applies here too; wait on
                except OSError:
                    outbox.abandon()
                    break
                outbox.sent(sent)
        finally:
            self._writer = None
            if self._closing:
                self._close_socket()

    # Ending -------------------------------------------------------------

    def close(self, linger: float):
        """Called by the hub, once the client's last lines are queued: send
        them for up to linger seconds, then close the socket."""
        if self._closing:
            return
        self._closing = True
        if linger > 0 and self.outbox.parked_bytes and not self.outbox.broken:
            if self._writer is None:
                self._writer = gevent.spawn(self._write_parked)
            self._linger = gevent.spawn_later(linger, self._close_socket)
        else:
            self._close_socket()

    def _close_socket(self):
        if self._closed.is_set():
            return
        self._closed.set()
        if self._linger is not None and self._linger is not gevent.getcurrent():
            self._linger.kill(block=False)
        self._linger = None
        self.outbox.abandon()
        try:
            self.sock.close()  # wakes a reader or writer waiting on it
        except OSError:
            pass


class ChatServer:
    """Listens, runs the hub, and stops gracefully."""

    def __init__(self, config):
        self.config = config
        self.hub, self.hub_greenlet = events.spawn_hub(config)
        # The group tracks every connection's handler, so that stop() can
        # wait for their output to be flushed and their sockets closed.
        self.handlers = Pool()  # unbounded: a Pool only because StreamServer wants one
        self.server = StreamServer((config.host, config.port), self._handle, spawn=self.handlers,
                                   backlog=config.backlog)

    @property
    def address(self) -> tuple:
        return self.server.address

    def start(self):
        self.server.start()

    def _handle(self, sock, address):
        Connection(sock, address, self.hub, self.config).serve()

    def stop(self):
        """Stop accepting, say goodbye to everyone, flush, close."""
        self.server.stop_accepting()
        self.server.close()
        self.hub.put(events.SHUTDOWN)
        # Each connection closes once its output is flushed, or when
        # shutdown_flush_timeout has passed; a second of slack on top.
        budget = self.config.shutdown_flush_timeout + 1.0
        self.hub.stopped.wait(budget)
        self.handlers.join(timeout=budget)
