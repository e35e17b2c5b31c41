"""The HTTP/1.1 listeners: the chat page and its WebSocket (--http), and
the operators' endpoints, /healthz and /metrics (on --http, or on --admin
when that is given).

h11 parses HTTP; wsproto makes the WebSocket handshake.  Each HTTP
connection is served by a greenlet of its own, which never touches the
hub's state: pages are bytes read once at start, and the metrics are read
from the hub's counters.  A WebSocket upgrade hands the socket to a
WsConnection (websocket.py), an event-loop client of the hub like a TCP
one, and the greenlet ends with the HTTP parser's state.

Hardening: a request head over Config.http_max_head gets 431 (h11's own
bound, where h11 counts it); a malformed request 400, and the connection
is closed; a client that has not sent a whole request head within
Config.http_header_timeout seconds of its connection (or of its previous
response, on a kept-alive connection) is closed.  A WebSocket handshake
whose Origin is neither the Host's nor one of --allow-origin is refused
with 403, against cross-site WebSocket hijacking; a handshake without
Origin (a tool, not a browser) is allowed.
"""

import logging
import mimetypes
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import gevent
import h11
from gevent import Timeout
from gevent import socket as gsocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection
from wsproto.events import Request as WsRequest
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

from gchat import protocol as p
from gchat.transport.base import Listener, PlainSocket
from gchat.transport.websocket import WsConnection

log = logging.getLogger("gchat")

STATIC = Path(__file__).parent.parent / "static"
_RECV = 8192


def _body(text: str) -> bytes:
    """A plain-text response body: one line."""
    return text.encode() + b"\n"


def load_pages(folder: Path = STATIC) -> dict:
    """Every file directly in folder, as path -> (content type, bytes);
    index.html is also "/"."""
    pages = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file():
                kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                if kind.startswith("text/") or kind.endswith("javascript"):
                    kind += "; charset=utf-8"
                pages["/" + path.name] = (kind, path.read_bytes())
    if "/index.html" in pages:
        pages["/"] = pages["/index.html"]
    return pages


def origin_allowed(origin: Optional[str], host: Optional[str], allowed) -> bool:
    """Whether a WebSocket handshake from origin may proceed: no Origin
    (not a browser), the same host and port as the request's Host, or one
    of allowed (exact origins, as the browser sends them)."""
    if origin is None:
        return True
    if origin in allowed:
        return True
    if host is None:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


class HttpPort:
    """One HTTP listener.  page: it serves the page and /ws; operator: it
    serves /healthz and /metrics."""

    def __init__(
        self, chat_server, address, page: bool, operator: bool, metrics=None, sock=None, api=None
    ):
        self.chat_server = chat_server
        self.config = chat_server.config
        self.page = page
        self.operator = operator
        self.api = api  # transport/api.Api on the --admin port with --api-key-file
        self.metrics = metrics  # a callable returning (content type, bytes)
        self.pages = load_pages() if page else {}
        # The line port's accept loop, which outlives EMFILE.
        self.listener = Listener(sock if sock is not None else address, self._accept, self.config)
        self.connections: set[Any] = set()  # greenlets serving HTTP connections

    @property
    def address(self):
        return self.listener.address

    def start(self):
        self.listener.start()

    def close(self):
        self.listener.close()
        for greenlet in list(self.connections):
            greenlet.kill(block=False)

    def _accept(self, sock, address):
        """In the event loop: one greenlet per HTTP connection."""
        greenlet = gevent.spawn(self._serve, sock, address)
        self.connections.add(greenlet)
        greenlet.link(self.connections.discard)

    # ------------------------------------------------------------------

    def _serve(self, sock, address):
        conn = gsocket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.http_max_head)
        upgraded = False
        stream = conn  # what h11's bytes go through: the socket, or TLS over it
        try:
            if self.chat_server.tls is not None:
                stream = self._tls_handshake(conn, address)
                if stream is None:
                    return
            while True:
                got = self._read_request(http, stream)
                if got is None:
                    return
                upgraded = self._route(http, stream, address, *got)
                if upgraded or http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                    return
                http.start_next_cycle()
        except h11.RemoteProtocolError as err:
            self._refuse(http, stream, err.error_status_hint, str(err))
        except Timeout:
            log.debug(
                "%s: no complete request head within %g s; closing",
                address,
                self.config.http_header_timeout,
            )
        except OSError:
            pass
        finally:
            if not upgraded:
                conn.close()

    def _tls_handshake(self, conn, address):
        """https: the TLS handshake (tls.TlsStream), within the handshake
        timeout; None when it failed (logged)."""
        from gchat.transport.tls import TlsStream

        stream = TlsStream(conn, self.chat_server.tls.context)
        try:
            with Timeout(self.config.handshake_timeout or None):  # 0: no limit
                stream.handshake()
        except Timeout:
            log.info(
                "%s: no TLS handshake within %g s; closing", address, self.config.handshake_timeout
            )
            return None
        except (OSError, EOFError) as err:  # ssl.SSLError is an OSError
            log.info("%s: TLS handshake failed: %s", address, err)
            return None
        return stream

    def _read_request(self, http, conn):
        """(the next request, its body, whether the body was over the API's
        bound); None when the client closed.  The whole head must come
        within the timeout.  A body is kept only for the API (up to
        api.API_MAX_BODY), and read and dropped elsewhere."""
        request = None
        body = bytearray()
        too_large = False
        with Timeout(self.config.http_header_timeout):
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    http.receive_data(conn.recv(_RECV))
                elif isinstance(event, h11.Request):
                    # h11 bounds only a head still incomplete; one that
                    # arrived whole in a few reads is measured here.
                    size = (
                        len(event.method)
                        + len(event.target)
                        + sum(len(name) + len(value) + 4 for name, value in event.headers)
                    )
                    if size > self.config.http_max_head:
                        raise h11.RemoteProtocolError(
                            "request head too large", error_status_hint=431
                        )
                    request = event
                elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                    return (request, bytes(body), too_large) if request is not None else None
                elif isinstance(event, h11.ConnectionClosed):
                    return None
                elif isinstance(event, h11.Data) and self.api is not None and not too_large:
                    from gchat.transport.api import API_MAX_BODY

                    body += event.data
                    if len(body) > API_MAX_BODY:
                        too_large = True
                        body = bytearray()
                # other h11.Data: a body nobody asked for, read and ignored

    def _respond(
        self,
        http,
        conn,
        status: int,
        body: bytes,
        content_type="text/plain; charset=utf-8",
        headers=(),
    ):
        head = [
            ("content-type", content_type),
            ("content-length", str(len(body))),
            ("cache-control", "no-store"),
            *headers,
        ]
        data = http.send(h11.Response(status_code=status, headers=head))
        data += http.send(h11.Data(data=body)) + http.send(h11.EndOfMessage())
        conn.sendall(data)

    def _refuse(self, http, conn, status: int, why: str):
        """An error response, then the connection is closed."""
        if http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            self._respond(
                http,
                conn,
                status,
                _body(p.render_http_refusal(status, why)),
                headers=[("connection", "close")],
            )
        except (h11.LocalProtocolError, OSError):
            pass

    def _route(self, http, conn, address, request, body=b"", too_large=False) -> bool:
        """Answer request; True when the connection became a WebSocket."""
        path = request.target.split(b"?", 1)[0].decode("ascii", "replace")
        if self.api is not None and path.startswith("/api/"):
            from gchat.transport.api import encode

            headers = {name.lower(): value for name, value in request.headers}
            status, answer = self.api.answer(
                request.method.decode("ascii", "replace"), path, headers, body, too_large
            )
            self._respond(http, conn, status, encode(answer), "application/json")
            return False
        known = (self.page and (path == "/ws" or path in self.pages)) or (
            self.operator and path in ("/healthz", "/metrics")
        )
        if not known:
            self._respond(http, conn, 404, _body(p.HTTP_NOT_FOUND))
            return False
        if request.method != b"GET":
            self._respond(http, conn, 405, _body(p.HTTP_GET_ONLY), headers=[("allow", "GET")])
            return False
        if path == "/healthz":
            if self.chat_server.stopping:
                self._respond(http, conn, 503, _body(p.HTTP_STOPPING))
            else:
                self._respond(http, conn, 200, p.HTTP_HEALTHY.encode())
        elif path == "/metrics":
            content_type, body = self.metrics()
            self._respond(http, conn, 200, body, content_type)
        elif path == "/ws":
            return self._upgrade(http, conn, request, address)
        else:
            content_type, body = self.pages[path]
            self._respond(http, conn, 200, body, content_type)
        return False

    def _upgrade(self, http, conn, request, address) -> bool:
        headers = {name.lower(): value for name, value in request.headers}
        if b"websocket" not in headers.get(b"upgrade", b"").lower():
            self._respond(
                http,
                conn,
                426,
                _body(p.HTTP_UPGRADE_EXPECTED),
                headers=[("upgrade", "websocket"), ("connection", "close")],
            )
            return False
        origin = headers.get(b"origin")
        host = headers.get(b"host")
        if not origin_allowed(
            origin and origin.decode("latin-1"),
            host and host.decode("latin-1"),
            self.config.allow_origin,
        ):
            log.info("%s: WebSocket from origin %r refused (host %r)", address, origin, host)
            self._refuse(http, conn, 403, p.HTTP_ORIGIN_REFUSED)
            return False
        refusal = (
            p.HTTP_SERVER_STOPPING
            if self.chat_server.stopping
            else self.chat_server.refusal(address)
        )
        if refusal is not None:
            self._refuse(http, conn, 503, refusal)
            return False
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.initiate_upgrade_connection(request.headers, request.target)
            if not any(isinstance(event, WsRequest) for event in ws.events()):
                raise WsRemoteProtocolError("no WebSocket request", RejectConnection())
        except WsRemoteProtocolError as err:
            self._refuse(http, conn, 400, p.render_bad_handshake(err))
            return False
        # No extensions are offered back: permessage-deflate is declined,
        # since compression per connection would break the shared frames.
        conn.sendall(ws.send(AcceptConnection()))
        trailing, _ = http.trailing_data
        sock = getattr(conn, "sock", conn)  # under TLS, conn is a TlsStream
        raw = PlainSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        raw.setblocking(False)
        if sock is conn:
            self.chat_server.admit(
                WsConnection, raw, address, ws.connection, initial=bytes(trailing)
            )
        else:
            # wss: the same TLS session goes on, event-driven, under the
            # WebSocket; what h11 had decrypted beyond the head is its first.
            from gchat.transport.tls import TlsWsConnection

            # (ws.connection is set once initiate_upgrade_connection has run.)
            ws.connection.receive_data(bytes(trailing))  # type: ignore[union-attr]
            self.chat_server.admit(TlsWsConnection, raw, address, ws.connection, tls=conn.state)
        return True
