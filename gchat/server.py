"""TCP transport: a StreamServer, and a Connection per client.

The StreamServer's handler greenlet is the client's reader: it turns bytes
into lines (protocol.LineReader) and puts them on the hub's inbox.  Output
goes through the client's Outbox; a writer greenlet is started only when the
kernel refuses bytes, and ends when they are sent.  The hub decides when a
connection ends and calls Connection.close(); the handler returns (and the
socket is gone) only after that.
"""
import errno
import logging
import os
import socket
import time

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from gchat import hub as events
from gchat.outbox import Outbox
from gchat.protocol import (SERVER_FULL, TOO_MANY_FROM_ADDRESS, LineReader, TokenBucket,
                            format_address)
from gchat.room import Why
from gchat.timeouts import next_wait

log = logging.getLogger("gchat")


class Connection:
    """One client: its socket, its reader loop, its outbox and writer."""

    __slots__ = ("sock", "who", "name", "outbox", "_hub", "_config", "_census", "_writer",
                 "_closing", "_closed", "_linger")

    def __init__(self, sock, address, hub, config, census):
        self.sock = sock
        self.who = format_address(address[0], address[1])
        self.name = None  # set by the Room alone
        self._hub = hub
        self._config = config
        self._census = census
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
        self._census.writers += 1
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
            self._census.writers -= 1
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
            self._census.lingering += 1
        else:
            self._close_socket()

    def _close_socket(self):
        if self._closed.is_set():
            return
        self._closed.set()
        if self._linger is not None:
            self._census.lingering -= 1
            if self._linger is not gevent.getcurrent():
                self._linger.kill(block=False)
            self._linger = None
        self.outbox.abandon()
        try:
            self.sock.close()  # wakes a reader or writer waiting on it
        except OSError:
            pass


class _Listener(StreamServer):
    """A StreamServer whose accept loop outlives descriptor exhaustion.

    When accept() fails with EMFILE or ENFILE the pending connections stay
    in the kernel's backlog; the listener stops accepting for a moment,
    with a backoff that doubles up to a limit, and starts again, while the
    clients already connected are served as usual.
    """

    def __init__(self, address, handle, config, **kw):
        super().__init__(address, handle, backlog=config.backlog, **kw)
        self._backoff_min = self._backoff = config.accept_backoff_min
        self._backoff_max = config.accept_backoff_max
        self._resume = None
        self.accept_pauses = 0

    def do_read(self):
        try:
            accepted = super().do_read()
        except OSError as err:
            if err.errno not in _OUT_OF_DESCRIPTORS:
                raise
            self._pause(err)
            return None
        self._backoff = self._backoff_min
        return accepted

    def _pause(self, err):
        self.accept_pauses += 1
        log.warning("accept failed (%s); pausing accepts for %.2f s", err.strerror, self._backoff)
        self.stop_accepting()
        self._resume = gevent.spawn_later(self._backoff, self._resume_accepting)
        self._backoff = min(self._backoff * 2, self._backoff_max)

    def _resume_accepting(self):
        self._resume = None
        if not self.closed:
            self.start_accepting()

    def close(self):
        if self._resume is not None:
            self._resume.kill(block=False)
        super().close()


_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ChatServer:
    """Listens, admits connections within the limits, runs the hub, and
    stops gracefully."""

    def __init__(self, config):
        self.config = config
        self.hub, self.hub_greenlet = events.spawn_hub(config)
        self.hub.transport_stats = self.transport_stats
        # The pool tracks every connection's handler, so that stop() can
        # wait for their output to be flushed and their sockets closed.
        self.handlers = Pool()  # unbounded: a Pool only because StreamServer wants one
        self.server = _Listener((config.host, config.port), self._handle, config,
                                spawn=self.handlers)
        self.max_clients = config.max_clients or (1 << 30)
        self.per_ip = {}        # IP address -> connections admitted from it
        self.census = Census()  # greenlets beside the handlers
        self.refused = {"full": 0, "per_ip": 0}

    @property
    def address(self) -> tuple:
        return self.server.address

    def start(self):
        self.server.start()

    def _handle(self, sock, address):
        ip = address[0]
        # The pool holds this handler too, so len() counts this connection.
        if len(self.handlers) > self.max_clients:
            self.refused["full"] += 1
            _refuse(sock, SERVER_FULL)
            return
        from_ip = self.per_ip.get(ip, 0)
        if self.config.max_per_ip and from_ip >= self.config.max_per_ip:
            self.refused["per_ip"] += 1
            _refuse(sock, TOO_MANY_FROM_ADDRESS)
            return
        self.per_ip[ip] = from_ip + 1
        try:
            Connection(sock, address, self.hub, self.config, self.census).serve()
        finally:
            left = self.per_ip.pop(ip) - 1
            if left:
                self.per_ip[ip] = left

    def transport_stats(self) -> dict:
        """Counters of the transport, for /stats: descriptors and greenlets
        should return to their baseline after any churn."""
        try:
            fds = len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
        except OSError:
            fds = -1
        return {"connections": len(self.handlers), "fds": fds,
                "greenlets": 1 + len(self.handlers) + self.census.writers + self.census.lingering,
                "refused_full": self.refused["full"], "refused_per_ip": self.refused["per_ip"],
                "accept_pauses": self.server.accept_pauses}

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


class Census:
    """Greenlets that connections start besides their handler (writers and
    linger timers), counted for /stats."""

    __slots__ = ("writers", "lingering")

    def __init__(self):
        self.writers = 0
        self.lingering = 0


def _refuse(sock, line: str):
    """One line, if the kernel takes it at once, then close."""
    try:
        sock._sock.send(line.encode() + b"\n")
    except OSError:
        pass
