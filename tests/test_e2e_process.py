"""The gchat console script as a process: --help, python -m gchat,
graceful stop on SIGTERM and SIGINT, bad arguments."""

import re
import signal
import socket
import subprocess
import sys

import pytest
from chat_client import gchat_executable

OPTIONS = [
    "--host",
    "--port",
    "--compat",
    "--idle-timeout",
    "--name-timeout",
    "--sendq",
    "--slow-policy",
    "--max-line",
    "--sndbuf",
    "--backlog",
    "--roster-limit",
    "--arrival-merge-threshold",
    "--arrival-merge-window",
    "--close-linger",
    "--flood-rate",
    "--flood-burst",
    "--max-clients",
    "--max-per-ip",
    "--shutdown-timeout",
    "--log-level",
    "--version",
]


def test_help_lists_every_option():
    out = subprocess.run(
        [gchat_executable(), "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for option in OPTIONS:
        assert option in out


def test_python_dash_m_runs_the_same_cli():
    out = subprocess.run(
        [sys.executable, "-m", "gchat", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "--slow-policy" in out


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["--slow-policy", "sometimes"], "invalid choice"),
        (["--sendq", "lots"], "not a size"),
        (["--idle-timeout", "-1"], "must not be negative"),
        (["--port", "70000"], "port must be"),
    ],
)
def test_bad_arguments_are_refused_with_a_message(args, complaint):
    result = subprocess.run([gchat_executable(), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert complaint in result.stderr


def test_port_in_use_is_a_clear_error(gchat):
    result = subprocess.run(
        [gchat_executable(), "--host", "127.0.0.1", "--port", str(gchat.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully(start_gchat, signum):
    """Stops accepting, tells every client (named or not), flushes, exits 0."""
    server = start_gchat()
    a = server.named("a")
    b = server.named("b")
    a.expect("b has arrived")
    nameless = server.client()
    nameless.line()
    server.signal(signum)
    assert a.closed_after() == ["Server shutting down. Goodbye."]
    assert b.closed_after() == ["Server shutting down. Goodbye."]
    assert nameless.closed_after() == ["Server shutting down. Goodbye."]
    assert server.wait() == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)
    assert re.search(r"shutting down", server.stderr_text())


def test_sigterm_flushes_output_already_queued(start_gchat):
    """A client that has not read for a while still gets everything queued
    for it, then the goodbye, when it reads during the shutdown."""
    server = start_gchat("--flood-rate", "0", "--sndbuf", "16384")
    lagging = server.named("lagging", rcvbuf=4096)
    sender = server.named("sender")
    pad = "y" * 500
    for seq in range(400):  # 200 KB: most of it parked in the server
        sender.say(f"{seq} {pad}")
        if seq % 20 == 19:
            sender.lines(20)
    server.signal(signal.SIGTERM)
    lines = lagging.closed_after(30)
    chat = [line for line in lines if line.startswith("sender: ")]
    assert [int(line.split()[1]) for line in chat] == list(range(400))
    assert lines[-1] == "Server shutting down. Goodbye."
    assert server.wait() == 0
