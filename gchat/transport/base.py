"""The connection base: a client over TCP, and the accept loop.

Every transport extends Connection (tls.py, websocket.py) or hands its
sockets to one (http.py after an upgrade, proxy.py after a PROXY header);
server.py assembles them.  This module imports only the layers below it:
the events, the texts, the outbox and the timeouts, never the server, the
hub or a room.  What a connection needs of the server (its config, the
hub's inbox, forget()) it is handed as an object.

Each client has a reader and a writer, as in the seed, but they are event
loop watchers rather than parked greenlets:

* the reader is a read watcher's callback: when the socket is readable it
  does one non-blocking recv(), splits lines (protocol.LineReader) and puts
  them on the hub's inbox (a gevent Queue) without waiting;
* the writer is a write watcher, started only when the kernel refuses bytes
  that the hub offered (outbox.py), and stopped once they are sent.

Why not a greenlet per client, as the seed has a goroutine per client: a
greenlet suspended in recv() costs about 6.5 KiB of saved C stack here
(measured: bench/RESULTS.md), more than an idle connection may cost in all.
A callback that never waits costs nothing while the client is quiet, and
reading in the loop's own callbacks batches naturally: every socket that is
readable in one poll is read before the broadcaster wakes.

When a reader must wait (the client is over its flood allowance, or the
hub's inbox is over its bound) it stops its watcher; nothing more is read,
so TCP pushes back on that client alone, until a timer or the hub resumes
it.  The callbacks run in gevent's hub and never block or switch.

The hub decides when a connection ends and calls close(); a Connection's
socket, watchers and timers are all gone after that.
"""

import errno
import logging
import socket

import gevent
from gevent.monkey import get_original
from gevent.server import StreamServer

from gchat import events
from gchat.events import Why
from gchat.outbox import Outbox
from gchat.protocol import LineReader, TokenBucket, format_address
from gchat.timeouts import next_wait

log = logging.getLogger("gchat")

# The standard library's socket class, even once --redis has patched the
# socket module for redis-py (bus/__init__.py): a client's socket is a plain
# one, waited on by its Connection's own watchers; gevent's socket class
# would add two watchers and some hundred bytes to every connection.
PlainSocket = get_original("socket", "socket")

_READ, _WRITE = 1, 2  # libev event masks
# Why a reader is paused (bit flags): over its flood allowance; inbox full.
_FLOOD, _INBOX = 1, events.INBOX_FULL


class Connection:
    """One client: its socket, reader, outbox and writer, and its timers."""

    __slots__ = (
        "sock",
        "who",
        "name",
        "room",
        "outbox",
        "last_heard",
        "_server",
        "_loop",
        "_inbox",
        "_config",
        "_lines",
        "_bucket",
        "_held",
        "_paused",
        "_reader",
        "_writer",
        "_deadline",
        "_resume",
        "_linger",
        "_name_deadline",
        "_closing",
        "_closed",
    )

    transport = "tcp"  # for the metrics: clients by transport
    outbox_class = Outbox  # a transport that frames its output has its own

    def __init__(self, sock, address, server):
        self.sock = sock
        self.who = format_address(address[0], address[1])
        self.name = None  # set by the Chat alone
        self.room = None  # likewise: the Room it is in once named
        self._server = server
        config = self._config = server.config
        self._loop = loop = gevent.get_hub().loop
        self._inbox = server.hub.inbox
        self._lines = LineReader(config.max_line)
        rate = config.effective_flood_rate
        self._bucket = TokenBucket(rate, config.flood_burst, loop.now()) if rate else None
        self._held = None  # lines read but waiting for flood tokens
        self._paused = 0  # _FLOOD | _INBOX
        self._writer = None  # write watcher, made when first needed
        self._deadline = None  # timer for the idle and name timeouts
        self._resume = None  # timer that ends a flood pause
        self._linger = None  # timer that ends a lingering close
        self._closing = False
        self._closed = False
        self.last_heard = loop.now()
        self._name_deadline = None
        if not config.compat and config.name_timeout:
            self._name_deadline = self.last_heard + config.name_timeout
        # Broadcasts are written whole where the kernel takes them, so
        # Nagle's algorithm would only add latency.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if config.sndbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.sndbuf)
        except OSError:
            pass  # not TCP (a test's socketpair); nothing to tune
        self.outbox = self.outbox_class(
            config.sendq, config.slow_policy, sock.send, self._start_writer
        )
        self._reader = loop.io(sock.fileno(), _READ)

    def __repr__(self):
        return f"<Connection {self.name or '-'} {self.who}>"

    def start(self, initial: bytes = b""):
        """Join the hub.  initial: bytes already read from the client by an
        earlier stage (an HTTP upgrade, a PROXY header), read first."""
        self._post(events.ARRIVE, None)
        self._reader.start(self._on_readable)
        self._arm_deadline()
        if initial:
            self._loop.run_callback(self._received_early, initial)

    def _received_early(self, data: bytes):
        if not self._closing:
            self._received(data)

    def _post(self, kind, payload):
        # The inbox is unbounded for put_nowait, which never waits; its
        # bound is kept by pausing readers (_on_readable) instead.
        self._inbox.put_nowait((kind, self, payload))

    # The reader ------------------------------------------------------------

    def _on_readable(self):
        try:
            data = self.sock.recv(self._config.recv_size)
        except BlockingIOError:
            return
        except OSError:
            self._end(Why.ERROR)
            return
        self._received(data)

    def _received(self, data: bytes):
        """Bytes from the client (b"": it closed): lines to the hub."""
        try:
            if not data:
                tail = self._at_eof()
                if tail:
                    self._post(events.LINES, tail)
                self._end(Why.EOF)
                return
            self.last_heard = self._loop.now()
            self._deliver(self._lines_from(data))
        except Exception:
            log.exception("error reading from %s", self.who)
            self._end(Why.FAULT)

    def _deliver(self, lines: list):
        """Lines to the hub, within the flood allowance; pause at a full inbox."""
        if lines:
            if self._bucket is not None:
                lines = self._within_allowance(lines)
            if lines:
                self._post(events.LINES, lines)
        if self._inbox.qsize() >= self._config.inbox_size:
            self._pause(_INBOX)
            self._server.hub.paused.append(self)

    def _drain_pending(self):
        """Lines a transport holds already decoded (an upgrade's leftovers)."""
        if not self._closing:
            try:
                self._deliver(self._lines_from(b""))
            except Exception:
                log.exception("error reading from %s", self.who)
                self._end(Why.FAULT)

    def _lines_from(self, data: bytes) -> list:
        """The lines that data completes (a transport of another framing,
        websocket.py, overrides this and _at_eof)."""
        return self._lines.feed(data)

    def _at_eof(self) -> list:
        """The unterminated last line, at end of input (the seed's Scanner
        delivers it too)."""
        return self._lines.finish()

    def _within_allowance(self, lines: list) -> list:
        """Flood control: the lines the token bucket allows now; the rest
        are held, and reading pauses until the bucket has refilled."""
        # Called only with a bucket (see _deliver), so _bucket is not None.
        granted = self._bucket.take(len(lines), self._loop.now())  # type: ignore[union-attr]
        if granted == len(lines):
            return lines
        self._held = lines[granted:]
        self._pause(_FLOOD)
        self._server.flood_pauses += 1
        self._resume = self._loop.timer(self._bucket.wait())  # type: ignore[union-attr]
        self._resume.start(self._release_held)
        return lines[:granted]

    def _release_held(self):
        # The flood timer's callback: the timer and the held lines exist until now.
        self._resume.close()  # type: ignore[union-attr]
        self._resume = None
        if self._closing:
            return
        held, self._held = self._held, None
        lines = self._within_allowance(held)  # type: ignore[arg-type]
        if lines:
            self._post(events.LINES, lines)
        if self._held is None:
            self.resume(_FLOOD)

    def _pause(self, reason: int):
        self._paused |= reason
        self._reader.stop()

    def resume(self, reason: int):
        """Read again, unless another pause still holds (the hub calls this
        with _INBOX once it has drained its inbox)."""
        self._paused &= ~reason
        if not self._paused and not self._closing:
            self._reader.start(self._on_readable)

    def _end(self, why: str):
        """The reader is done: tell the hub, which decides what follows."""
        self._reader.stop()
        self._cancel_deadline()
        self._post(events.LEAVE, why)

    def _end_once(self, why: str):
        """_end, unless the hub has already let the client go (a transport
        that finds the end while decoding defers it to after the lines)."""
        if not self._closing:
            self._end(why)

    # Timeouts (exercise 8.13) ---------------------------------------------

    def _arm_deadline(self):
        # One timer, re-armed only when it fires: a line received costs one
        # store to last_heard, not a timer restart.
        why, wait = next_wait(
            self._loop.now(),
            self._config.compat or self.name is not None,
            self._name_deadline,
            self.last_heard,
            self._config.effective_idle_timeout,
        )
        if why is not None:
            self._end(why)
        elif wait is not None:
            self._deadline = self._loop.timer(wait)
            self._deadline.start(self._on_deadline)

    def _on_deadline(self):
        self._deadline.close()  # type: ignore[union-attr]  # this callback's own timer
        self._deadline = None
        if not self._closing:
            self._arm_deadline()

    def _cancel_deadline(self):
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None

    # The writer ------------------------------------------------------------

    def _start_writer(self):
        if self._closed:
            return
        if self._writer is None:
            self._writer = self._loop.io(self.sock.fileno(), _WRITE)
        self._writer.start(self._on_writable)

    def _on_writable(self):
        """Send what the outbox parked, as the socket drains."""
        outbox = self.outbox
        data = outbox.pending()
        if data:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                return
            except OSError:
                outbox.abandon()
            else:
                outbox.sent(sent)
                if outbox.parked_bytes:
                    return
        self._writer.stop()  # type: ignore[union-attr]  # this callback's own watcher
        if self._closing:
            self._close_socket()

    # Ending ----------------------------------------------------------------

    def close(self, linger: float):
        """Called by the hub once the client's last lines are queued: send
        them for up to linger seconds, then close the socket."""
        if self._closing:
            return
        self._before_close()
        self._closing = True
        self._reader.stop()
        self._cancel_deadline()
        if linger > 0 and self.outbox.parked_bytes and not self.outbox.broken:
            self._start_writer()
            self._linger = self._loop.timer(linger)
            self._linger.start(self._close_socket)
        else:
            self._close_socket()

    def _before_close(self):
        """Last words of the transport before its socket goes (a WebSocket
        close frame, TLS's close_notify); each transport adds its own and
        calls the next."""

    def _close_socket(self):
        if self._closed:
            return
        self._closed = True
        self._closing = True
        # Watchers go before the descriptor, whose number may be reused at once.
        for watcher in (self._reader, self._writer, self._deadline, self._resume, self._linger):
            if watcher is not None:
                watcher.close()
        self._writer = self._deadline = self._resume = self._linger = None
        self.outbox.abandon()
        try:
            self.sock.close()
        except OSError:
            pass
        self._server.forget(self)


class Listener(StreamServer):
    """The accept loop: hands each accepted socket to the handler in the
    event loop (no greenlet per connection), and outlives descriptor
    exhaustion.

    When accept() fails with EMFILE or ENFILE the pending connections stay
    in the kernel's backlog; the listener stops accepting for a moment,
    with a backoff that doubles up to a limit, and starts again, while the
    clients already connected are served as usual.
    """

    def __init__(self, address, handle, config):
        """address: (host, port) to bind, or a listening socket to serve
        (socket activation), whose backlog its creator chose."""
        self._resume = None  # close() reads it, and gevent closes on a bad listener
        backlog = None if hasattr(address, "accept") else config.backlog
        super().__init__(address, handle, backlog=backlog, spawn=None)
        self._backoff_min = self._backoff = config.accept_backoff_min
        self._backoff_max = config.accept_backoff_max
        self._reuse_port = config.reuse_port
        self.accept_pauses = 0

    def get_listener(self, address, backlog=None, family=None):
        """gevent's listener, or with --reuse-port (the --workers
        supervisor's workers, workers.py) the same made by hand, since
        SO_REUSEPORT must be set before bind: every process that sets it
        may bind the port, and the kernel spreads connections over them."""
        if not self._reuse_port:
            return super().get_listener(address, backlog, family)
        sock = PlainSocket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gevent does
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(backlog if backlog is not None else self.backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def do_read(self):
        try:
            fd, address = self.socket._accept()
        except BlockingIOError:
            return None
        except OSError as err:
            if err.errno not in _OUT_OF_DESCRIPTORS:
                raise
            self._pause(err)
            return None
        self._backoff = self._backoff_min
        # A plain non-blocking socket: the Connection's own watchers wait
        # on it, so gevent's socket wrapper (and its two watchers) would
        # be memory for nothing.
        sock = PlainSocket(self.socket.family, socket.SOCK_STREAM, 0, fileno=fd)
        sock.setblocking(False)
        return sock, address

    def do_close(self, sock, *args):
        """The handler returns at once; the Connection closes its socket."""

    def _pause(self, err):
        self.accept_pauses += 1
        log.warning("accept failed (%s); pausing accepts for %.2f s", err.strerror, self._backoff)
        self.stop_accepting()
        self._resume = self.loop.timer(self._backoff)
        self._resume.start(self._resume_accepting)
        self._backoff = min(self._backoff * 2, self._backoff_max)

    def _resume_accepting(self):
        self._resume.close()  # type: ignore[union-attr]  # this callback's own timer
        self._resume = None
        if not self.closed:
            self.start_accepting()

    def close(self):
        if self._resume is not None:
            self._resume.close()
            self._resume = None
        super().close()


_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def refuse(sock, line: str):
    """One line, if the kernel takes it at once, then close."""
    try:
        sock.send(line.encode() + b"\n")
    except OSError:
        pass
    sock.close()
