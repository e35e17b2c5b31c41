"""WebSocket clients (RFC 6455): the line protocol in text frames.

A WsConnection is a Connection (base.py) whose bytes are WebSocket
frames: the same hub, rooms, Outbox, send queue, slow-client policy, flood
control, idle timeout and limits.  Only the framing differs:

* in: wsproto parses the client's frames (masking, fragmentation, control
  frames, UTF-8, close codes).  A text message carries one line or several
  separated by "\\n"; its text goes through the connection's LineReader
  as if it had come over TCP with a "\\n" after the message, so --max-line
  applies to each line with the same error line, and the client stays.
* out: server frames are not masked, so a batch's broadcast is framed
  once and the same bytes go to every WebSocket member (WsOutbox keeps the
  frame of the last blob it saw, and the hub hands every plain member the
  same blob object), as the same bytes go to every TCP member.

Bad input closes with the code RFC 6455 gives it: a message over
Config.ws_max_message is 1009, a binary message 1003, invalid UTF-8 1007,
an unmasked client frame or any other protocol error 1002.  A ping gets
its pong and a close is answered, in order with the rest of the output.
No extension is accepted (permessage-deflate compresses per connection,
which would break the shared framing).
"""

import logging
import struct
from typing import TYPE_CHECKING, Optional

from wsproto import ConnectionType
from wsproto.connection import Connection as WsProtocol
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.frame_protocol import CloseReason

from gchat import protocol as p
from gchat.events import Why
from gchat.outbox import Outbox
from gchat.transport.base import Connection

log = logging.getLogger("gchat")

_TEXT_FIN = 0x81  # FIN bit and the text opcode


def frame_text(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame of payload (server to client).

    Only the header is made here; client frames are parsed by wsproto."""
    size = len(payload)
    if size < 126:
        head = bytes((_TEXT_FIN, size))
    elif size < 1 << 16:
        head = struct.pack("!BBH", _TEXT_FIN, 126, size)
    else:
        head = struct.pack("!BBQ", _TEXT_FIN, 127, size)
    return head + payload


def _header_size(frame: bytes) -> int:
    marker = frame[1] & 0x7F
    return 2 if marker < 126 else 4 if marker == 126 else 10


class WsOutbox(Outbox):
    """An Outbox that frames what it is offered as text frames.

    The last blob and its frame are kept for the whole class: one flush
    hands every plain member the same blob object, so it is framed once
    per batch, not once per client."""

    __slots__ = ()
    _last_blob: Optional[bytes] = None
    _last_frame = b""  # the frame of _last_blob (read only once that is set)

    def offer(self, data: bytes, force: bool = False) -> bool:
        if data is WsOutbox._last_blob:
            frame = WsOutbox._last_frame
        else:
            frame = frame_text(data)
            WsOutbox._last_blob, WsOutbox._last_frame = data, frame
        return super().offer(frame, force)  # over TLS: encrypted next (tls.py)

    def offer_control(self, frame: bytes):
        """A frame wsproto made (pong, close), in order with the rest."""
        super().offer(frame, force=True)

    def _lines_in(self, data: bytes) -> int:
        return data.count(b"\n", _header_size(data))

    def _wire(self, payload: bytes) -> bytes:
        return super()._wire(frame_text(payload))


WS_SLOTS = ("_ws", "_message_bytes", "_closed_by_us")

if TYPE_CHECKING:

    class _WsState(Connection):
        """What a type checker is told a WsLayer is: a Connection with the
        attributes of WS_SLOTS.  At run time the layer is a bare mixin and
        the concrete class holds the slots, which mypy cannot see."""

        outbox: WsOutbox
        _ws: WsProtocol
        _message_bytes: int
        _closed_by_us: bool
else:
    _WsState = object


class WsLayer(_WsState):
    """What a Connection does differently over WebSocket.  A mixin with no
    state of its own (its slots are the concrete class's, WS_SLOTS), so
    that TLS can stack under it (tls.TlsWsConnection)."""

    __slots__ = ()

    def __init__(self, sock, address, server, protocol=None):
        """protocol: the wsproto Connection of the handshake (http.py).
        Bytes the client sent after its upgrade request come to start()."""
        super().__init__(sock, address, server)
        self._ws = protocol if protocol is not None else WsProtocol(ConnectionType.SERVER)
        self._message_bytes = 0
        self._closed_by_us = False

    def _lines_from(self, data: bytes) -> list:
        ws = self._ws
        if self._closed_by_us:
            return []  # a close frame has gone out: nothing more is read
        if data:
            ws.receive_data(data)
        lines = []
        limit = self._config.ws_max_message
        for event in ws.events():
            if isinstance(event, TextMessage):
                self._message_bytes += len(event.data)
                if self._message_bytes > limit:
                    self._close_with(CloseReason.MESSAGE_TOO_BIG, p.render_ws_too_big(limit))
                    break
                lines.extend(self._lines.feed(event.data.encode("utf-8")))
                if event.message_finished:
                    lines.extend(self._lines.feed(b"\n"))
                    self._message_bytes = 0
            elif isinstance(event, Ping):
                self.outbox.offer_control(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if ws.state is not ConnectionState.REMOTE_CLOSING:
                    # Not the client's close frame: wsproto found a fault in
                    # its frames (1002, 1007); tell the client with that code.
                    self._close_with(event.code, event.reason or "")
                else:
                    # The client closes: answer, then the hub lets it go.
                    self.outbox.offer_control(ws.send(event.response()))
                    self._closed_by_us = True
                    self._finish(Why.EOF)
                break
            elif isinstance(event, BytesMessage):
                self._close_with(CloseReason.UNSUPPORTED_DATA, p.WS_TEXT_ONLY)
                break
        return lines

    def _at_eof(self) -> list:
        return []

    def _close_with(self, code, reason: str):
        log.info("%s: websocket closed with %d (%s)", self.who, code, reason)
        try:
            self.outbox.offer_control(self._ws.send(CloseConnection(code=code, reason=reason)))
        except Exception:  # the state does not allow a close frame any more
            pass
        self._closed_by_us = True
        self._finish(Why.ERROR)

    def _finish(self, why):
        # After the lines of this read are posted (the reader posts them),
        # the client leaves; nothing more is read.
        self._reader.stop()
        self._loop.run_callback(self._end_once, why)

    def _before_close(self):
        """The hub lets the client go: a close frame after its last lines."""
        if not self._closed_by_us:
            self._closed_by_us = True
            try:
                self.outbox.offer_control(
                    self._ws.send(CloseConnection(code=CloseReason.NORMAL_CLOSURE))
                )
            except Exception:  # the state does not allow a close frame any more
                pass
        super()._before_close()


class WsConnection(WsLayer, Connection):
    """A client over WebSocket, after the HTTP upgrade (http.py)."""

    __slots__ = WS_SLOTS
    transport = "websocket"
    outbox_class = WsOutbox
