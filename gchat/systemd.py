"""systemd integration without libsystemd: socket activation and sd_notify.

Socket activation (sd_listen_fds(3)): systemd, or systemd-socket-activate,
binds the ports and starts gchat with them open from descriptor 3 on, and
says so in LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES.  listen_sockets()
turns them into the {"line": sock, "http": sock, "admin": sock} that
ChatServer serves instead of binding.  The parsing is pure
(parse_listen_fds); only the wrapping touches descriptors.

Notification (sd_notify(3)): with NOTIFY_SOCKET set (Type=notify), attach()
sends READY=1 once the server is serving, STATUS= with the number of clients
and rooms (what `systemctl status gchat` shows), STOPPING=1 when the stop is
requested, and WATCHDOG=1 when the unit has WatchdogSec=.  The watchdog
ping is sent by the hub's own loop (hub.WATCHDOG): a timer only asks the hub
for it, so a hub that is stuck or dead stops the pings and systemd restarts
the service, while a loop that merely ticks would not.

Without these variables every function here is a no-op, so run() calls them
unconditionally.
"""

import logging
import os
import socket
from typing import Callable, Optional

log = logging.getLogger("gchat")

# sd_listen_fds(3): the first passed descriptor is always 3.
LISTEN_FDS_START = 3
LISTEN_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
# The names ChatServer serves sockets under (FileDescriptorName= in the
# .socket unit, --fdname= for systemd-socket-activate).
ROLES = ("line", "http", "admin")
# The name sd_listen_fds_with_names(3) gives a descriptor that came without
# one; systemd's own default is the socket unit's name ("gchat.socket").
UNNAMED = "unknown"


class ActivationError(ValueError):
    """The passed sockets cannot be served as they are named or made."""


# Socket activation -----------------------------------------------------------


def parse_listen_fds(environ, pid: int) -> dict:
    """{role: descriptor} from the LISTEN_* variables, for process pid.

    Pure: reads environ only.  {} when the variables are unset or were
    meant for another process (LISTEN_PID is not pid: a parent's, inherited).
    A single socket without a name (or with systemd's default name) is the
    line port; any other name outside ROLES is an ActivationError, as are
    two sockets of one role: ChatServer serves one socket per role."""
    count_text = environ.get("LISTEN_FDS")
    pid_text = environ.get("LISTEN_PID")
    if not count_text or not pid_text:
        return {}
    try:
        listen_pid = int(pid_text)
        count = int(count_text)
    except ValueError:
        raise ActivationError(
            f"LISTEN_FDS={count_text!r} LISTEN_PID={pid_text!r}: not numbers"
        ) from None
    if listen_pid != pid:
        return {}
    if count < 0:
        raise ActivationError(f"LISTEN_FDS={count}: negative")
    names_text = environ.get("LISTEN_FDNAMES")
    names = names_text.split(":") if names_text else [UNNAMED] * count
    if len(names) != count:
        # sd_listen_fds_with_names(3) refuses this mismatch too.
        raise ActivationError(
            f"LISTEN_FDNAMES={names_text!r} names {len(names)} sockets but LISTEN_FDS={count}"
        )
    roles: dict[str, int] = {}
    unnamed = []
    for offset, name in enumerate(names):
        fd = LISTEN_FDS_START + offset
        if name in ROLES:
            if name in roles:
                raise ActivationError(
                    f"two sockets named {name!r} (descriptors {roles[name]} "
                    f"and {fd}): gchat serves one socket per name"
                )
            roles[name] = fd
        elif name == UNNAMED or name.endswith(".socket"):
            unnamed.append((fd, name))
        else:
            raise ActivationError(
                f"socket {fd} is named {name!r}: name each socket "
                f"{', '.join(ROLES)} (FileDescriptorName=)"
            )
    if unnamed:
        if len(unnamed) > 1 or "line" in roles:
            described = ", ".join(f"{fd} ({name})" for fd, name in unnamed)
            raise ActivationError(
                f"sockets {described} have no name of "
                f"{', '.join(ROLES)}: name them with FileDescriptorName= "
                "(only a lone unnamed socket is taken as the line port)"
            )
        roles["line"] = unnamed[0][0]
    return roles


def listen_sockets(environ, pid: Optional[int] = None) -> dict:
    """The listening sockets systemd passed, as {role: socket}, for
    ChatServer(config, sockets=...); {} without socket activation.

    The LISTEN_* variables are removed from environ (pass os.environ) as
    sd_listen_fds(1) does, so that no child takes our sockets for its own;
    the descriptors are made close-on-exec for the same reason."""
    pid = os.getpid() if pid is None else pid
    try:
        fds = parse_listen_fds(environ, pid)
    finally:
        for name in LISTEN_VARIABLES:
            environ.pop(name, None)
    sockets = {}
    for role, fd in sorted(fds.items(), key=lambda item: item[1]):
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as err:
            raise ActivationError(f"descriptor {fd} ({role}): {err.strerror}") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            sock.detach()
            raise ActivationError(
                f"descriptor {fd} ({role}) is not a listening stream socket "
                "(ListenStream= is needed)"
            )
        # The accept loop (server._Listener) accepts when the loop says the
        # socket is readable; a blocking socket would stall every client
        # whenever another process took the connection first.
        sock.setblocking(False)
        sockets[role] = sock
    return sockets


# sd_notify -------------------------------------------------------------------


def notify_address(value: Optional[str]):
    """The address to send to for $NOTIFY_SOCKET, or None: a path, or a
    name in the abstract namespace when it starts with "@"."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:...", which a service on this host never gets


def message(*fields) -> bytes:
    """One sd_notify datagram from (KEY, value) pairs: "KEY=value" lines."""
    lines = []
    for key, value in fields:
        value = str(value)
        if not key or not key.replace("_", "").isalnum() or key.upper() != key:
            raise ValueError(f"not a notification key: {key!r}")
        if "\n" in value:
            # A newline would start another assignment inside this one.
            raise ValueError(f"{key}= must be one line: {value!r}")
        lines.append(f"{key}={value}")
    return "\n".join(lines).encode("utf-8")


def status_text(clients: int, rooms: int) -> str:
    """STATUS= for `systemctl status`: "3 clients, 2 rooms"."""
    return f"{clients} client{'' if clients == 1 else 's'}, {rooms} room{'' if rooms == 1 else 's'}"


def watchdog_interval(environ, pid: int) -> Optional[float]:
    """Seconds between WATCHDOG=1 pings, or None when the watchdog is off:
    half of WATCHDOG_USEC (sd_watchdog_enabled(3) advises pinging at half
    the timeout), provided WATCHDOG_PID, when set, is pid.  Pure."""
    usec_text = environ.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    pid_text = environ.get("WATCHDOG_PID")
    try:
        usec = int(usec_text)
        if pid_text and int(pid_text) != pid:
            return None
    except ValueError:
        raise ValueError(
            f"WATCHDOG_USEC={usec_text!r} WATCHDOG_PID={pid_text!r}: not numbers"
        ) from None
    if usec <= 0:
        raise ValueError(f"WATCHDOG_USEC={usec}: not positive")
    return usec / 2e6


class Notifier:
    """Sends sd_notify datagrams; with no address, sends nothing."""

    def __init__(self, address=None):
        self.address = address
        self.sent = 0
        self.failed = 0
        self._sock = None
        self._timers = []
        self._ping_due = False  # a watchdog ping waits in the hub's inbox
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # Non-blocking: a full queue at systemd's end must not stall the
            # event loop; the datagram is dropped and logged instead.
            self._sock.setblocking(False)
            self._sock.set_inheritable(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto(message(*fields), self.address)
        except OSError as err:
            self.failed += 1
            # The first failure is worth a warning; the rest would repeat it
            # every Config.notify_status_interval.
            (log.warning if self.failed == 1 else log.debug)(
                "sd_notify to %r failed: %s", self.address, err
            )
            return False
        self.sent += 1
        return True

    def ready(self, status: str):
        self.send(("READY", 1), ("STATUS", status))

    def status(self, status: str):
        """STATUS=, every time: systemd shows the last one, and a status
        that keeps coming says the server keeps serving."""
        self.send(("STATUS", status))

    def watchdog(self):
        self.send(("WATCHDOG", 1))

    def watchdog_through(self, hub, interval: float):
        """WATCHDOG=1 every interval, sent by hub's own greenlet: the timer
        only asks the hub for it (hub.WATCHDOG), so a hub that is stuck or
        dead stops the pings while the event loop would tick on."""
        from gchat import events

        def ping():  # in the hub's loop, between two batches
            self._ping_due = False
            self.watchdog()

        def ask_hub():
            # One request at a time: a hub that stopped handling events
            # must not also pile requests up in its inbox.
            if not self._ping_due:
                self._ping_due = True
                hub.put(events.WATCHDOG, payload=ping)

        self.every(interval, ask_hub)

    def every(self, seconds: float, callback: Callable):
        """callback() every seconds, from the event loop, until stopping()."""
        import gevent

        timer = gevent.get_hub().loop.timer(seconds, seconds)
        timer.start(callback)
        self._timers.append(timer)

    def stopping(self, status: str = "shutting down"):
        """STOPPING=1, and no more pings or status: the hub is draining."""
        self._stop_timers()
        self.send(("STOPPING", 1), ("STATUS", status))

    def close(self):
        self._stop_timers()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _stop_timers(self):
        for timer in self._timers:
            timer.close()
        self._timers = []


def attach(server, environ=None) -> Notifier:
    """Tell systemd that server (a started ChatServer) is serving: READY=1
    with STATUS=, STATUS= every notify_status_interval, WATCHDOG=1 from the hub's
    loop when the unit has WatchdogSec=.  The returned Notifier's
    stopping() says STOPPING=1.  A no-op Notifier without NOTIFY_SOCKET."""
    environ = os.environ if environ is None else environ
    notifier = Notifier(notify_address(environ.get("NOTIFY_SOCKET")))
    if not notifier.enabled:
        return notifier
    chat = server.hub.chat

    def counts() -> str:
        return status_text(len(chat.connected), len(chat.rooms))

    notifier.ready(counts())
    notifier.every(server.config.notify_status_interval, lambda: notifier.status(counts()))
    try:
        interval = watchdog_interval(environ, os.getpid())
    except ValueError as err:
        log.warning("systemd watchdog off: %s", err)
        interval = None
    if interval is not None:
        notifier.watchdog_through(server.hub, interval)
        log.info("systemd watchdog: a ping every %.3g s", interval)
    return notifier
