"""The PROXY protocol's I/O stage (--proxy-protocol): the stage before the
Connection.  Like a Connection it is a libev read watcher and a timer, not
a greenlet, so a connection waiting for its header costs no greenlet
stack; once the header is complete it hands the socket, the client's
address and the leftover bytes on, and closes the connection otherwise.
The parsing is pure, in proxy_header.py.
"""

import logging

import gevent

from gchat.logs import fields as log_fields
from gchat.protocol import format_address
from gchat.proxy_header import NEED_MORE, Malformed, ProxyHeaderParser, peer_allowed

log = logging.getLogger("gchat")

_READ = 1  # libev's read event


class ProxyHeaderReader:
    """Reads one connection's PROXY header in the event loop, then calls
    done(sock, (client_host, client_port), leftover), or closes the socket.

    start() first checks the peer against config.proxy_from; then a read
    watcher feeds the parser until it answers, and a timer closes the
    connection after config.handshake_timeout (0: no limit), so that a peer
    that connects and says nothing holds a descriptor only that long.  The
    callbacks never block: the socket is non-blocking and each readable
    event does one recv()."""

    __slots__ = ("_sock", "_address", "_config", "_done", "_parser", "_reader", "_timer", "_who")

    def __init__(self, sock, address, config, done):
        self._sock = sock
        self._address = address
        self._config = config
        self._done = done
        self._parser = ProxyHeaderParser()
        self._reader = self._timer = None
        self._who = format_address(address[0], address[1])

    def start(self):
        if not peer_allowed(self._address[0], self._config.proxy_from):
            log.info(
                "PROXY header refused: %s is not in --proxy-from (%s); closing",
                self._who,
                ",".join(self._config.proxy_from),
                extra=log_fields(addr=self._who, reason="not in --proxy-from"),
            )
            self._close()
            return
        loop = gevent.get_hub().loop
        self._reader = loop.io(self._sock.fileno(), _READ)
        self._reader.start(self._on_readable)
        if self._config.handshake_timeout:
            self._timer = loop.timer(self._config.handshake_timeout)
            self._timer.start(self._on_timeout)

    def _on_readable(self):
        try:
            data = self._sock.recv(self._config.recv_size)
        except BlockingIOError:
            return
        except OSError as err:
            log.debug(
                "PROXY header from %s: %s; closing",
                self._who,
                err,
                extra=log_fields(addr=self._who, reason=str(err)),
            )
            self._close()
            return
        if not data:
            log.debug(
                "PROXY header from %s: connection closed before the header ended",
                self._who,
                extra=log_fields(addr=self._who, reason="closed"),
            )
            self._close()
            return
        result = self._parser.feed(data)
        if result is NEED_MORE:
            return
        if isinstance(result, Malformed):
            log.info(
                "bad PROXY header from %s: %s; closing",
                self._who,
                result.reason,
                extra=log_fields(addr=self._who, reason=result.reason),
            )
            self._close()
            return
        # The watchers go before the socket changes hands: the Connection
        # makes its own on the same descriptor.
        self._stop_watchers()
        address = result.client_address(self._address)
        log.debug(
            "PROXY header from %s: v%d %s %s, client %s",
            self._who,
            result.version,
            result.command,
            result.transport,
            address,
        )
        try:
            self._done(self._sock, address, result.leftover)
        except Exception:
            log.exception("cannot hand on the connection from %s", self._who)
            self._sock.close()

    def _on_timeout(self):
        log.info(
            "no complete PROXY header from %s within %g s; closing",
            self._who,
            self._config.handshake_timeout,
            extra=log_fields(addr=self._who, reason="handshake timeout"),
        )
        self._close()

    def _stop_watchers(self):
        for watcher in (self._reader, self._timer):
            if watcher is not None:
                watcher.close()
        self._reader = self._timer = None

    def _close(self):
        # Watchers first: the descriptor's number may be reused at once.
        self._stop_watchers()
        try:
            self._sock.close()
        except OSError:
            pass
