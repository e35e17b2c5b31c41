"""Test helpers: a line-oriented client over a real socket, and a running
`gchat` console script.  Every wait has a deadline; nothing sleeps to
synchronise."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

DEFAULT_TIMEOUT = 10.0


class LineExpectations:
    """expect() and lines() for any client with line(timeout) and a
    default timeout (ChatClient; ws_client.WsClient)."""

    def lines(self, count, timeout=None) -> list:
        deadline = time.monotonic() + (timeout or self.timeout)
        return [self.line(max(deadline - time.monotonic(), 0.001)) for _ in range(count)]

    def expect(self, pattern, timeout=None, skip=False) -> str:
        """The next line, which must match pattern (a regex, fully); with
        skip, lines before the first match are passed over."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            line = self.line(max(deadline - time.monotonic(), 0.001))
            if re.fullmatch(pattern, line):
                return line
            if not skip:
                raise AssertionError(f"expected {pattern!r}, got {line!r}")


class ChatClient(LineExpectations):
    """A blocking TCP client that reads whole lines, with deadlines."""

    def __init__(self, host, port, timeout=DEFAULT_TIMEOUT, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.timeout = timeout
        self.buffer = b""
        self.raw = b""  # every byte received, for byte-exact checks
        self.eof = False

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def send(self, text):
        data = text if isinstance(text, bytes) else text.encode()
        self.sock.sendall(data)

    def say(self, line: str):
        self.send(line + "\n")

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no line within the deadline; buffered {self.buffer[-300:]!r}")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(
                f"no line within the deadline; buffered {self.buffer[-300:]!r}"
            ) from None
        if not data:
            self.eof = True
            raise EOFError(f"connection closed; buffered {self.buffer!r}")
        self.buffer += data
        self.raw += data

    def line(self, timeout=None) -> str:
        """The next line, without its "\\n"."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\n" not in self.buffer:
            self._fill(deadline)
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8")

    def closed_after(self, timeout=None) -> list:
        """Read until the server closes the connection; the lines read."""
        deadline = time.monotonic() + (timeout or self.timeout)
        lines = []
        while True:
            try:
                lines.append(self.line(max(deadline - time.monotonic(), 0.001)))
            except EOFError:
                if self.buffer:
                    lines.append(self.buffer.decode())
                return lines
            except ConnectionResetError:
                return lines

    def quiet(self, duration=0.2) -> bool:
        """True when nothing arrives for duration seconds (used only to check
        that something did NOT happen, never to wait for something)."""
        if self.buffer:
            return False
        self.sock.settimeout(duration)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True
        self.buffer += data
        self.raw += data
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def named_client(host, port, name, **kw) -> ChatClient:
    """A client that has joined under name; its greeting has been read."""
    client = ChatClient(host, port, **kw)
    client.expect(r".*name\?")
    client.say(name)
    client.expect(f"You are {re.escape(name)}")
    client.expect(r"(Also here|Nobody else).*")
    return client


class LoggedProcess:
    """A subprocess whose stderr lines are kept (self.proc, self.stderr_lines):
    wait for a log line with a deadline, stop it with SIGTERM."""

    def stderr_text(self) -> str:
        return "".join(self.stderr_lines)

    def wait_for_log(self, pattern, timeout=DEFAULT_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            lines = self.stderr_lines
            for line in lines[seen:]:
                if re.search(pattern, line):
                    return line
            seen = len(lines)
            time.sleep(0.02)  # polling a log we do not control; bounded by deadline
        raise TimeoutError(f"no log line matching {pattern!r}:\n{self.stderr_text()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class GchatProcess(LoggedProcess):
    """The `gchat` console script, started on a free port."""

    def __init__(self, *args, command=None, env=None):
        self.argv = (command or [gchat_executable()]) + [
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *args,
        ]
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.stderr_lines = []
        self._listening = threading.Event()
        self.port = None
        self.http_port = None  # --http's port, from its log line
        self.admin_port = None  # --admin's
        drain = threading.Thread(target=self._drain_stderr, daemon=True)
        drain.start()
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        deadline = time.monotonic() + 20
        while not self._listening.wait(0.1):
            # A process that exited will never listen: say so at once.
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                drain.join(2)  # its last lines, for the message
                raise RuntimeError(f"gchat did not start: {self.stderr_text()}")
        self.host = "127.0.0.1"

    def _drain_stderr(self):
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.stderr_lines.append(line)
            http = re.search(r"(http|admin) listening on (\S+):(\d+)", line)
            if http:
                setattr(self, f"{http.group(1)}_port", int(http.group(3)))
                continue
            match = re.search(r"listening on (\S+):(\d+)", line)
            if match and self.port is None:
                self.port = int(match.group(2))
                self._listening.set()

    def client(self, **kw) -> ChatClient:
        return ChatClient(self.host, self.port, **kw)

    def named(self, name, **kw) -> ChatClient:
        return named_client(self.host, self.port, name, **kw)

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait(self, timeout=DEFAULT_TIMEOUT) -> int:
        return self.proc.wait(timeout)


def gchat_executable() -> str:
    """The installed console script next to this Python."""
    path = os.path.join(os.path.dirname(sys.executable), "gchat")
    if not os.path.exists(path):
        raise RuntimeError(f"{path} not found: install the project (pip install '.[test]')")
    return path
