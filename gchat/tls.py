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

from gchat import hub as events
from gchat.outbox import Outbox
from gchat.room import Why
from gchat.server import Connection

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

    def offer(self, data: bytes, force: bool = False) -> bool:
        if self.broken:
            return True
        if self._parked:
            if self.parked_bytes + len(data) > self.limit and not force:
                return self._over_limit(data)  # counted on the plaintext
            if self.missed:  # encrypted before data, so that records stay in order
                self._park(self._notice_line())
        return Outbox.offer(self, self._encrypt(data), force=True)

    def offer_raw(self, ciphertext: bytes):
        """Records the SSLObject made on its own (handshake, close_notify)."""
        if ciphertext:
            Outbox.offer(self, ciphertext, force=True)

    def _notice_line(self) -> bytes:
        from gchat import protocol as p
        line = self._encrypt(p.render_missed(self.missed).encode() + b"\n")
        self.missed = 0
        return line

    def _notice(self, line: str) -> bytes:
        return self._encrypt(line.encode() + b"\n")


class TlsConnection(Connection):
    """A client over TLS.  See the module docstring."""

    __slots__ = ("_tls", "_incoming", "_outgoing", "_handshaken", "_handshake_timer",
                 "_plain_tail")
    transport = "tls"
    outbox_class = TlsOutbox

    def __init__(self, sock, address, server):
        super().__init__(sock, address, server)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = server.tls.context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.outbox._encrypt = self._encrypt
        self._handshaken = False
        self._handshake_timer = None
        self._plain_tail = b""

    def start(self, initial: bytes = b""):
        """Read the handshake; the client joins the hub once it is done."""
        self._reader.start(self._on_readable)
        self._handshake_timer = self._loop.timer(self._config.handshake_timeout)
        self._handshake_timer.start(self._handshake_expired)
        if initial:
            self._loop.run_callback(self._received_early, initial)

    def _handshake_expired(self):
        log.info("%s: no TLS handshake within %g s; closing", self.who,
                 self._config.handshake_timeout)
        self._abort()

    def _abort(self):
        """Close a client the hub never heard of."""
        if self._handshake_timer is not None:
            self._handshake_timer.close()
            self._handshake_timer = None
        self.close(0)

    def _encrypt(self, plaintext: bytes) -> bytes:
        self._tls.write(plaintext)
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
        return self._lines.feed(b"".join(chunks)) if chunks else []

    def _end_once(self, why):
        if not self._closing:
            self._end(why)

    def close(self, linger: float):
        """Say close_notify after the last lines, then close."""
        if not self._closing and self._handshaken:
            try:
                self._tls.unwrap()
            except (ssl.SSLError, ValueError):
                pass  # SSLWantReadError: the peer's answer is not awaited
            self.outbox.offer_raw(self._outgoing.read())
        if self._handshake_timer is not None:
            self._handshake_timer.close()
            self._handshake_timer = None
        super().close(linger)
