"""The chat page across a cluster (issue 18): two gchat nodes over a real
redis-server, behind a real HAProxy (Debian's) that balances the page's
HTTP and WebSocket, in real headless Chromium.  The page's node is killed
(-9); the page reconnects through HAProxy to the other node and resumes
with every line it missed, once, as the same name, in the same room."""

import subprocess
import time

import pytest
from test_browser import WAIT_MS, Netcat, Page, expect
from test_browser import browser as browser  # noqa: F401  (the fixture)
from test_e2e_haproxy import HAPROXY

from gchat_bench.processes import free_port

# TCP mode, so that the WebSocket is just a stream to HAProxy.  "first":
# every connection goes to node a while its health check passes, then to
# b; a connection that finds a dead (not yet checked) is sent to b
# (redispatch).
HAPROXY_CFG = """\
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    retries 3
    option redispatch
frontend web
    bind 127.0.0.1:{front}
    default_backend nodes
backend nodes
    balance first
    server a 127.0.0.1:{a} check inter 200ms fall 1 rise 1
    server b 127.0.0.1:{b} check inter 200ms fall 1 rise 1
"""


class Front:
    """What Page needs of a server: the HTTP port it opens (HAProxy's)."""

    def __init__(self, port):
        self.http_port = port


@pytest.fixture
def balanced(tmp_path, start_gchat, redis_server):
    """(node a, node b, HAProxy's port): two nodes of one cluster behind
    HAProxy; stopped after the test."""
    nodes = [
        start_gchat("--redis", redis_server.url, "--node-timeout", "1", "--http", "0")
        for _ in range(2)
    ]
    front = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CFG.format(front=front, a=nodes[0].http_port, b=nodes[1].http_port))
    proxy = subprocess.Popen(
        [HAPROXY, "-f", str(config), "-db"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield nodes[0], nodes[1], front
    finally:
        proxy.terminate()
        proxy.wait(10)


def test_a_page_whose_node_is_killed_resumes_on_the_other_through_haproxy(balanced, browser):
    a, b, front = balanced
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:  # HAProxy's port, polled until it listens (bounded)
        try:
            page = Page(browser, Front(front)).named("alice")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    page.say("/join ops")
    expect(page.page.locator("#room")).to_have_text("#ops")
    a.wait_for_log("connection from")  # "balance first": the page is on node a
    bob = Netcat(b.port)
    try:
        bob.named("bob")
        bob.say("/join ops")
        bob.expect(r"Also here \(1\): alice")
        page.roster("alice", "bob")
        bob.say("before")
        page.sees("chat", "bob: before")
        a.proc.kill()  # -9: no goodbye
        bob.say(*[f"line {i}" for i in range(20)])
        expect(page.page.locator("#status")).to_have_text("connected", timeout=20_000)
        for i in range(20):
            page.sees("chat", f"bob: line {i}")
        shown = page.lines("chat").all_text_contents()
        assert shown == ["bob: before"] + [f"bob: line {i}" for i in range(20)]
        assert not any(text.startswith("@") for text in page.lines().all_text_contents())
        expect(page.page.locator("#me")).to_have_text("alice")
        expect(page.page.locator("#room")).to_have_text("#ops")
        expect(page.lines("system", "You are alice")).to_have_count(1)  # resumed, not named
        page.say("still here")
        bob.expect("alice: still here")
        b.wait_for_log("node .* lost", timeout=10)
        bob.say("/who")
        bob.expect(r"Here now \(2\): bob, alice")
        # bob never saw alice leave or arrive.
        assert not [line for line in bob.received if "alice has" in line], bob.received
    finally:
        bob.close()
        page.close()
