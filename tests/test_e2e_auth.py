"""Signing in with tokens end to end (issue 19): the gchat console script
with --auth-key (a shared secret, or an RSA public key), real sockets over
TCP and WebSocket, tokens made by PyJWT."""

import re
import subprocess
import time

import jwt
import pytest
from chat_client import gchat_executable
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from ws_client import WsClient

HOST = "127.0.0.1"
SECRET = "the application's backend and gchat share this secret, 48 bytes"
PROMPT = "Welcome to gchat. Sign in with /auth TOKEN."


def token(sub="alice", ttl=600.0, key=SECRET, alg="HS256", **claims):
    return jwt.encode({"sub": sub, "exp": time.time() + ttl, **claims}, key, alg)


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "auth.key"
    path.write_text(f"  {SECRET}\n")
    return str(path)


@pytest.fixture
def signed(start_gchat, secret_file):
    """signed(*args): a gchat with --auth-key (the shared secret)."""

    def start(*args):
        return start_gchat("--auth-key", secret_file, *args)

    return start


def sign_in(server, sub="alice", **kw):
    client = server.client()
    client.expect(re.escape(PROMPT))
    client.say(f"/auth {token(sub, **kw)}")
    client.expect(f"You are {sub}")
    return client


def test_a_client_signs_in_with_its_token_and_is_named_by_it(signed):
    server = signed()
    client = server.client()
    client.expect(re.escape(PROMPT))
    client.say("alice")  # a name is no sign-in: an error, and the prompt stands
    client.expect("error: sign in first: /auth TOKEN")
    client.say(f"/auth {token('alice')}")
    client.expect("You are alice")
    client.expect("Nobody else is here.")
    bob = sign_in(server, "bob")
    bob.expect(r"Also here \(1\): alice")
    client.expect("bob has arrived")
    bob.say("hello")
    client.expect("bob: hello")


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: token(ttl=-120), "expired"),
        (lambda: token(nbf=time.time() + 300), "not yet valid"),
        (lambda: token(key="another secret, of another backend, 48 bytes long"), "bad signature"),
        (
            lambda: jwt.encode({"sub": "alice", "exp": time.time() + 60}, None, "none"),
            "bad signature",
        ),
        (lambda: "not.a.token", "malformed"),
        (lambda: jwt.encode({"sub": "alice"}, SECRET, "HS256"), "missing claim exp"),
        (lambda: jwt.encode({"exp": time.time() + 60}, SECRET, "HS256"), "missing claim sub"),
        (lambda: token(sub="not a name"), "invalid name"),
    ],
)
def test_a_refused_token_gets_one_line_and_the_connection_closes(signed, make, reason):
    server = signed()
    client = server.client()
    client.expect(re.escape(PROMPT))
    client.say(f"/auth {make()}")
    assert client.closed_after(5) == [f"error: authentication failed: {reason}"]
    log = server.wait_for_log(f"sign-in from 127.0.0.1 refused: {re.escape(reason)}")
    assert "eyJ" not in log  # never the token


def test_failed_sign_ins_from_one_address_are_throttled(signed):
    server = signed("--auth-failures", "3")
    for _ in range(3):
        client = server.client()
        client.expect(re.escape(PROMPT))
        client.say("/auth garbage")
        client.closed_after(5)
    late = server.client()
    late.expect(re.escape(PROMPT))
    late.say(f"/auth {token()}")  # valid, but not even looked at
    assert late.closed_after(5) == ["error: too many failed sign-ins; try later"]


def test_an_expired_token_must_be_renewed_in_time(signed):
    server = signed("--auth-leeway", "0", "--auth-refresh", "2")
    bob = sign_in(server, "bob")
    alice = sign_in(server, "alice", ttl=1.5)
    bob.expect("alice has arrived", skip=True)
    alice.expect(r"error: token expired; send /auth TOKEN within 2 s", skip=True, timeout=5)
    alice.say("still here?")
    alice.expect(r"error: token expired; send /auth TOKEN within [0-2] s")
    alice.say(f"/auth {token('bob')}")
    alice.expect("error: a fresh token must be for alice")
    alice.say(f"/auth {token('alice')}")
    alice.expect("token accepted")
    alice.say("renewed")
    bob.expect("alice: renewed")
    # Without a fresh one: out, and the room is told why.
    carol = sign_in(server, "carol", ttl=1.5)
    bob.expect("carol has arrived")
    assert "error: token expired; disconnecting" in carol.closed_after(8)
    bob.expect(r"carol has left \(token expired\)")


def test_the_same_sub_twice_takes_the_name_over_and_nobody_sees_it(signed):
    server = signed()
    bob = sign_in(server, "bob")
    first = sign_in(server, "alice")
    bob.expect("alice has arrived", skip=True)
    second = sign_in(server, "alice")
    second.expect(r"Also here \(1\): bob")
    assert first.closed_after(5)[-1:] == ["error: signed in elsewhere"]
    second.say("on my phone now")
    assert bob.line() == "alice: on my phone now"  # no departure, no arrival


def test_rooms_by_claim(signed):
    server = signed("--rooms-policy", "claims")
    alice = sign_in(server, "alice", rooms=["team-*", "#Ops"])
    for room in ("team-blue", "ops", "secret"):
        bob = sign_in(server, f"bob{len(room)}", rooms=["*"])
        bob.say(f"/join {room}")
        bob.expect(f"You are now in #{room}", skip=True)
    alice.say("/rooms")
    listed = alice.expect(r"Rooms \(.*", skip=True)
    assert "secret" not in listed and "team-blue" in listed and "ops" in listed
    alice.say("/join secret")
    alice.expect("error: you may not enter #secret", skip=True)
    alice.say("/join team-blue")
    alice.expect("You are now in #team-blue", skip=True)
    nobody = sign_in(server, "nora")  # no rooms claim: the lobby alone
    nobody.say("/join ops")
    nobody.expect("error: you may not enter #ops", skip=True)


def test_a_websocket_client_signs_in_with_its_first_frame(signed):
    server = signed("--http", "0")
    page = WsClient(HOST, server.http_port)
    page.expect(re.escape(PROMPT))
    page.say(f"/auth {token('alice')}")
    page.expect("You are alice")


def test_an_rsa_public_key_verifies_rs256_and_refuses_the_confusion(start_gchat, tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "auth.pem"
    path.write_bytes(pem)
    server = start_gchat("--auth-key", str(path))
    client = server.client()
    client.expect(re.escape(PROMPT))
    client.say(f"/auth {token('alice', key=private, alg='RS256')}")
    client.expect("You are alice")
    other = server.client()
    other.expect(re.escape(PROMPT))
    other.say(f"/auth {token('mallory', key=SECRET)}")  # HS256: not for this key
    assert other.closed_after(5) == ["error: authentication failed: bad signature"]


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--auth-key", "/nonexistent/auth.key"], "--auth-key /nonexistent/auth.key"),
        (["--rooms-policy", "claims"], "rooms_policy claims needs auth_key"),
    ],
)
def test_a_bad_sign_in_setup_stops_at_start_with_one_line(args, problem):
    result = subprocess.run(
        [gchat_executable(), "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert problem in result.stderr


def test_the_same_sub_moves_across_nodes_and_a_resume_there_asks_for_the_token(
    start_gchat, secret_file, redis_server
):
    from test_e2e_cluster import FAST
    from test_e2e_sessions import reset, start_session

    a, b = (
        start_gchat("--redis", redis_server.url, *FAST, "--auth-key", secret_file) for _ in range(2)
    )
    alice = sign_in(a, "alice")
    token_of_session = start_session(alice)
    bob = sign_in(b, "bob")
    bob.expect(r"Also here \(1\): alice")
    # The same sub signs in on the other node: it takes the name and its
    # place over there; the first connection is told, and nobody sees it.
    twin = b.client()
    twin.expect(re.escape(PROMPT))
    twin.say(f"/auth {token('alice')}")
    twin.expect("You are alice")
    twin.expect(r"Also here \(1\): bob")
    assert alice.closed_after(5)[-1] == "error: signed in elsewhere"
    twin.say("moved over")
    assert bob.line() == "alice: moved over"  # no departure, no arrival before it
    bob.say("/who")
    bob.expect(r"Here now \(2\): bob, alice")
    # Its session ended with the first connection: the token is no more.
    late = a.client()
    late.expect(re.escape(PROMPT))
    late.say(f"/resume {token_of_session} -")
    late.expect("error: cannot resume: unknown or expired session")
    alice = twin
    token_of_session = start_session(alice)
    reset(alice)
    back = a.client()  # the session's node is b now: a resume on a
    back.expect(re.escape(PROMPT))
    back.say(f"/resume {token_of_session} -")
    back.expect(r"resumed alice #lobby \d+", skip=True)
    back.expect(r"error: token expired; send /auth TOKEN within \d+ s", skip=True)
    back.say("hello")  # nothing but /auth until then
    back.expect(r"error: token expired; send /auth TOKEN within \d+ s")
    back.say(f"/auth {token('alice')}")
    back.expect("token accepted")
    back.say("hello")
    bob.expect("alice: hello", skip=True)
