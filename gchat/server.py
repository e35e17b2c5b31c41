"""The server: assembles the listeners, the transports, the hub, the bus
and the HTTP ports, admits connections within the limits, and stops
gracefully.

The pieces live below it (imports point down only): the connection base
and the transports in transport/, the hub in hub.py, the bus in bus/.
"""

import gc
import logging
import os
from typing import Optional

import gevent
from gevent.event import Event
from greenlet import greenlet

from gchat import events
from gchat.hub import spawn_hub
from gchat.protocol import SERVER_FULL, TOO_MANY_FROM_ADDRESS
from gchat.transport.base import Connection, Listener, refuse

log = logging.getLogger("gchat")


class ChatServer:
    """Listens, admits connections within the limits, runs the hub, and
    stops gracefully."""

    def __init__(self, config, sockets=None, bus=None):
        """sockets: listening sockets to serve instead of binding, by name
        ("line", "http", "admin"), as systemd's socket activation passes
        them (systemd.py); bus: the cluster's bus (--redis), None alone."""
        self.config = config
        self.sockets = sockets or {}
        self.hub, self.hub_greenlet = spawn_hub(config, bus)
        self.hub.transport_stats = self.transport_stats
        self.connection_class = Connection
        self.tls = None
        if config.tls_cert is not None:
            from gchat.transport.tls import TlsConnection, TlsContext

            self.tls = TlsContext(config)  # a bad file fails here, before listening
            self.connection_class = TlsConnection
        self.server = Listener(
            self.sockets.get("line") or (config.host, config.port), self._handle, config
        )
        self.http = self.admin = None
        self.web_ports = self._make_web_ports()
        self.max_clients = config.max_clients or (1 << 30)
        self.open = 0  # connections whose socket is open
        self.by_transport = {"tcp": 0, "tls": 0, "websocket": 0}  # the same, by transport
        self.flood_pauses = 0  # readers paused over their flood allowance
        self.per_ip = {}  # IP address -> open connections from it
        self.refused = {"full": 0, "per_ip": 0}
        self.all_closed = Event()  # set when open drops to 0 during stop()
        self._stopping = False
        self._greenlet_count = None  # (loop time, count), see _greenlets

    @property
    def address(self) -> tuple:
        return self.server.address

    def reload_tls(self):
        """SIGHUP: read the TLS certificate and key again (transport/tls.py)."""
        if self.tls is not None:
            self.tls.reload()

    @property
    def stopping(self) -> bool:
        """Shutdown has begun (/healthz then answers 503)."""
        return self._stopping

    def start(self):
        self.server.start()
        for port in self.web_ports:
            port.start()

    def _make_web_ports(self) -> list:
        """The HTTP listeners of --http and --admin (transport/http.py), if any."""
        config = self.config
        given = self.sockets
        want_http = config.http is not None or "http" in given
        want_admin = config.admin is not None or "admin" in given
        if not want_http and not want_admin:
            return []
        from gchat.metrics import make_metrics
        from gchat.transport.http import HttpPort

        metrics = make_metrics(self)
        ports = []
        if want_http:
            self.http = HttpPort(
                self,
                config.http,
                page=True,
                operator=not want_admin,
                metrics=metrics,
                sock=given.get("http"),
            )
            ports.append(self.http)
        if want_admin:
            api = None
            if config.api_key_file is not None:
                from gchat.transport.api import Api, read_key

                api = Api(self.hub, read_key(config.api_key_file), config)
            self.admin = HttpPort(
                self,
                config.admin,
                page=False,
                operator=True,
                metrics=metrics,
                sock=given.get("admin"),
                api=api,
            )
            ports.append(self.admin)
        return ports

    def _handle(self, sock, address):
        """A new connection (in the event loop: never blocks).  With
        --proxy-protocol its header is read first (transport/proxy.py), and
        the address it carries is the client's from then on."""
        if self.config.proxy_protocol:
            from gchat.transport.proxy import ProxyHeaderReader

            ProxyHeaderReader(sock, address, self.config, self._accepted).start()
            return
        self._accepted(sock, address, b"")

    def _accepted(self, sock, address, initial: bytes):
        """A connection whose client's address is known: within the limits
        it joins the hub, over TLS with --tls-cert (transport/tls.py)."""
        refusal = self.refusal(address)
        if refusal is not None:
            refuse(sock, refusal)
            return
        self.admit(self.connection_class, sock, address, initial=initial)

    def refusal(self, address) -> Optional[str]:
        """The line that refuses a new client from address over the
        connection limits (counted), or None when it may come in."""
        if self.open >= self.max_clients:
            self.refused["full"] += 1
            return SERVER_FULL
        if self.config.max_per_ip and self.per_ip.get(address[0], 0) >= self.config.max_per_ip:
            self.refused["per_ip"] += 1
            return TOO_MANY_FROM_ADDRESS
        return None

    def admit(self, factory, sock, address, *args, initial: bytes = b"", **kwargs):
        """Make factory(sock, address, self, *args, **kwargs) a client of
        the hub; initial: bytes an earlier stage read from it."""
        try:
            conn = factory(sock, address, self, *args, **kwargs)
        except Exception:
            log.exception("cannot set up a connection from %s", address)
            sock.close()
            return
        self.open += 1
        self.by_transport[conn.transport] += 1
        self.per_ip[address[0]] = self.per_ip.get(address[0], 0) + 1
        conn.start(initial)

    def forget(self, conn):
        """conn's socket is closed (Connection._close_socket)."""
        self.open -= 1
        self.by_transport[conn.transport] -= 1
        ip = conn.who.rpartition(":")[0].strip("[]")
        left = self.per_ip.pop(ip, 1) - 1
        if left:
            self.per_ip[ip] = left
        if self._stopping and not self.open:
            self.all_closed.set()

    def transport_stats(self) -> dict:
        """Counters of the transport, for /stats: descriptors and greenlets
        should return to their baseline after any churn."""
        try:
            fds = len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
        except OSError:
            fds = -1
        loop = gevent.get_hub().loop
        return {
            "connections": self.open,
            "fds": fds,
            "greenlets": self._greenlets(),
            "watchers": getattr(loop, "activecnt", -1),
            "refused_full": self.refused["full"],
            "refused_per_ip": self.refused["per_ip"],
            "accept_pauses": self.server.accept_pauses,
        }

    def _greenlets(self) -> int:
        """Live greenlets in the process, a leak shows here.  Counting walks
        the heap, so the figure is reused for a second: /stats from many
        clients must not stall the hub."""
        now = self.server.loop.now()
        if self._greenlet_count is None or now - self._greenlet_count[0] > 1.0:
            self._greenlet_count = (
                now,
                sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet) and not obj.dead),
            )
        return self._greenlet_count[1]

    def stop(self):
        """Stop accepting, say goodbye to everyone, flush, close."""
        self._stopping = True
        if not self.open:
            self.all_closed.set()
        self.server.close()
        self.hub.put(events.SHUTDOWN)
        # Each connection closes once its output is flushed, or when
        # shutdown_flush_timeout has passed; a second of slack on top.
        budget = self.config.shutdown_flush_timeout + 1.0
        self.hub.stopped.wait(budget)
        self.all_closed.wait(budget)
        # The HTTP ports answered through the drain (/healthz: 503); now
        # they go too.
        for port in self.web_ports:
            port.close()
