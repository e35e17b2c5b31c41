"""Test helpers for the web face: a blocking WebSocket client over a real
socket (wsproto as the client side), raw frames for the bad-input tests,
and plain HTTP requests.  Every wait has a deadline."""

import os
import socket
import struct
import time

from chat_client import LineExpectations
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

DEFAULT_TIMEOUT = 10.0


class WsClient(LineExpectations):
    """A WebSocket client that reads whole lines of the line protocol."""

    def __init__(
        self,
        host,
        port,
        origin=None,
        extensions=(),
        timeout=DEFAULT_TIMEOUT,
        extra_headers=(),
        ssl_context=None,
    ):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if ssl_context is not None:  # wss
            self.sock = ssl_context.wrap_socket(self.sock, server_hostname=host)
        self.ws = WSConnection(ConnectionType.CLIENT)
        headers = list(extra_headers)
        if origin is not None:
            headers.append((b"origin", origin.encode()))
        self.timeout = timeout
        self.buffer = ""
        self.frames = []  # the text payload of every frame received, in order
        self.events = []  # every other event: Pong, CloseConnection, ...
        self.close_code = None
        self.eof = False
        self.sock.sendall(
            self.ws.send(
                Request(
                    host=f"{host}:{port}",
                    target="/ws",
                    extra_headers=headers,
                    extensions=list(extensions),
                )
            )
        )
        self.accepted = None  # AcceptConnection, or the RejectConnection
        self._message = []
        deadline = time.monotonic() + timeout
        while self.accepted is None:
            self._pump(deadline)

    def _pump(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"nothing more within the deadline; buffered {self.buffer[-300:]!r}")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(
                f"nothing more within the deadline; buffered {self.buffer[-300:]!r}"
            ) from None
        except (ConnectionResetError, OSError) as err:
            if isinstance(err, socket.timeout):
                raise
            data = b""
        if not data:
            self.eof = True
            self.ws.receive_data(None)
        else:
            self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, (AcceptConnection, RejectConnection)):
                self.accepted = event
            elif isinstance(event, RejectData):
                pass
            elif isinstance(event, TextMessage):
                self._message.append(event.data)
                if event.message_finished:
                    text = "".join(self._message)
                    self._message = []
                    self.frames.append(text)
                    self.buffer += text
            elif isinstance(event, CloseConnection):
                if self.close_code is None:  # not the 1006 wsproto adds at EOF
                    self.close_code = event.code
                self.events.append(event)
                if self.ws.state.name == "REMOTE_CLOSING":
                    try:
                        self.sock.sendall(self.ws.send(event.response()))
                    except OSError:
                        pass
            else:
                self.events.append(event)
        if self.eof and self.accepted is None:
            raise EOFError("closed during the handshake")

    def send(self, text: str):
        self.sock.sendall(self.ws.send(Message(data=text)))

    def say(self, line: str):
        self.send(line)

    def ping(self, payload=b"hi"):
        self.sock.sendall(self.ws.send(Ping(payload=payload)))

    def close(self, code=1000):
        try:
            self.sock.sendall(self.ws.send(CloseConnection(code=code)))
        except Exception:
            pass

    def line(self, timeout=None) -> str:
        deadline = time.monotonic() + (timeout or self.timeout)
        while "\n" not in self.buffer:
            if self.eof:
                raise EOFError(f"closed ({self.close_code}); buffered {self.buffer!r}")
            self._pump(deadline)
        line, _, self.buffer = self.buffer.partition("\n")
        return line

    def wait_closed(self, timeout=None) -> int:
        """Read until the server has closed; the close code it sent."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.eof:
            self._pump(deadline)
        return self.close_code

    def wait_event(self, kind, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while not any(isinstance(e, kind) for e in self.events):
            self._pump(deadline)
        return next(e for e in self.events if isinstance(e, kind))

    def send_raw(self, data: bytes):
        self.sock.sendall(data)


def masked_frame(opcode: int, payload: bytes, fin=True, mask=True) -> bytes:
    """A client frame made by hand, for inputs wsproto's client would
    never send (unmasked, binary, invalid UTF-8)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def http_request(host, port, raw: bytes, timeout=DEFAULT_TIMEOUT) -> bytes:
    """Send raw bytes, return everything until the server closes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(raw)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)
