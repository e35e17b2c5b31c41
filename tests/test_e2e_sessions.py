"""Sessions end to end (issue 18), one gchat process: real sockets over
TCP, TLS and WebSocket, a dropped connection resumed with exactly what it
missed, a half-open connection taken over, the window's end, SIGTERM, and
netcat users untouched."""

import re
import signal
import socket
import struct

from chat_client import ChatClient, named_client
from test_e2e_tls import TlsClient, pki  # noqa: F401  (the fixture)
from ws_client import WsClient

HOST = "127.0.0.1"
TAGGED = re.compile(r"@(\S+) (.*)")


def start_session(client) -> str:
    client.say("/session")
    return client.expect(r"session [A-Za-z0-9_-]{22,}", skip=True).split()[1]


def tagged(client, text) -> str:
    """The next line, which must be text with an id; returns the id."""
    line = client.line()
    match = TAGGED.fullmatch(line)
    assert match and match.group(2) == text, line
    return match.group(1)


def reset(client):
    """Drop the connection as a dying network does: a reset, no goodbye."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def resume(client, token, last):
    client.expect(r".*name\?")
    client.say(f"/resume {token} {last}")


def test_a_dropped_tcp_client_resumes_with_every_missed_line_once(gchat):
    alice, bob = gchat.named("alice"), gchat.named("bob")
    alice.expect("bob has arrived")
    token = start_session(alice)
    bob.say("one")
    last = tagged(alice, "bob: one")
    reset(alice)
    bob.expect("bob: one")
    for text in ("two", "three", "four"):
        bob.say(text)
        bob.expect(f"bob: {text}")  # handled before the resume comes
    back = gchat.client()
    resume(back, token, last)
    back.expect("resumed alice #lobby 3")
    ids = [tagged(back, f"bob: {text}") for text in ("two", "three", "four")]
    assert len(set(ids + [last])) == 4
    bob.say("five")
    tagged(back, "bob: five")
    back.say("back again")
    bob.say("/who")
    # bob saw neither a departure nor an arrival: his own line, alice's,
    # then the roster with alice in it.
    assert [bob.line() for _ in range(2)] == ["bob: five", "alice: back again"]
    assert bob.line() == "Here now (2): bob, alice"


def test_the_name_is_reserved_while_away_and_freed_when_the_window_ends(start_gchat):
    server = start_gchat("--resume-window", "1")
    alice, bob = server.named("alice"), server.named("bob")
    token = start_session(alice)
    reset(alice)
    taker = server.client()
    taker.expect(r".*name\?")
    taker.say("alice")
    taker.expect("error: the name alice is taken")
    bob.expect("alice has left \\(connection lost\\)", timeout=5)
    late = server.client()
    resume(late, token, "-")
    late.expect("error: cannot resume: unknown or expired session")
    late.expect("What is your name\\?")
    late.say("alice")
    late.expect("You are alice")


def test_a_half_open_connection_is_taken_over(gchat):
    alice, bob = gchat.named("alice"), gchat.named("bob")
    alice.expect("bob has arrived")
    token = start_session(alice)
    bob.say("hi")
    last = tagged(alice, "bob: hi")
    bob.say("meanwhile")
    tagged(alice, "bob: meanwhile")
    bob.expect("bob: hi")
    bob.expect("bob: meanwhile")
    back = gchat.client()
    resume(back, token, last)
    back.expect("resumed alice #lobby 1")
    tagged(back, "bob: meanwhile")
    assert alice.closed_after(5) == ["error: resumed elsewhere"]
    assert bob.quiet(), "the room saw something of the takeover"


def test_a_netcat_user_without_session_leaves_at_once(gchat):
    alice, bob = gchat.named("alice"), gchat.named("bob")
    alice.expect("bob has arrived")
    reset(alice)
    bob.expect("alice has left \\(connection lost\\)")


def test_sigterm_tells_session_clients_to_resume_elsewhere(gchat):
    alice, bob = gchat.named("alice"), gchat.named("bob")
    start_session(alice)
    gchat.signal(signal.SIGTERM)
    assert alice.closed_after(10)[-1] == "server stopping; resume elsewhere"
    assert bob.closed_after(10)[-1] == "Server shutting down. Goodbye."


def test_resume_over_websocket(start_gchat):
    server = start_gchat("--http", "0")
    bob = named_client(HOST, server.port, "bob")
    page = WsClient(HOST, server.http_port)
    page.expect(r".*name\?")
    page.say("carol")
    page.expect("You are carol")
    page.expect("Also here.*")
    token = start_session(page)
    bob.say("over tcp")
    last = tagged(page, "bob: over tcp")
    page.sock.close()
    bob.expect("bob: over tcp", skip=True)
    bob.say("while the page was away")
    bob.expect("bob: while the page was away")
    again = WsClient(HOST, server.http_port)
    resume(again, token, last)
    again.expect("resumed carol #lobby 1")
    tagged(again, "bob: while the page was away")


def test_resume_over_tls(start_gchat, pki):  # noqa: F811  (the fixture)
    server = start_gchat("--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]))
    alice = TlsClient(server.port, pki["ca"]).named("alice")
    bob = TlsClient(server.port, pki["ca"]).named("bob")
    alice.expect("bob has arrived")
    alice.say("/session")
    token = alice.expect(r"session [A-Za-z0-9_-]{22,}").split()[1]
    bob.say("secure")
    line = alice.line()
    assert line.endswith(" bob: secure")
    last = line.split()[0][1:]
    alice.sock.close()
    bob.expect("bob: secure")
    bob.say("missed")
    bob.expect("bob: missed")
    back = TlsClient(server.port, pki["ca"])
    back.expect(r".*name\?")
    back.say(f"/resume {token} {last}")
    back.expect("resumed alice #lobby 1")
    assert back.line().endswith(" bob: missed")


def test_bad_resumes_are_errors_and_a_guessing_address_is_shut_out(start_gchat):
    server = start_gchat("--resume-failures", "3")
    client = ChatClient(HOST, server.port)
    client.expect(r".*name\?")
    client.say("/resume nonsense")
    client.expect("error: usage: /resume TOKEN ID.*")
    client.expect("What is your name\\?")
    client.say("/resume " + "A" * 32 + " -")
    client.expect("error: cannot resume: unknown or expired session")
    client.expect("What is your name\\?")
    client.say("/resume " + "B" * 32 + " 1:2:3:4")
    client.expect("error: cannot resume: unknown or expired session")
    client.expect("What is your name\\?")
    client.say("/resume " + "C" * 32 + " -")
    assert client.closed_after(5) == ["error: too many failed resumes; try later"]
    # The server goes on for everyone else.
    named_client(HOST, server.port, "dave")


def test_the_resume_storm_bench_resumes_everyone_with_nothing_lost():
    """gchat_bench.resume_storm, small: every client drops at once and
    resumes, and each owes and gets every line of its room exactly once."""
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gchat_bench.resume_storm",
            "--clients",
            "220",
            "--rooms",
            "20",
            "--rate",
            "100",
            "--warmup",
            "1",
            "--away",
            "1",
            "--settle",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["resumed"] == 200 and report["failed"] == 0
    assert report["lines_sent"] > 100
    assert (report["lost"], report["duplicated"], report["reordered"]) == (0, 0, 0)
