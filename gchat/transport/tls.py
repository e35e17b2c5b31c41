"""TLS on the line port (--tls-cert, --tls-key): the stdlib's ssl module,
sans I/O (ssl.MemoryBIO and SSLObject), so that a TLS client is the same
event-loop Connection as a plain one: its reader and writer stay watchers
on a non-blocking socket, and no greenlet waits in a handshake.

* in: what recv() returns goes into the incoming BIO; the SSLObject does
  the handshake, then hands back plaintext for the LineReader.
* out: the broadcast is still rendered once per batch, but it is encrypted
  per client (each connection has its own keys and record counter).
  TlsOutbox encrypts only what it will send: a batch that the slow-client
  policy skips is never encrypted, since a TLS stream cannot lose a record.

A client joins the hub (and is greeted) only once its handshake is done;
one that has not finished it within Config.handshake_timeout, sends plain
text, or sends garbage in the middle of a session is closed with a log
line, and nobody else notices.  SIGHUP reloads the certificate and key
(TlsContext.reload): new connections use the new ones, connected clients
keep theirs, and a bad new file is logged while the old one stays.
"""

import logging
import ssl
from typing import TYPE_CHECKING, Any, Callable

from gchat import events
from gchat.events import Why
from gchat.outbox import Outbox
from gchat.transport.base import Connection
from gchat.transport.websocket import WS_SLOTS, WsLayer, WsOutbox

log = logging.getLogger("gchat")

_READ_SIZE = 16 * 1024  # one TLS record's worth of plaintext per read() call


class TlsContext:
    """The server's SSLContext, rebuilt from the files on reload()."""

    def __init__(self, config):
        self.config = config
        self.context = self._make()

    def _make(self) -> ssl.SSLContext:
        config = self.config
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # TLS 1.2 at least; the stdlib's default ciphers are the secure set.
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(config.tls_client_ca)
        return context

    def reload(self) -> bool:
        """Read the certificate and key again; on failure keep the old ones."""
        try:
            context = self._make()
        except (OSError, ssl.SSLError, ValueError) as err:
            log.error("TLS reload failed, keeping the current certificate: %s", err)
            return False
        self.context = context
        log.info("TLS certificate reloaded from %s", self.config.tls_cert)
        return True


class TlsOutbox(Outbox):
    """An Outbox of ciphertext: the connection's encrypt(plaintext) turns
    what is offered into TLS records just before it is sent or parked."""

    __slots__ = ("_encrypt",)
    _encrypt: Callable[[bytes], bytes]  # set by the connection (TlsLayer)

    def offer(self, data: bytes, force: bool = False) -> bool:
        if self.broken:
            return True
        if self._parked:
            return self._queue(data, force)  # the limit counts the plaintext
        return Outbox.offer(self, self._encrypt(data))

    def _seal(self, data: bytes) -> bytes:
        return self._encrypt(data)

    def offer_raw(self, ciphertext: bytes):
        """Records the SSLObject made on its own (handshake, close_notify)."""
        if ciphertext:
            Outbox.offer(self, ciphertext, force=True)

    def _wire(self, payload: bytes) -> bytes:
        return self._encrypt(super()._wire(payload))


TLS_SLOTS = ("_tls", "_incoming", "_outgoing", "_handshaken", "_handshake_timer")

if TYPE_CHECKING:

    class _TlsState(Connection):
        """What a type checker is told a TlsLayer is: a Connection with the
        attributes of TLS_SLOTS.  At run time the layer is a bare mixin and
        the concrete class holds the slots, which mypy cannot see."""

        outbox: TlsOutbox
        _tls: ssl.SSLObject
        _incoming: ssl.MemoryBIO
        _outgoing: ssl.MemoryBIO
        _handshaken: bool
        _handshake_timer: Any  # a gevent timer, or None
else:
    _TlsState = object


class TlsLayer(_TlsState):
    """What a Connection does differently over TLS.  A mixin with no state
    of its own (its slots are the concrete class's, TLS_SLOTS), so that a
    WebSocket layer can stack on it (TlsWsConnection)."""

    __slots__ = ()

    def __init__(self, sock, address, server, *args, tls=None):
        """tls: (SSLObject, incoming BIO, outgoing BIO) of a handshake an
        earlier stage did (https, http.py); None: the handshake is ahead."""
        super().__init__(sock, address, server, *args)
        if tls is None:
            self._incoming = ssl.MemoryBIO()
            self._outgoing = ssl.MemoryBIO()
            self._tls = server.tls.context.wrap_bio(
                self._incoming, self._outgoing, server_side=True
            )
        else:
            self._tls, self._incoming, self._outgoing = tls
        self.outbox._encrypt = self._encrypt
        self._handshaken = tls is not None
        self._handshake_timer = None

    def start(self, initial: bytes = b""):
        """Read the handshake; the client joins the hub once it is done."""
        if self._handshaken:
            super().start(initial)
            self._loop.run_callback(self._drain_pending)  # what the BIO already holds
            return
        self._reader.start(self._on_readable)
        if self._config.handshake_timeout:  # 0 turns the limit off
            self._handshake_timer = self._loop.timer(self._config.handshake_timeout)
            self._handshake_timer.start(self._handshake_expired)
        if initial:
            self._loop.run_callback(self._received_early, initial)

    def _handshake_expired(self):
        log.info(
            "%s: no TLS handshake within %g s; closing", self.who, self._config.handshake_timeout
        )
        self._abort()

    def _abort(self):
        """Close a client the hub never heard of."""
        if self._handshake_timer is not None:
            self._handshake_timer.close()
            self._handshake_timer = None
        self.close(0)

    def _encrypt(self, plaintext: bytes) -> bytes:
        try:
            self._tls.write(plaintext)
        except (ssl.SSLError, ValueError):
            # The session failed (its reader ends the client): nothing more
            # can be sent on it, so output is discarded from now on.
            self.outbox.broken = True
            return b""
        return self._outgoing.read()

    def _received(self, data: bytes):
        if data:
            self._incoming.write(data)
        if not self._handshaken:
            if not data:
                log.info("%s: closed during the TLS handshake", self.who)
                self._abort()
                return
            if not self._handshake():
                return
            # Now the chat begins, as for a plain client; plaintext that
            # came with the handshake's last flight is read below.
            self._post(events.ARRIVE, None)
            self._arm_deadline()
        Connection._received(self, data)

    def _handshake(self) -> bool:
        """Go on with the handshake; True once it is done."""
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self.outbox.offer_raw(self._outgoing.read())
            return False
        except (ssl.SSLError, OSError) as err:
            # Plain text on the TLS port, a bad client certificate, garbage.
            log.info("%s: TLS handshake failed: %s", self.who, err)
            self.outbox.offer_raw(self._outgoing.read())  # the alert, if any
            self._abort()
            return False
        self._handshaken = True
        if self._handshake_timer is not None:
            self._handshake_timer.close()
            self._handshake_timer = None
        self.outbox.offer_raw(self._outgoing.read())
        return True

    def _lines_from(self, data: bytes) -> list:
        """The plaintext lines decrypted so far (_received has written the
        ciphertext into the incoming BIO already)."""
        chunks = []
        tls = self._tls
        while True:
            try:
                chunk = tls.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the client's close_notify
                self._reader.stop()
                self._loop.run_callback(self._end_once, Why.EOF)
                break
            except ssl.SSLError as err:
                log.info("%s: TLS error, closing: %s", self.who, err)
                self._reader.stop()
                self._loop.run_callback(self._end_once, Why.ERROR)
                break
            if not chunk:
                break
            chunks.append(chunk)
        pending = self._outgoing.read()  # e.g. TLS 1.3 session tickets
        if pending:
            self.outbox.offer_raw(pending)
        # The plaintext goes on to the next layer: lines, or WebSocket frames.
        return super()._lines_from(b"".join(chunks))

    def _before_close(self):
        """close_notify after the last lines (and after the layer above
        has said its last, e.g. a WebSocket close frame)."""
        super()._before_close()
        if self._handshaken:
            try:
                self._tls.unwrap()
            except (ssl.SSLError, ValueError):
                pass  # SSLWantReadError: the peer's answer is not awaited
            self.outbox.offer_raw(self._outgoing.read())
        if self._handshake_timer is not None:
            self._handshake_timer.close()
            self._handshake_timer = None


class TlsConnection(TlsLayer, Connection):
    """A client over TLS.  See the module docstring."""

    __slots__ = TLS_SLOTS
    transport = "tls"
    outbox_class = TlsOutbox


class TlsWsOutbox(WsOutbox, TlsOutbox):
    """Frames, then encrypts (each class's _wire calls the next)."""

    __slots__ = ()


class TlsWsConnection(TlsLayer, WsLayer, Connection):
    """A WebSocket client over https: TLS below, WebSocket frames above,
    lines on top.  Its handshake and upgrade were done by http.py."""

    __slots__ = TLS_SLOTS + WS_SLOTS
    transport = "websocket"
    outbox_class = TlsWsOutbox
    outbox: TlsWsOutbox  # both layers' outbox (for mypy; the slot is Connection's)


class TlsStream:
    """TLS over a blocking gevent socket, for the HTTP greenlets of an
    https port: the same MemoryBIO machinery, so that after an upgrade the
    connection goes on as a TlsWsConnection with the same SSLObject."""

    def __init__(self, sock, context):
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    @property
    def state(self) -> tuple:
        return self.tls, self.incoming, self.outgoing

    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def handshake(self):
        """Raises ssl.SSLError on a bad handshake, EOFError on a close."""
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(_READ_SIZE)
                if not data:
                    raise EOFError("closed during the TLS handshake") from None
                self.incoming.write(data)
            else:
                self._flush()
                return

    def recv(self, size: int) -> bytes:
        while True:
            try:
                return self.tls.read(size)
            except ssl.SSLWantReadError:
                data = self.sock.recv(_READ_SIZE)
                if not data:
                    return b""
                self.incoming.write(data)
            except ssl.SSLZeroReturnError:
                return b""

    def sendall(self, data: bytes):
        self.tls.write(data)
        self._flush()
