"""gchat under systemd's tools: the real `systemd-socket-activate` binds the
ports and starts the gchat console script on the first connection, with a
datagram socket of the test's as NOTIFY_SOCKET; `systemd-analyze` checks the
units in contrib/; and the server is run under the kernel's
memory-deny-write-execute, which gchat.service asks for.

Needs systemd's tools: `apt-get install -y systemd` (the package, not a
running systemd)."""

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from chat_client import DEFAULT_TIMEOUT, ChatClient, LoggedProcess, gchat_executable, named_client
from ws_client import WsClient, http_request

from gchat.config import Config
from gchat_bench.processes import free_port

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
UNITS = ("gchat.socket", "gchat-http.socket", "gchat.service")
EXEC_START = "ExecStart=/opt/gchat/bin/gchat"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: apt-get install -y systemd")
    return path


class NotifySocket:
    """The test's end of NOTIFY_SOCKET: a datagram socket in the abstract
    namespace (so no path length limit)."""

    def __init__(self):
        self.name = f"@gchat-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.received = []

    def expect(self, pattern, timeout=DEFAULT_TIMEOUT) -> str:
        """The next datagram that matches pattern (fully); the others are
        passed over (kept in received)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no datagram matching {pattern!r}; got {self.received}")
            self.sock.settimeout(remaining)
            try:
                text = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            self.received.append(text)
            if re.fullmatch(pattern, text):
                return text

    def within(self, seconds: float) -> list:
        """Datagrams that arrive within seconds (to check that something does
        NOT happen, never to wait for something)."""
        deadline = time.monotonic() + seconds
        got = []
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                got.append(self.sock.recv(4096).decode())
            except socket.timeout:
                break
        self.received += got
        return got

    def close(self):
        self.sock.close()


class Activated(LoggedProcess):
    """systemd-socket-activate listening on free ports, named by --fdname,
    that starts the gchat console script on the first connection."""

    def __init__(self, names=("line",), setenv=(), args=(), datagram=False):
        self.notify = NotifySocket()
        self.stderr_lines = []
        for _ in range(5):
            self.ports = [free_port() for _ in names]
            argv = [tool("systemd-socket-activate")]
            if datagram:
                argv.append("--datagram")
            for port in self.ports:
                argv += ["-l", f"127.0.0.1:{port}"]
            argv += [f"--fdname={':'.join(names)}", "-E", f"NOTIFY_SOCKET={self.notify.name}"]
            for assignment in setenv:
                argv += ["-E", assignment]
            # It passes on only what -E names: the gchat under test must
            # import the same code as the rest of the tests.
            if "PYTHONPATH" in os.environ:
                argv += ["-E", "PYTHONPATH"]
            argv += [gchat_executable(), *args]
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            if self._listening(len(names)):
                break
            self.stop()
        else:
            raise RuntimeError(f"systemd-socket-activate did not listen: {self.stderr_text()}")
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.host = "127.0.0.1"
        self.port = self.ports[0]

    def _listening(self, count: int) -> bool:
        """Its "Listening on ADDR as FD." lines; False when it failed (a
        port taken since free_port)."""
        for _ in range(count):
            line = self.proc.stderr.readline().decode(errors="replace")
            self.stderr_lines.append(line)
            if not line.startswith("Listening on"):
                return False
        return True

    def _drain_stderr(self):
        for raw in self.proc.stderr:
            self.stderr_lines.append(raw.decode(errors="replace"))


@pytest.fixture
def activate():
    started = []

    def start(*args, **kw):
        activated = Activated(*args, **kw)
        started.append(activated)
        return activated

    yield start
    for activated in started:
        activated.stop()
        activated.notify.close()
        # Shown by pytest when the test failed: gchat's own account.
        print(activated.stderr_text())


def get(port, path) -> bytes:
    return http_request(
        "127.0.0.1",
        port,
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode(),
    )


# Socket activation ----------------------------------------------------------


def test_activated_line_port_serves_chat_and_says_ready(activate):
    """gchat serves the socket systemd-socket-activate bound: its own
    --port is another free port, which stays closed."""
    unused = free_port()
    server = activate(args=["--host", "127.0.0.1", "--port", str(unused)])
    # The tool starts gchat on this first connection, which waits in the
    # socket's queue meanwhile.
    alice = named_client(server.host, server.port, "alice")
    ready = server.notify.expect(r"READY=1\nSTATUS=\d+ clients?, 1 room")
    bob = named_client(server.host, server.port, "bob")
    alice.expect("bob has arrived")
    alice.say("hello, activated")
    bob.expect("alice: hello, activated")
    # STATUS= follows the count, within a status interval.
    server.notify.expect(r"STATUS=2 clients, 1 room", timeout=Config().notify_status_interval + 5)
    # ... and keeps coming every few seconds while nothing changes.
    server.notify.expect(r"STATUS=2 clients, 1 room", timeout=Config().notify_status_interval + 5)
    server.wait_for_log(r"socket activation: serving the line socket")
    server.wait_for_log(rf"gchat \S+ listening on 127\.0\.0\.1:{server.port}\b")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", unused), timeout=5)
    assert ready.startswith("READY=1\n")


def test_a_named_http_socket_is_served_too(activate):
    server = activate(names=("line", "http"))
    line_port, http_port = server.ports
    alice = named_client(server.host, line_port, "alice")
    server.notify.expect(r"READY=1\n.*")
    response = get(http_port, "/healthz")
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(b"ok")
    web = WsClient(server.host, http_port)
    web.expect(r".*name\?")
    web.say("bob")
    web.expect("You are bob")
    alice.expect("bob has arrived")
    server.wait_for_log(rf"http listening on 127\.0\.0\.1:{http_port}\b")
    server.wait_for_log(r"socket activation: serving the http, line socket")


def test_watchdog_pings_when_watchdog_usec_is_set(activate):
    server = activate(setenv=["WATCHDOG_USEC=200000"])  # a ping every 0.1 s
    named_client(server.host, server.port, "alice")
    server.notify.expect(r"READY=1\n.*")
    server.notify.expect("WATCHDOG=1")
    server.notify.expect("WATCHDOG=1")
    server.wait_for_log(r"systemd watchdog: a ping every 0\.1 s")


def test_no_watchdog_pings_without_watchdog_usec(activate):
    server = activate()
    named_client(server.host, server.port, "alice")
    server.notify.expect(r"READY=1\n.*")
    assert "WATCHDOG=1" not in server.notify.within(1.0)


def test_sigterm_says_stopping_and_exits_0(activate):
    server = activate(setenv=["WATCHDOG_USEC=200000"])
    alice = named_client(server.host, server.port, "alice")
    server.notify.expect(r"READY=1\n.*")
    server.proc.send_signal(signal.SIGTERM)
    server.notify.expect(r"STOPPING=1\nSTATUS=shutting down: closing 1 clients")
    assert alice.closed_after() == ["Server shutting down. Goodbye."]
    assert server.proc.wait(DEFAULT_TIMEOUT) == 0
    # Nothing after STOPPING=1 (what was sent is queued in our socket): no
    # more pings or status while the hub drains.
    assert server.notify.within(0.3) == []


def test_an_unknown_socket_name_is_a_clear_error(activate):
    server = activate(names=("chat",))
    client = ChatClient(server.host, server.port)
    assert client.closed_after() == []
    assert server.proc.wait(DEFAULT_TIMEOUT) == 1
    server.wait_for_log(r"cannot start: socket 3 is named 'chat'")
    assert server.notify.within(0.2) == []  # never READY=1


def test_a_datagram_socket_is_a_clear_error(activate):
    server = activate(datagram=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"hello\n", (server.host, server.port))
    assert server.proc.wait(DEFAULT_TIMEOUT) == 1
    server.wait_for_log(r"cannot start: descriptor 3 \(line\) is not a listening stream socket")


# The units -------------------------------------------------------------------


def unit_lines(text: str) -> list:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def settings(path: Path, key: str) -> list:
    return [
        line.split("=", 1)[1]
        for line in unit_lines(path.read_text())
        if line.split("=", 1)[0] == key
    ]


@pytest.fixture
def units(tmp_path) -> Path:
    """A copy of contrib's units whose ExecStart= is the test venv's gchat
    (systemd-analyze verify checks that the program exists); every other
    line is the same."""
    for name in UNITS:
        text = (CONTRIB / name).read_text()
        if name == "gchat.service":
            assert text.count(EXEC_START + "\n") == 1
            text = text.replace(EXEC_START + "\n", f"ExecStart={gchat_executable()}\n")
        (tmp_path / name).write_text(text)
    for name in UNITS:
        original = (CONTRIB / name).read_text().splitlines()
        copy = (tmp_path / name).read_text().splitlines()
        differ = [(a, b) for a, b in zip(original, copy) if a != b]
        assert len(original) == len(copy)
        assert differ == (
            [(EXEC_START, f"ExecStart={gchat_executable()}")] if name == "gchat.service" else []
        )
    return tmp_path


def test_units_verify_without_a_warning(units):
    result = subprocess.run(
        [tool("systemd-analyze"), "verify", *(str(units / name) for name in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_units_are_wired_by_name():
    """The sockets start gchat.service and name their descriptors as
    gchat/systemd.py expects; the service takes both and is Type=notify."""
    socket_unit, http_unit, service = (CONTRIB / name for name in UNITS)
    assert settings(socket_unit, "ListenStream") == ["8000"]
    assert settings(socket_unit, "FileDescriptorName") == ["line"]
    assert settings(http_unit, "ListenStream") == ["8080"]
    assert settings(http_unit, "FileDescriptorName") == ["http"]
    for unit in (socket_unit, http_unit):
        assert settings(unit, "Service") == ["gchat.service"]
    assert settings(service, "Sockets") == ["gchat.socket gchat-http.socket"]
    assert settings(service, "Type") == ["notify"]
    assert settings(service, "NotifyAccess") == ["main"]
    assert settings(service, "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert settings(service, "MemoryDenyWriteExecute") == ["yes"]
    assert settings(service, "ExecStart") == ["/opt/gchat/bin/gchat"]


def test_service_sandboxing_stays_tight(units):
    """systemd's own score of the sandbox (0 best, 10 worst): at most 2.0
    (1.5 now); dropping a protection pushes it over."""
    result = subprocess.run(
        [
            tool("systemd-analyze"),
            "security",
            "--offline=true",
            "--threshold=20",
            str(units / "gchat.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


# MemoryDenyWriteExecute=yes ---------------------------------------------------

MDWE_WRAPPER = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
# PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: kept across fork and execve.
if libc.prctl(65, 1, 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.fixture
def mdwe_wrapper(tmp_path) -> list:
    """A command prefix that runs a program under the kernel's
    memory-deny-write-execute (Linux 6.3+), the equivalent of the unit's
    MemoryDenyWriteExecute=yes; checked to be in force after execve."""
    try:
        if ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) < 0:  # PR_GET_MDWE
            pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    except AttributeError:
        pytest.skip("no prctl")
    wrapper = tmp_path / "mdwe.py"
    wrapper.write_text(MDWE_WRAPPER)
    prefix = [sys.executable, str(wrapper)]
    probe = subprocess.run(
        prefix
        + [
            sys.executable,
            "-c",
            "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE"
            " | mmap.PROT_EXEC)",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe.stderr
    return prefix


def test_serves_under_memory_deny_write_execute(start_gchat, mdwe_wrapper):
    """gevent's loop, greenlet, the line port, HTTP and a WebSocket, with no
    writable-and-executable memory."""
    server = start_gchat("--http", "0", command=mdwe_wrapper + [gchat_executable()])
    alice = server.named("alice")
    web = WsClient(server.host, server.http_port)
    web.expect(r".*name\?")
    web.say("bob")
    web.expect("You are bob")
    alice.expect("bob has arrived")
    alice.say("no jit here")
    web.expect("alice: no jit here", skip=True)
    assert get(server.http_port, "/").startswith(b"HTTP/1.1 200")
    assert get(server.http_port, "/metrics").startswith(b"HTTP/1.1 200")
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
