"""The server API end to end (issue 19): urllib against a real gchat's
--admin port with --api-key-file, one process and two nodes over Redis."""

import json
import urllib.error
import urllib.request

import pytest
from test_e2e_cluster import FAST, until

KEY = "an API key of the application's, 40 chars"


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "api.key"
    path.write_text(KEY + "\n")
    return str(path)


def call(server, method, path, body=None, key=KEY, raw=None):
    """(status, JSON answer) of one request to server's admin port."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.admin_port}{path}", data=data, method=method
    )
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, text.decode()  # not the API's: the plain 404 page


def test_publish_disconnect_and_read_rooms(start_gchat, key_file):
    server = start_gchat("--admin", "0", "--api-key-file", key_file)
    alice, mallory = server.named("alice"), server.named("mallory")
    alice.say("/join ops")
    alice.expect("You are now in #ops", skip=True)
    alice.expect("Nobody else is here.")
    status, answer = call(
        server,
        "POST",
        "/api/publish",
        {"room": "#ops", "text": "deploy finished", "as": "deploybot"},
    )
    assert (status, answer) == (200, {"room": "#ops", "members": 1})
    alice.expect("deploybot: deploy finished")
    assert call(server, "GET", "/api/rooms") == (
        200,
        {"rooms": [{"room": "#lobby", "members": 1}, {"room": "#ops", "members": 1}]},
    )
    assert call(server, "GET", "/api/rooms/ops") == (
        200,
        {"room": "#ops", "members": ["alice"], "history": ["deploybot: deploy finished"]},
    )
    status, answer = call(server, "POST", "/api/disconnect", {"name": "MALLORY", "reason": "spam"})
    assert (status, answer) == (200, {"name": "mallory", "disconnected": True})
    assert mallory.closed_after(5)[-1] == "error: kicked by api (spam)"


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("POST", "/api/publish", {"room": "#ops", "text": "x"}, 400),  # no "as"
        ("POST", "/api/publish", {"room": "#ops", "text": "x", "as": "not a name"}, 400),
        ("POST", "/api/publish", {"room": "#o p s", "text": "x", "as": "bot"}, 400),
        ("POST", "/api/publish", {"room": "#ops", "text": "a\nb", "as": "bot"}, 400),
        ("POST", "/api/publish", [1, 2], 400),
        ("POST", "/api/publish", {"room": "#nowhere", "text": "x", "as": "bot"}, 404),
        ("POST", "/api/disconnect", {"name": 7}, 400),
        ("POST", "/api/disconnect", {"name": "nobody"}, 404),
        ("GET", "/api/rooms/nowhere", None, 404),
        ("GET", "/api/publish", None, 405),
        ("GET", "/api/nothing", None, 404),
    ],
)
def test_bad_requests_get_their_status_and_an_error(
    start_gchat, key_file, method, path, body, status
):
    server = start_gchat("--admin", "0", "--api-key-file", key_file)
    got, answer = call(server, method, path, body)
    assert got == status and isinstance(answer["error"], str) and answer["error"]


def test_the_key_the_body_s_size_and_the_api_off(start_gchat, key_file):
    server = start_gchat("--admin", "0", "--api-key-file", key_file)
    assert call(server, "GET", "/api/rooms", key=None)[0] == 401
    assert call(server, "GET", "/api/rooms", key=KEY + "x")[0] == 401
    assert call(server, "POST", "/api/publish", raw=b"{" * 70000)[0] == 413
    assert call(server, "POST", "/api/publish", raw=b"{not json")[0] == 400
    off = start_gchat("--admin", "0")
    assert call(off, "GET", "/api/rooms")[0] == 404


def test_in_a_cluster_the_api_of_any_node_acts_on_the_whole_cluster(
    start_gchat, redis_server, key_file
):
    a = start_gchat("--redis", redis_server.url, *FAST, "--admin", "0", "--api-key-file", key_file)
    b = start_gchat("--redis", redis_server.url, *FAST)
    bob, mallory = b.named("bob"), b.named("mallory")
    bob.say("/join ops")
    bob.expect("You are now in #ops", skip=True)
    bob.expect("Nobody else is here.")
    # a hosts no #ops: the nodes' directories name it within a heartbeat.
    published = until(
        lambda: (
            (
                answer := call(
                    a,
                    "POST",
                    "/api/publish",
                    {"room": "ops", "text": "from the backend", "as": "bot"},
                )
            )[0]
            == 200
            and answer
        ),
        what="#ops in a's directory",
    )
    assert published == (200, {"room": "#ops", "members": 1})
    bob.expect("bot: from the backend")
    assert call(a, "GET", "/api/rooms/ops") == (
        200,
        {"room": "#ops", "members": ["bob"], "history": ["bot: from the backend"]},
    )
    status, answer = call(a, "POST", "/api/disconnect", {"name": "mallory", "reason": "spam"})
    assert (status, answer) == (200, {"name": "mallory", "disconnected": True})
    assert mallory.closed_after(5)[-1] == "error: kicked by api (spam)"
    assert call(a, "POST", "/api/disconnect", {"name": "nobody"})[0] == 404
