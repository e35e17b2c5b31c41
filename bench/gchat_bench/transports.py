"""The generator's transports other than plain TCP: WebSocket and TLS.

A client's transport sits between its non-blocking socket and the line
stream the worker scans: ``decode`` turns the bytes of one recv() into the
line bytes they carry (possibly none yet), ``encode`` turns line bytes into
what goes on the wire.  The handshake runs once per client, in the
connecting greenlet, before the socket joins the worker's epoll; whatever
line bytes arrived with the end of the handshake are handed back then.

- ``ws``: gchat's ``--http`` port, ``GET /ws`` (RFC 6455).  The client
  sends masked text frames, one per send batch.  gchat's frames are
  unmasked text frames of whole lines, so the concatenated payloads are
  exactly the TCP line stream.  A frame header may be split over two
  recv() chunks: WsDecoder keeps the partial header.
- ``tls``: ssl.MemoryBIO + SSLObject over the same socket; the certificate
  is not verified (loopback only).

``make_cert`` makes the self-signed certificate a spawned gchat gets.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile

from gevent.socket import wait_read, wait_write

TRANSPORTS = ("tcp", "ws", "tls")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16384
RECV_SIZE = 64 * 1024


class TransportError(OSError):
    """A handshake or framing error (the client is closed)."""


class Closed(Exception):
    """The peer closed the transport (a WebSocket close, a TLS close_notify)."""


# ---------------------------------------------------------------- WebSocket


class WsDecoder:
    """Server frames -> the concatenated payload bytes of its data frames.

    State between chunks: ``head`` (a partial frame header), ``left``
    (payload bytes of the current frame still to come) and ``ctrl`` (the
    opcode of the current frame if it is a control frame, whose payload is
    skipped).  A close frame raises Closed after the data before it.
    """

    __slots__ = ("head", "left", "ctrl", "closed")

    def __init__(self):
        self.head = b""
        self.left = 0
        self.ctrl = 0
        self.closed = False

    def decode(self, data: bytes) -> bytes:
        if self.head:
            data = self.head + data
            self.head = b""
        n = len(data)
        out = []
        pos = 0
        if self.left:
            take = min(self.left, n)
            if not self.ctrl:
                out.append(data[:take])
            self.left -= take
            pos = take
        while pos < n:
            if n - pos < 2:
                self.head = data[pos:]
                break
            b0, b1 = data[pos], data[pos + 1]
            if b1 & 0x80:
                raise TransportError("masked frame from the server")
            ln = b1 & 0x7F
            hl = 2
            if ln == 126:
                hl = 4
            elif ln == 127:
                hl = 10
            if n - pos < hl:
                self.head = data[pos:]
                break
            if ln == 126:
                ln = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif ln == 127:
                ln = int.from_bytes(data[pos + 2 : pos + 10], "big")
            op = b0 & 0x0F
            if op in (0, 1):
                self.ctrl = 0
            elif op == 2:
                raise TransportError("binary frame from the server")
            else:
                self.ctrl = op
                if op == 8:
                    self.closed = True
            pos += hl
            take = min(ln, n - pos)
            if not self.ctrl:
                out.append(data[pos : pos + take])
            pos += take
            self.left = ln - take
            if self.closed:
                break
        return b"".join(out) if len(out) != 1 else out[0]


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked client frame (FIN set) carrying payload."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if n:
        mask = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return head + key + payload


def ws_unmask(frame_payload: bytes, key: bytes) -> bytes:
    """The inverse of the masking in ws_frame (tests)."""
    n = len(frame_payload)
    mask = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(frame_payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")


def recv_some(sock, timeout: float) -> bytes:
    """One recv() on a non-blocking socket, waiting (gevent) for data."""
    while True:
        try:
            data = sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            wait_read(
                sock.fileno(), timeout=timeout, timeout_exc=socket.timeout("handshake timed out")
            )
            continue
        if not data:
            raise TransportError("connection closed during the handshake")
        return data


def send_all(sock, data) -> None:
    """sendall on a non-blocking socket that yields to gevent when full
    (the worker's senders use it too)."""
    view = memoryview(data)
    while view:
        try:
            n = sock.send(view)
        except BlockingIOError:
            wait_write(sock.fileno())
            continue
        view = view[n:]


class WsTransport:
    __slots__ = ("dec",)

    def __init__(self):
        self.dec = WsDecoder()

    def handshake(self, sock, host: str, port: int, timeout: float) -> bytes:
        key = base64.b64encode(os.urandom(16))
        send_all(
            sock,
            b"GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n" % (host.encode(), port, key),
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            if len(buf) > MAX_HEAD:
                raise TransportError("no end of the HTTP response head")
            buf += recv_some(sock, timeout)
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if not status.startswith(b"HTTP/1.1 101"):
            raise TransportError("websocket handshake refused: %r" % status[:100])
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        if b"sec-websocket-accept: " + accept.lower() not in head.lower():
            raise TransportError("wrong Sec-WebSocket-Accept")
        return self.decode(rest) if rest else b""

    def decode(self, data: bytes) -> bytes:
        out = self.dec.decode(data)
        if self.dec.closed:
            raise Closed(out)
        return out

    @staticmethod
    def encode(data: bytes) -> bytes:
        return ws_frame(data)


# ---------------------------------------------------------------------- TLS


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # loopback only; see the module docstring
    return ctx


class TlsTransport:
    __slots__ = ("inc", "out", "obj", "sock")

    def __init__(self, ctx: ssl.SSLContext):
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=False)

    def handshake(self, sock, host: str, port: int, timeout: float) -> bytes:
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending = self.out.read()
                if pending:
                    send_all(sock, pending)
                self.inc.write(recv_some(sock, timeout))
            except ssl.SSLError as e:
                raise TransportError("TLS handshake: %s" % e) from None
        pending = self.out.read()
        if pending:
            send_all(sock, pending)
        # Application data that came with the last handshake bytes.
        return self.decode(b"")

    def decode(self, data: bytes) -> bytes:
        if data:
            self.inc.write(data)
        out = []
        read = self.obj.read
        try:
            while True:
                out.append(read(RECV_SIZE))
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            raise Closed(b"".join(out)) from None
        except ssl.SSLError as e:
            raise TransportError("TLS: %s" % e) from None
        return b"".join(out) if len(out) != 1 else out[0]

    def encode(self, data: bytes) -> bytes:
        self.obj.write(data)
        return self.out.read()


def make_transport(kind: str, ctx=None):
    if kind == "ws":
        return WsTransport()
    if kind == "tls":
        return TlsTransport(ctx or client_context())
    return None


# ------------------------------------------------------------ certificate

_cert: dict = {}


def make_cert() -> tuple:
    """(cert.pem, key.pem) of a self-signed certificate for 127.0.0.1, made
    once per process in a temporary directory removed at exit."""
    if not _cert:
        d = tempfile.mkdtemp(prefix="gchat-bench-tls-")
        atexit.register(shutil.rmtree, d, True)
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        try:
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                    "-keyout",
                    key,
                    "-out",
                    cert,
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise RuntimeError("cannot make a TLS certificate with openssl: %s" % e) from None
        _cert.update(cert=cert, key=key)
    return _cert["cert"], _cert["key"]


def spawn_options(transport: str, options: str) -> str:
    """A spawned gchat's OPTIONS for the transport: --http 0 for ws, the
    generated certificate for tls (unless OPTIONS set them)."""
    options = options or ""
    if transport == "ws" and "--http" not in options:
        options += " --http 0"
    if transport == "tls" and "--tls-cert" not in options:
        cert, key = make_cert()
        options += " --tls-cert %s --tls-key %s" % (cert, key)
    return options.strip()
