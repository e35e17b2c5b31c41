"""The web face over real sockets against the gchat console script: the
HTTP routes and their hardening, WebSocket clients in the same rooms as
TCP clients, every WebSocket close code, the Origin check, and /healthz
and /metrics (parsed with prometheus-client's own parser)."""

import re
import signal
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from ws_client import WsClient, http_request, masked_frame
from wsproto.events import Pong

HOST = "127.0.0.1"


@pytest.fixture
def web(start_gchat):
    return start_gchat("--http", "0")


def get(port, path, method="GET", extra=b""):
    raw = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n".encode()
    return http_request(HOST, port, raw + extra + b"\r\n")


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


def metrics(port) -> dict:
    """Every sample of /metrics as {(name, labels...): value}."""
    response = get(port, "/metrics")
    assert status(response) == 200
    samples = {}
    for family in text_string_to_metric_families(body(response).decode()):
        for sample in family.samples:
            key = (sample.name, *sorted(sample.labels.items()))
            samples[key] = sample.value
    return samples


def ws_named(server, name, **kw) -> WsClient:
    client = WsClient(HOST, server.http_port, **kw)
    client.expect(r".*name\?")
    client.say(name)
    client.expect(f"You are {re.escape(name)}")
    client.expect(r"(Also here|Nobody else).*")
    return client


def test_routes_page_health_metrics_404_and_405(web):
    page = get(web.http_port, "/")
    assert status(page) == 200 and b"text/html" in page and b"<html" in body(page).lower()
    assert status(get(web.http_port, "/app.js")) in (200, 404)  # the page's own files, if any
    health = get(web.http_port, "/healthz")
    assert status(health) == 200 and body(health) == b"ok"
    assert ("gchat_clients", ("transport", "tcp")) in metrics(web.http_port)
    assert status(get(web.http_port, "/nowhere")) == 404
    assert (
        status(get(web.http_port, "/healthz", method="POST", extra=b"Content-Length: 0\r\n")) == 405
    )


def test_admin_port_takes_health_and_metrics_off_the_public_port(start_gchat):
    server = start_gchat("--http", "0", "--admin", "0")
    assert server.admin_port and server.admin_port != server.http_port
    assert status(get(server.http_port, "/healthz")) == 404
    assert status(get(server.http_port, "/metrics")) == 404
    assert status(get(server.http_port, "/")) == 200
    assert body(get(server.admin_port, "/healthz")) == b"ok"
    assert metrics(server.admin_port)
    assert status(get(server.admin_port, "/")) == 404


def test_keep_alive_serves_several_requests_on_one_connection(web):
    with socket.create_connection((HOST, web.http_port), timeout=10) as sock:
        request = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        sock.sendall(request)
        first = sock.recv(65536)
        sock.sendall(request)
        second = sock.recv(65536)
    assert status(first) == 200 and status(second) == 200


def test_malformed_request_gets_400_and_a_huge_head_431(web):
    assert status(http_request(HOST, web.http_port, b"NOT HTTP AT ALL\r\n\r\n")) == 400
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    assert status(http_request(HOST, web.http_port, huge)) == 431
    assert body(get(web.http_port, "/healthz")) == b"ok"  # and the server serves on


def test_a_trickled_request_head_is_closed_after_the_header_timeout(start_gchat):
    server = start_gchat("--http", "0", "--http-header-timeout", "0.5")
    with socket.create_connection((HOST, server.http_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")  # and never the rest
        started = time.monotonic()
        assert sock.recv(65536) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - started < 9


def test_websocket_and_tcp_clients_chat_in_the_same_room(web):
    browser = ws_named(web, "webby")
    nc = web.named("tcpy")
    browser.expect("tcpy has arrived")
    nc.say("hello from nc")
    browser.expect("tcpy: hello from nc")
    nc.expect("tcpy: hello from nc")
    browser.say("one\ntwo")  # one frame, two lines
    nc.expect("webby: one")
    nc.expect("webby: two")
    browser.expect("webby: one")
    browser.expect("webby: two")
    # Every frame from the server holds whole lines.
    assert browser.frames and all(frame.endswith("\n") for frame in browser.frames)
    browser.say("/join den")
    browser.expect("You are now in #den")
    nc.expect(r"webby has left \(joined #den\)")
    browser.say("/msg tcpy psst")
    nc.expect(r"webby \(private\): psst")


def test_max_line_applies_to_each_line_of_a_frame_and_the_client_stays(start_gchat):
    server = start_gchat("--http", "0", "--max-line", "10")
    client = ws_named(server, "w")
    client.say("short\n" + "x" * 11 + "\nafter")
    client.expect("w: short")
    client.expect("error: line longer than 10 bytes discarded")
    client.expect("w: after")


def test_a_message_over_the_bound_closes_with_1009(start_gchat):
    server = start_gchat("--http", "0", "--ws-max-message", "1000")
    watcher = server.named("watcher")
    client = ws_named(server, "big")
    watcher.expect("big has arrived")
    client.say("y" * 1001)
    assert client.wait_closed() == 1009
    watcher.expect(r"big has left.*")


@pytest.mark.parametrize(
    "frame, code",
    [
        (masked_frame(0x2, b"\x00\x01binary"), 1003),
        (masked_frame(0x1, b"bad \xff\xfe utf-8"), 1007),
        (masked_frame(0x1, b"unmasked", mask=False), 1002),
        (masked_frame(0x7, b"no such opcode"), 1002),
    ],
)
def test_bad_frames_close_with_their_codes_and_others_go_on(web, frame, code):
    other = ws_named(web, "other")
    client = ws_named(web, "bad")
    other.expect("bad has arrived")
    client.send_raw(frame)
    assert client.wait_closed() == code
    other.expect(r"bad has left.*")
    other.say("still here")
    other.expect("other: still here")


def test_ping_gets_pong_and_close_handshakes_both_ways(web):
    client = ws_named(web, "pinger")
    client.ping(b"payload")
    assert client.wait_event(Pong).payload == b"payload"
    client.close(1000)
    assert client.wait_closed() == 1000  # the server answered our close
    quitter = ws_named(web, "quitter")
    quitter.say("/quit bye")
    quitter.expect("Goodbye.")
    assert quitter.wait_closed() == 1000  # the server closes, with a close frame


def test_permessage_deflate_is_declined(web):
    from wsproto.extensions import PerMessageDeflate

    client = WsClient(HOST, web.http_port, extensions=[PerMessageDeflate()])
    assert client.accepted.extensions == []
    client.expect(r".*name\?")


def test_origin_must_match_the_host_or_be_allowed(start_gchat):
    server = start_gchat("--http", "0", "--allow-origin", "https://chat.example.org")
    port = server.http_port
    ok_same = WsClient(HOST, port, origin=f"http://{HOST}:{port}")
    ok_allowed = WsClient(HOST, port, origin="https://chat.example.org")
    ok_none = WsClient(HOST, port)
    for client in (ok_same, ok_allowed, ok_none):
        assert type(client.accepted).__name__ == "AcceptConnection"
    evil = WsClient(HOST, port, origin="https://evil.example.com")
    assert type(evil.accepted).__name__ == "RejectConnection"
    assert evil.accepted.status_code == 403


def test_metrics_move_as_traffic_flows(web):
    before = metrics(web.http_port)
    browser = ws_named(web, "m1")
    nc = web.named("m2")
    browser.expect("m2 has arrived")
    nc.say("/msg m1 psst")  # m1 then has a view of its own in the next batch
    nc.say("counted")
    browser.expect(r"m2 \(private\): psst")
    browser.expect("m2: counted")
    nc.expect(r"m2 \(private to m1\): psst")
    nc.expect("m2: counted")
    after = metrics(web.http_port)
    assert after[("gchat_clients", ("transport", "websocket"))] == 1
    assert after[("gchat_clients", ("transport", "tcp"))] == 1
    assert after[("gchat_lines_received_total",)] - before[("gchat_lines_received_total",)] >= 4
    # "m2 has arrived" to m1; "m2: counted" to both: exactly 3 deliveries
    # of broadcasts (the private line is not one).
    assert after[("gchat_deliveries_total",)] - before[("gchat_deliveries_total",)] == 3
    assert after[("gchat_bytes_sent_total",)] > before[("gchat_bytes_sent_total",)]
    assert after[("gchat_batch_events_count",)] > before[("gchat_batch_events_count",)]
    assert after[("gchat_flush_seconds_count",)] > before[("gchat_flush_seconds_count",)]
    assert ("process_resident_memory_bytes",) in after


def test_healthz_turns_503_while_shutdown_drains(start_gchat):
    server = start_gchat(
        "--http", "0", "--flood-rate", "0", "--sendq", "64M", "--shutdown-timeout", "5"
    )
    stuck = server.client(rcvbuf=4096)  # never reads: shutdown waits for its output
    stuck.line()
    stuck.say("stuck")
    talker = server.named("talker")
    talker.send(("x" * 1000 + "\n") * 4000)
    talker.expect("talker: x+", skip=True)
    deadline = time.monotonic() + 10
    while (
        status(get(server.http_port, "/metrics")) == 200
        and metrics(server.http_port)[("gchat_deliveries_total",)] < 4000
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)  # polling a counter under a deadline
    server.signal(signal.SIGTERM)
    seen = set()
    while time.monotonic() < deadline and 503 not in seen:
        try:
            seen.add(status(get(server.http_port, "/healthz")))
        except (OSError, IndexError, ValueError):
            break
    assert 503 in seen
    assert server.wait() == 0


def test_frames_sent_with_the_upgrade_request_are_read(web):
    """Bytes that follow the request head in the same packet belong to the
    WebSocket: the server reads them first."""
    import base64
    import os

    key = base64.b64encode(os.urandom(16))
    head = (
        b"GET /ws HTTP/1.1\r\nHost: "
        + f"{HOST}:{web.http_port}".encode()
        + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection((HOST, web.http_port), timeout=10) as sock:
        sock.sendall(head + masked_frame(0x1, b"early\n/who"))
        data = b""
        deadline = time.monotonic() + 10
        while b"Here now (1): early" not in data and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert b" 101 " in data.split(b"\r\n", 1)[0]
    assert b"You are early" in data and b"Here now (1): early" in data
