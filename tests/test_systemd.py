"""gchat/systemd.py without systemd: the LISTEN_* parsing, the sd_notify
message format, the watchdog's variables, the Notifier over a real unix
datagram socket, and the watchdog ping's going through the hub's loop (a
stalled hub stops the pings while the event loop runs on)."""

import os
import socket
import threading
import time
import uuid

import pytest

from gchat import systemd
from gchat.systemd import ActivationError, parse_listen_fds

PID = 4242


def env(fds, names=None, pid=PID):
    environ = {"LISTEN_FDS": str(fds), "LISTEN_PID": str(pid)}
    if names is not None:
        environ["LISTEN_FDNAMES"] = names
    return environ


# LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES ------------------------------------


def test_no_variables_no_sockets():
    assert parse_listen_fds({}, PID) == {}
    assert parse_listen_fds({"LISTEN_FDS": "1"}, PID) == {}
    assert parse_listen_fds({"LISTEN_PID": str(PID)}, PID) == {}


def test_variables_of_another_process_are_ignored():
    """A parent's LISTEN_* inherited by mistake: its descriptors are not ours."""
    assert parse_listen_fds(env(1, "line", pid=PID + 1), PID) == {}


def test_zero_sockets():
    assert parse_listen_fds(env(0), PID) == {}


@pytest.mark.parametrize("names", [None, "unknown", "gchat.socket", "line"])
def test_a_single_socket_unnamed_or_named_line_is_the_line_port(names):
    """Unnamed (systemd-socket-activate without --fdname), "unknown" (what
    sd_listen_fds_with_names(3) calls an unnamed one), the socket unit's own
    name (systemd's default FileDescriptorName=), or "line"."""
    assert parse_listen_fds(env(1, names), PID) == {"line": 3}


def test_named_sockets_from_descriptor_3_on():
    assert parse_listen_fds(env(3, "line:http:admin"), PID) == {"line": 3, "http": 4, "admin": 5}
    assert parse_listen_fds(env(2, "http:line"), PID) == {"http": 3, "line": 4}


def test_an_unnamed_socket_beside_named_ones_is_the_line_port():
    assert parse_listen_fds(env(2, "http:gchat.socket"), PID) == {"http": 3, "line": 4}


@pytest.mark.parametrize(
    "environ, complaint",
    [
        (env(1, "chat"), r"socket 3 is named 'chat'.*line, http, admin"),
        (env(2, "line:metrics"), r"socket 4 is named 'metrics'"),
        (env(2, "line:line"), r"two sockets named 'line' \(descriptors 3 and 4\)"),
        (env(2), r"sockets 3 \(unknown\), 4 \(unknown\) have no name"),
        (env(2, "line:unknown"), r"sockets 4 \(unknown\) have no name"),
        (env(2, "line"), r"names 1 sockets but LISTEN_FDS=2"),
        (env(1, "line:http"), r"names 2 sockets but LISTEN_FDS=1"),
        ({"LISTEN_FDS": "two", "LISTEN_PID": str(PID)}, r"not numbers"),
        ({"LISTEN_FDS": "1", "LISTEN_PID": "self"}, r"not numbers"),
        (env(-1), r"negative"),
    ],
)
def test_bad_activation_is_a_clear_error(environ, complaint):
    with pytest.raises(ActivationError, match=complaint):
        parse_listen_fds(environ, PID)


def test_an_activation_error_is_a_value_error():
    """run() reports ValueErrors from setting up as "cannot start: ..."."""
    assert issubclass(ActivationError, ValueError)


@pytest.mark.parametrize(
    "environ",
    [
        env(1, "line", pid=PID + 1),
        env(1, "chat", pid=PID + 1),
        {"LISTEN_FDS": "0", "LISTEN_PID": str(PID), "LISTEN_FDNAMES": ""},
    ],
)
def test_listen_sockets_unsets_the_variables(environ):
    """As sd_listen_fds(1): whatever they said, no child inherits them."""
    environ = dict(environ, PATH="/usr/bin")
    assert systemd.listen_sockets(environ, pid=PID) == {}
    assert environ == {"PATH": "/usr/bin"}


def test_listen_sockets_unsets_the_variables_on_error_too():
    environ = env(1, "chat")
    with pytest.raises(ActivationError):
        systemd.listen_sockets(environ, pid=PID)
    assert environ == {}


# sd_notify messages -----------------------------------------------------------


def test_message_format():
    assert (
        systemd.message(("READY", 1), ("STATUS", "3 clients, 2 rooms"))
        == b"READY=1\nSTATUS=3 clients, 2 rooms"
    )
    assert systemd.message(("WATCHDOG", 1)) == b"WATCHDOG=1"
    assert (
        systemd.message(("STOPPING", 1), ("STATUS", "shutting down: closing 0 clients"))
        == b"STOPPING=1\nSTATUS=shutting down: closing 0 clients"
    )
    assert systemd.message(("STATUS", "café")) == "STATUS=café".encode()


@pytest.mark.parametrize(
    "fields",
    [
        [("STATUS", "two\nlines")],
        [("READY=1\nSTATUS", "x")],
        [("ready", 1)],
        [("", 1)],
    ],
)
def test_message_refuses_what_would_be_another_assignment(fields):
    with pytest.raises(ValueError):
        systemd.message(*fields)


@pytest.mark.parametrize(
    "clients, rooms, text",
    [
        (0, 1, "0 clients, 1 room"),
        (1, 1, "1 client, 1 room"),
        (2, 3, "2 clients, 3 rooms"),
        (10000, 0, "10000 clients, 0 rooms"),
    ],
)
def test_status_text(clients, rooms, text):
    assert systemd.status_text(clients, rooms) == text


@pytest.mark.parametrize(
    "value, address",
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@gchat/notify", "\0gchat/notify"),
        ("", None),
        (None, None),
        ("vsock:2:1234", None),
    ],
)
def test_notify_address(value, address):
    assert systemd.notify_address(value) == address


@pytest.mark.parametrize(
    "environ, interval",
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(PID)}, 0.5),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(PID + 1)}, None),
        ({"WATCHDOG_USEC": "", "WATCHDOG_PID": str(PID)}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_our_pid(environ, interval):
    assert systemd.watchdog_interval(environ, PID) == interval


@pytest.mark.parametrize(
    "environ",
    [
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "me"},
    ],
)
def test_bad_watchdog_variables_are_errors(environ):
    with pytest.raises(ValueError):
        systemd.watchdog_interval(environ, PID)


# The Notifier over real sockets ----------------------------------------------


@pytest.fixture
def receiver():
    """A datagram socket in the abstract namespace, as NOTIFY_SOCKET names it."""
    name = f"@gchat-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(systemd.notify_address(name))
    sock.settimeout(10)
    yield name, sock
    sock.close()


def test_notifier_sends_to_an_abstract_socket(receiver):
    name, sock = receiver
    notifier = systemd.Notifier(systemd.notify_address(name))
    notifier.ready("0 clients, 1 room")
    assert sock.recv(4096) == b"READY=1\nSTATUS=0 clients, 1 room"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.stopping("shutting down: closing 2 clients")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=shutting down: closing 2 clients"
    assert (notifier.sent, notifier.failed) == (3, 0)
    notifier.close()


def test_notifier_sends_to_a_path():
    # In /tmp, not tmp_path: a unix socket's path is limited to 107 bytes.
    path = f"/tmp/gchat-notify-{uuid.uuid4().hex[:12]}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        sock.settimeout(10)
        notifier = systemd.Notifier(systemd.notify_address(path))
        notifier.ready("1 client, 1 room")
        assert sock.recv(4096) == b"READY=1\nSTATUS=1 client, 1 room"
        notifier.close()
    finally:
        sock.close()
        os.unlink(path)


def test_status_is_sent_each_time_with_the_counts(receiver):
    name, sock = receiver
    notifier = systemd.Notifier(systemd.notify_address(name))
    notifier.ready("0 clients, 1 room")
    notifier.status("0 clients, 1 room")
    notifier.status("1 client, 2 rooms")
    got = [sock.recv(4096) for _ in range(3)]
    assert got == [
        b"READY=1\nSTATUS=0 clients, 1 room",
        b"STATUS=0 clients, 1 room",
        b"STATUS=1 client, 2 rooms",
    ]
    assert received_within(sock, 0.2) == []  # and nothing more
    notifier.close()


def test_a_missing_notify_socket_is_logged_not_raised(caplog):
    notifier = systemd.Notifier(systemd.notify_address(f"@gchat-nobody-{uuid.uuid4().hex}"))
    notifier.ready("0 clients, 1 room")
    notifier.watchdog()
    assert (notifier.sent, notifier.failed) == (0, 2)
    assert "sd_notify" in caplog.text
    notifier.close()


def test_without_notify_socket_nothing_is_sent():
    notifier = systemd.Notifier(systemd.notify_address(None))
    assert not notifier.enabled
    notifier.ready("x")
    notifier.stopping()
    assert (notifier.sent, notifier.failed) == (0, 0)


# The watchdog ping goes through the hub --------------------------------------


@pytest.fixture
def attached_server(receiver):
    """A ChatServer in a thread with its own gevent loop, attached with
    WATCHDOG_USEC=100000 (a ping every 0.05 s); yields (server, call)
    where call(fn) runs fn in the server's loop (thread-safe)."""
    import gevent
    from gevent.event import Event

    from gchat.config import Config
    from gchat.server import ChatServer

    name, _ = receiver
    ready = threading.Event()
    box = {}

    def serve():
        server = ChatServer(Config(host="127.0.0.1", port=0))
        server.start()
        stop = Event()
        loop = gevent.get_hub().loop
        calls = []

        def run_calls():
            while calls:
                calls.pop(0)()

        wake = loop.async_()
        wake.start(run_calls)
        notifier = systemd.attach(server, {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "100000"})
        box.update(server=server, wake=wake, calls=calls, stop=stop, notifier=notifier)
        ready.set()
        stop.wait()
        notifier.stopping()
        server.stop()
        notifier.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)

    def call(fn):
        box["calls"].append(fn)
        box["wake"].send()

    yield box["server"], call
    call(box["stop"].set)
    thread.join(10)
    assert not thread.is_alive()


def recv_until(sock, wanted: bytes, deadline=10.0) -> list:
    """Datagrams until one equal to wanted (inclusive)."""
    sock.settimeout(deadline)
    got = []
    while not got or got[-1] != wanted:
        got.append(sock.recv(4096))
    return got


def received_within(sock, seconds: float) -> list:
    """Every datagram that arrives within seconds (to check that something
    does NOT happen; never to wait for something)."""
    deadline = time.monotonic() + seconds
    got = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return got
        sock.settimeout(remaining)
        try:
            got.append(sock.recv(4096))
        except socket.timeout:
            return got


def test_watchdog_pings_stop_while_the_hub_is_stalled(receiver, attached_server):
    """The loop runs on (its timers fire) but the hub's greenlet waits on
    something: no WATCHDOG=1, and the requests do not pile up in its inbox.
    Once the hub moves again, so do the pings."""
    from gevent.event import Event

    from gchat import events

    _, sock = receiver
    server, call = attached_server
    assert recv_until(sock, b"READY=1\nSTATUS=0 clients, 1 room")[-1].startswith(b"READY=1")
    recv_until(sock, b"WATCHDOG=1")
    recv_until(sock, b"WATCHDOG=1")

    stalled = {}

    def stall():  # in the server's loop
        stalled["event"] = Event()
        # Handled by the hub like a ping request, but it waits: the hub is stuck.
        server.hub.put(events.WATCHDOG, payload=stalled["event"].wait)

    call(stall)
    # A ping requested before the stall may still come; then silence for
    # ten intervals, although the loop's timer fires all the while.
    late = received_within(sock, 0.5)
    assert late in ([], [b"WATCHDOG=1"])
    assert server.hub.inbox.qsize() == 1  # one request waits; no pile

    call(lambda: stalled["event"].set())
    recv_until(sock, b"WATCHDOG=1", deadline=5)
    recv_until(sock, b"WATCHDOG=1", deadline=5)
