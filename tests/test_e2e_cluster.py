"""The cluster end to end: real `gchat --redis` processes and a real
redis-server that each test starts on a free port (gchat_bench.processes), kills
and starts again; and each test that runs on one Redis runs on a real Redis
Cluster of 3 masters too (killed whole and started again empty where the
test kills Redis), unchanged in what it asserts."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import redis
import redis.cluster
from chat_client import DEFAULT_TIMEOUT, gchat_executable

from gchat_bench.processes import RedisCluster, RedisServer

# Fast liveness for the tests: a node is declared lost after 1 s without a
# heartbeat (the default, 5 s, is argued in config.py).
FAST = ("--node-timeout", "1")


class ClusterAsServer:
    """A Redis Cluster of 3 masters behind RedisServer's interface: url (a
    node of it: gchat finds the others), kill() (every node, -9) and
    start() (the same nodes again, empty, joined into a new cluster)."""

    def __init__(self):
        self.cluster = RedisCluster(masters=3, replicas=0, timeout=30.0).start()
        self.first = self.cluster.nodes[0]

    @property
    def url(self):
        return self.first.url

    @property
    def port(self):
        return self.first.port

    def kill(self):
        self.cluster.kill_all()

    def start(self):
        self.cluster.start_empty()
        return self

    def stop(self):
        self.cluster.stop()


@pytest.fixture(params=["redis", "redis-cluster"])
def redis_server(request):
    """One Redis (conftest's), or a Redis Cluster in its place."""
    if request.param == "redis":
        server = RedisServer().start()
    else:
        server = ClusterAsServer()
    try:
        yield server
    finally:
        server.stop()


def client_of(server):
    """A redis-py client of either kind of server."""
    if isinstance(server, ClusterAsServer):
        return redis.cluster.RedisCluster.from_url(server.url)
    return redis.Redis.from_url(server.url)


def node(start_gchat, redis_server, *args):
    return start_gchat("--redis", redis_server.url, *FAST, *args)


def until(check, timeout=DEFAULT_TIMEOUT, what="condition"):
    """Poll check() until it returns something true, with a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        # Polling state we cannot wait on, bounded by the deadline; slowly
        # enough that a polling client stays within its flood allowance.
        time.sleep(0.25)
    raise TimeoutError(f"no {what} within {timeout} s")


def who(client) -> str:
    client.say("/who")
    return client.expect(r"Here now.*", skip=True)


def stats(client) -> dict:
    client.say("/stats")
    line = client.expect(r"stats: .*", skip=True)
    return dict(pair.split("=", 1) for pair in re.findall(r"\w+=\S+", line))


def test_a_line_reaches_every_member_on_every_node_in_one_order(start_gchat, redis_server):
    a, b = node(start_gchat, redis_server), node(start_gchat, redis_server)
    on_a = [a.named(f"a{i}") for i in range(2)]
    on_b = [b.named(f"b{i}") for i in range(2)]
    everyone = on_a + on_b
    for client in everyone:  # everyone has heard of everyone
        until(lambda c=client: "(4)" in who(c), what="roster of 4")
    # Two senders on two nodes at once: every member sees one interleaving.
    for i in range(30):
        on_a[0].say(f"from a {i}")
        on_b[0].say(f"from b {i}")
    seen = []
    for client in everyone:
        lines = [client.expect(r"(a0|b0): from . \d+", skip=True)]
        lines += client.lines(59)
        seen.append(lines)
        assert sorted(lines) == sorted(
            [f"a0: from a {i}" for i in range(30)] + [f"b0: from b {i}" for i in range(30)]
        )
    assert all(lines == seen[0] for lines in seen), "members saw different orders"
    # Each sender's own lines keep their order.
    assert [x for x in seen[0] if x.startswith("a0")] == [f"a0: from a {i}" for i in range(30)]


def test_names_are_unique_across_nodes_even_when_racing(start_gchat, redis_server):
    a, b = node(start_gchat, redis_server), node(start_gchat, redis_server)
    pairs = []
    for _ in range(10):
        pair = (a.client(), b.client())
        for client in pair:
            client.expect(r".*name\?")
        pairs.append(pair)
    for i, pair in enumerate(pairs):
        for client in pair:
            client.send(f"racer{i}\n".encode())
    for i, pair in enumerate(pairs):
        outcomes = [c.expect(rf"You are racer{i}|error: the name racer{i} is taken") for c in pair]
        assert sorted(o.startswith("You are") for o in outcomes) == [False, True], outcomes
    # Case folding holds across nodes too.
    zed = b.named("Zed")
    late = a.client()
    late.expect(r".*name\?")
    late.say("zed")
    late.expect("error: the name zed is taken")
    zed.close()


def test_msg_who_rooms_and_rosters_count_the_whole_cluster(start_gchat, redis_server):
    a, b = node(start_gchat, redis_server), node(start_gchat, redis_server)
    alice = a.named("alice")
    bob = b.named("bob")
    alice.expect("bob has arrived", skip=True)
    carol = a.client()
    carol.expect(r".*name\?")
    carol.say("carol")
    carol.expect("You are carol")
    carol.expect(r"Also here \(2\): (alice, bob|bob, alice)")
    bob.say("/msg alice psst")
    bob.expect("bob \\(private to alice\\): psst", skip=True)
    alice.expect("bob \\(private\\): psst", skip=True)
    bob.say("/msg nobody hi")
    bob.expect("error: no such user: nobody", skip=True)
    bob.say("/join #den")
    bob.expect("You are now in #den", skip=True)
    alice.expect("bob has left \\(joined #den\\)", skip=True)
    until(
        lambda: re.search(
            r"#den \(1\)", (alice.say("/rooms") or alice.expect("Rooms.*", skip=True))
        )
    )
    alice.say("/who")
    assert alice.expect("Here now.*", skip=True) in (
        "Here now (2): alice, carol",
        "Here now (2): carol, alice",
    )


def test_history_is_the_rooms_and_a_later_node_shows_it(start_gchat, redis_server):
    a = node(start_gchat, redis_server)
    alice = a.named("alice")
    for i in range(3):
        alice.say(f"line {i}")
        alice.expect(f"alice: line {i}", skip=True)
    b = node(start_gchat, redis_server)  # started after the lines were said
    bob = b.named("bob")
    bob.expect(r"--- last 3 lines of #lobby ---")
    assert bob.lines(4) == [
        "alice: line 0",
        "alice: line 1",
        "alice: line 2",
        "--- end of history ---",
    ]
    # The later node knows who is here without anyone arriving again.
    until(lambda: "(2)" in who(bob), what="alice in bob's /who")


def test_a_killed_node_s_members_leave_everywhere_and_free_their_names(start_gchat, redis_server):
    a, b = node(start_gchat, redis_server), node(start_gchat, redis_server)
    alice = a.named("alice")
    on_b = [b.named("bob"), b.named("bea")]  # kept: a dropped client disconnects
    alice.expect("bea has arrived", skip=True)
    b.proc.kill()  # kill -9: no goodbye
    started = time.monotonic()
    left = sorted(
        alice.expect(r"(bob|bea) has left \(server lost\)", skip=True, timeout=10) for _ in range(2)
    )
    assert left == ["bea has left (server lost)", "bob has left (server lost)"]
    # --node-timeout 1: noticed within a few heartbeats, not at once, not never.
    assert time.monotonic() - started < 6
    a.named("bob")  # the name is free again
    for client in on_b:  # their node is gone: closed_after raises if they stay open
        client.closed_after(5)


def test_redis_killed_and_restarted_empty_loses_and_duplicates_nothing(start_gchat, redis_server):
    a, b = node(start_gchat, redis_server), node(start_gchat, redis_server)
    alice = a.named("alice")
    bob = b.named("bob")
    alice.expect("bob has arrived", skip=True)
    redis_server.kill()
    a.wait_for_log(r"lost the cluster's Redis")
    # During the outage: lines wait; a new name cannot be taken.
    for i in range(5):
        alice.say(f"alice {i}")
        bob.say(f"bob {i}")
    newcomer = a.client()
    newcomer.expect(r".*name\?")
    newcomer.say("carl")
    newcomer.expect(r"error: cannot take a name now.*")
    assert alice.quiet(0.3), "a line was delivered while Redis was down"
    redis_server.start()  # same port, empty
    a.wait_for_log(r"Redis is back")
    for client in (alice, bob):
        got = [client.expect(r"(alice|bob): (alice|bob) \d", skip=True, timeout=15)]
        got += client.lines(9)
        assert sorted(got) == sorted(
            [f"alice: alice {i}" for i in range(5)] + [f"bob: bob {i}" for i in range(5)]
        ), got
        assert [g for g in got if g.startswith("alice")] == [f"alice: alice {i}" for i in range(5)]
        assert [g for g in got if g.startswith("bob")] == [f"bob: bob {i}" for i in range(5)]
        assert client.quiet(0.5), "a line came twice"
    # The names held were asserted again: bob is still bob's, on both nodes.
    r = client_of(redis_server)
    until(lambda: r.get("gchat:n:{bob}"), what="bob's name in the new Redis")
    late = a.client()
    late.expect(r".*name\?")
    late.say("bob")
    late.expect("error: the name bob is taken")
    counters = stats(alice)
    assert int(counters["bus_outages"]) >= 1 and int(counters["bus_recoveries"]) >= 1
    assert int(counters["bus_data_lost"]) >= 1


def test_a_stopped_node_gets_what_was_published_before_redis_died(start_gchat, redis_server):
    # A node stopped (SIGSTOP) while the others publish has not read their
    # entries when Redis dies; they are published again from the window.
    a, b = (
        node(start_gchat, redis_server, "--node-timeout", "30"),
        node(start_gchat, redis_server, "--node-timeout", "30"),
    )
    alice = a.named("alice")
    bob = b.named("bob")
    alice.expect("bob has arrived", skip=True)
    b.signal(signal.SIGSTOP)
    try:
        alice.say("while bob's node sleeps")
        alice.expect("alice: while bob's node sleeps", skip=True)  # back from Redis
        redis_server.kill()
        redis_server.start()
    finally:
        b.signal(signal.SIGCONT)
    bob.expect("alice: while bob's node sleeps", skip=True, timeout=15)
    assert bob.quiet(1.0)


def test_past_the_outage_bound_a_sender_is_told_its_line_was_not_sent(start_gchat, redis_server):
    a = node(start_gchat, redis_server, "--bus-backlog", "3")
    alice = a.named("alice")
    redis_server.kill()
    a.wait_for_log(r"lost the cluster's Redis")
    for i in range(5):
        alice.say(f"line {i}")
    refusals = [alice.expect(r"error: .*not sent", skip=True) for _ in range(2)]
    assert len(refusals) == 2
    redis_server.start()
    assert [alice.expect(r"alice: line \d", skip=True, timeout=15)] + alice.lines(2) == [
        "alice: line 0",
        "alice: line 1",
        "alice: line 2",
    ]
    assert alice.quiet(0.5)


def test_bad_entries_on_the_bus_are_logged_and_skipped(start_gchat, redis_server):
    from gchat.bus.room_stream import RoomStream

    a = node(start_gchat, redis_server)
    alice = a.named("alice")
    r = client_of(redis_server)
    lobby = RoomStream(r, "gchat", stream_max=1000, history=0)
    # Another program on the lobby's channel, and entries through the
    # publish script that this version cannot apply.
    r.execute_command("SPUBLISH", lobby.keys("lobby").channel, "hello world")
    lobby.publish("lobby", "x", 1, "[99]", "E")  # another version
    lobby.publish("lobby", "x", 2, "{not json", "E")
    lobby.publish("lobby", "x", 3, '[2, ["say", "lobby"]]', "E")
    a.wait_for_log(r"skipped bus entry .*message does not parse: 2 fields")
    a.wait_for_log(r"skipped bus entry .*version")
    a.wait_for_log(r"skipped bus entry .*does not parse: Expecting")
    a.wait_for_log(r"skipped bus entry .*malformed say")
    alice.say("still here")
    alice.expect("alice: still here", skip=True)
    assert int(stats(alice)["bus_bad_entries"]) == 4


def test_compat_is_the_seeds_one_room_across_nodes(start_gchat, redis_server):
    a = node(start_gchat, redis_server, "--compat")
    b = node(start_gchat, redis_server, "--compat")
    one = a.client()
    me = one.expect(r"You are (\S+)")[len("You are ") :]
    two = b.client()
    two_addr = two.expect(r"You are (\S+)")[len("You are ") :]
    one.expect(f"{re.escape(two_addr)} has arrived")
    one.say("hi")
    two.expect(f"{re.escape(me)}: hi")
    two.close()
    one.expect(f"{re.escape(me)}: hi")
    one.expect(f"{re.escape(two_addr)} has left")


def test_any_node_of_a_redis_cluster_serves_and_rooms_spread_over_its_masters(
    start_gchat, redis_cluster
):
    """--redis at one node of a Redis Cluster: gchat finds the other
    masters, and the rooms' keys land on all of them."""
    nodes = list(redis_cluster.masters())
    a = start_gchat("--redis", nodes[0].url, *FAST)
    b = start_gchat("--redis", nodes[1].url, *FAST)
    a.wait_for_log(r"joined cluster gchat \(a Redis Cluster\)")
    alice, _bob = a.named("alice"), b.named("bob")
    alice.expect("bob has arrived", skip=True)
    for i in range(12):
        alice.say(f"/join #r{i}")
        alice.expect(f"You are now in #r{i}", skip=True)
        alice.say(f"in r{i}")
        alice.expect(f"alice: in r{i}", skip=True)
    owners = {redis_cluster.master_for_key("{gchat:r:r%d}:o" % i).port for i in range(12)}
    assert owners == {n.port for n in nodes}
    counts = {
        master.port: redis.Redis(port=master.port).dbsize() for master in redis_cluster.masters()
    }
    assert all(count > 0 for count in counts.values()), counts


def test_start_fails_clearly_without_redis(tmp_path, redis_server):
    port = redis_server.port
    redis_server.kill()
    proc = subprocess.run(
        [gchat_path(), "--port", "0", "--redis", f"redis://127.0.0.1:{port}/0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "cannot reach Redis" in errors[0], proc.stderr


def test_start_fails_clearly_on_a_wrong_password(start_gchat):
    server = RedisServer(password="s3cret").start()
    try:
        wrong = f"redis://:nope@127.0.0.1:{server.port}/0"
        proc = subprocess.run(
            [gchat_path(), "--port", "0", "--redis", wrong],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 1
        assert "refused the password" in proc.stderr and "nope" not in proc.stderr, proc.stderr
        none = f"redis://127.0.0.1:{server.port}/0"
        proc = subprocess.run(
            [gchat_path(), "--port", "0", "--redis", none],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 1 and "refused the password" in proc.stderr, proc.stderr
        good = start_gchat("--redis", server.url)
        good.named("alice")
    finally:
        server.stop()


def test_without_the_cluster_extra_redis_names_it(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['redis'] = None\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run(
        [gchat_path(), "--port", "0", "--redis", "redis://127.0.0.1:1/0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "pip install 'gchat[cluster]'" in proc.stderr, proc.stderr


def gchat_path():
    return gchat_executable()


def test_the_outage_bound_holds_after_a_restart_that_republished(start_gchat, redis_server):
    # Republishing the window must not loosen --bus-backlog for the next outage.
    a = node(start_gchat, redis_server, "--bus-backlog", "3")
    alice = a.named("alice")
    for i in range(10):  # with Redis up, a burst past the bound goes through
        alice.say(f"up {i}")
    assert [alice.expect(r"alice: up \d", skip=True)] + alice.lines(9) == [
        f"alice: up {i}" for i in range(10)
    ]
    redis_server.kill()
    a.wait_for_log(r"lost the cluster's Redis")
    redis_server.start()
    a.wait_for_log(r"Redis is back without the cluster's data")
    until(lambda: stats(alice)["bus_held_lines"] == "0", what="nothing held")
    redis_server.kill()
    until(lambda: stats(alice)["bus_up"] == "0", what="the second outage")
    for i in range(5):
        alice.say(f"down {i}")
    assert len([alice.expect(r"error: .*not sent", skip=True) for _ in range(2)]) == 2
    redis_server.start()
    assert [alice.expect(r"alice: down \d", skip=True, timeout=15)] + alice.lines(2) == [
        "alice: down 0",
        "alice: down 1",
        "alice: down 2",
    ]


def test_client_sockets_stay_plain_once_redis_py_patched_the_socket_module(tmp_path):
    # --redis monkey-patches the socket module for redis-py; a client's
    # socket must still be the standard library's (no gevent wrapper and
    # its watchers: the idle memory per connection must not grow).
    script = tmp_path / "check.py"
    script.write_text(
        "import socket\n"
        "from gevent import monkey\n"
        "monkey.patch_socket()\n"
        "import gevent.socket\n"
        "from gchat.config import Config\n"
        "from gchat.transport.base import Listener\n"
        "listener = Listener(('127.0.0.1', 0), lambda *a: None, Config())\n"
        "listener.init_socket()\n"
        "client = socket.create_connection(listener.socket.getsockname())\n"
        "import time\n"
        "deadline = time.monotonic() + 5\n"
        "got = None\n"
        "while got is None and time.monotonic() < deadline:\n"
        "    got = listener.do_read()\n"
        "sock = got[0]\n"
        "assert socket.socket is gevent.socket.socket\n"
        "assert type(sock) is monkey.get_original('socket', 'socket'), type(sock)\n"
        "print('plain')\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == "plain", proc.stderr


def test_rediss_means_tls_to_redis(start_gchat, tmp_path):
    from test_e2e_tls import make_ca, make_cert

    ca = make_ca(tmp_path)
    cert, key = make_cert(tmp_path, "redis")
    server = RedisServer(tls=(cert, key, ca)).start()
    try:
        assert server.url.startswith("rediss://")
        a, b = start_gchat("--redis", server.url), start_gchat("--redis", server.url)
        alice, bob = a.named("alice"), b.named("bob")
        alice.expect("bob has arrived", skip=True)
        bob.say("over TLS")
        alice.expect("bob: over TLS", skip=True)
        # The same Redis in plain text is refused: it speaks TLS only.
        plain = server.url.replace("rediss://", "redis://").split("?")[0]
        proc = subprocess.run(
            [gchat_path(), "--port", "0", "--redis", plain],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 1 and "cannot reach Redis" in proc.stderr, proc.stderr
    finally:
        server.stop()


def test_metrics_show_the_bus_and_the_cluster(start_gchat, redis_server):
    from test_e2e_web import metrics

    a = node(start_gchat, redis_server, "--http", "0")
    b = node(start_gchat, redis_server)
    alice, bob = a.named("alice"), b.named("bob")
    alice.expect("bob has arrived", skip=True)
    bob.say("hello")
    alice.expect("bob: hello", skip=True)
    samples = until(
        lambda: (lambda m: m if m[("gchat_cluster_nodes",)] == 2 else None)(metrics(a.http_port)),
        what="two nodes in /metrics",
    )
    assert samples[("gchat_bus_up",)] == 1
    assert samples[("gchat_bus_published_total",)] >= 1
    assert samples[("gchat_bus_read_total",)] >= 3  # hellos, enters, the line
    assert samples[("gchat_members", ("state", "named"))] == 1  # this node's own
    redis_server.kill()
    until(lambda: metrics(a.http_port)[("gchat_bus_up",)] == 0, what="bus_up 0")
    assert metrics(a.http_port)[("gchat_bus_outages_total",)] == 1


def test_a_node_stopped_gracefully_says_so_and_frees_its_names(start_gchat, redis_server):
    a, b = node(start_gchat, redis_server), node(start_gchat, redis_server)
    alice = a.named("alice")
    bob = b.named("bob")
    alice.expect("bob has arrived", skip=True)
    b.signal(signal.SIGTERM)
    assert b.wait() == 0
    bob.expect("Server shutting down. Goodbye.", skip=True)
    alice.expect(r"bob has left \(server stopped\)", skip=True)
    r = client_of(redis_server)
    assert r.get("gchat:n:{bob}") is None
    again = a.named("bob")  # at once: no heartbeat to wait for
    alice.expect("bob has arrived", skip=True)
    # No "(server lost)" for the stopped node after its heartbeat expires
    # (--node-timeout 1): the new bob stays.
    assert alice.quiet(2.5)
    again.close()
