"""gchat_bench.processes.RedisCluster against a real Redis Cluster, and
what redis-py's cluster client does on it: keys spread by hash tag, a
failover after kill -9, a reshard and a rebalance under a client's
traffic, and sharded pub/sub (what the gchat bus will use).

Each test is bounded: every wait of RedisCluster has a deadline
(TIMEOUT), every redis-py client a socket timeout, the writer thread a
join deadline.  With a node timeout of 1 s each test takes seconds."""

import threading
import time

import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot

from gchat_bench.processes import CLUSTER_SLOTS, ClusterError, RedisCluster, redis_call

TIMEOUT = 30.0  # conftest's CLUSTER_TEST_TIMEOUT: any wait, any hang
SOCKET_TIMEOUT = 5.0


def client(cluster) -> ClusterClient:
    """redis-py's cluster client, given the first master's URL only."""
    return ClusterClient.from_url(
        cluster.url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
    )


def keys_for_slots(slots, prefix="k") -> dict:
    """{slot: a key in that slot} for every slot in slots."""
    wanted = set(slots)
    found: dict = {}
    i = 0
    while len(found) < len(wanted):
        key = "%s%d" % (prefix, i)
        slot = key_slot(key.encode())
        if slot in wanted and slot not in found:
            found[slot] = key
        i += 1
    return found


def channel_in_slot(slot: int) -> str:
    return keys_for_slots([slot], prefix="room:")[slot]


def sharded_messages(pubsub, until, timeout=TIMEOUT) -> list:
    """Read sharded messages until until(messages) holds; the messages as
    (type, channel, data).  A deadline, not a sleep."""
    messages: list = []
    deadline = time.monotonic() + timeout
    while not until(messages):
        if time.monotonic() >= deadline:
            raise TimeoutError("sharded messages so far: %r" % messages)
        m = pubsub.get_sharded_message(timeout=0.1)
        if m is not None:
            messages.append((m["type"], m["channel"].decode(), m["data"]))
    return messages


def sharded_messages_for(pubsub, duration) -> list:
    """Every sharded message in duration seconds: only to check that
    something did NOT arrive, never to wait for something."""
    messages: list = []
    end = time.monotonic() + duration
    while time.monotonic() < end:
        m = pubsub.get_sharded_message(timeout=0.1)
        if m is not None:
            messages.append((m["type"], m["channel"].decode(), m["data"]))
    return messages


def test_hash_tags_spread_over_three_masters_and_the_client_reaches_each(redis_cluster):
    cluster = redis_cluster
    masters = cluster.masters()
    assert len(masters) == 3 and cluster.replicas() == []
    counts = cluster.slot_counts()
    assert set(counts) == set(masters) and sum(counts.values()) == CLUSTER_SLOTS
    # Keys with one hash tag share a slot, so a master; different tags
    # land on different masters (CLUSTER KEYSLOT, asked of the cluster).
    tag_of = {}
    for i in range(60):
        owner = cluster.master_for_key("{room%d}:log" % i)
        assert cluster.master_for_key("{room%d}:names" % i) is owner
        tag_of.setdefault(owner, "room%d" % i)
    assert set(tag_of) == set(masters), "60 tags all on fewer than 3 masters"
    # redis-py, knowing one node's URL, writes and reads on every master;
    # each key is where the cluster says (the others answer MOVED).
    rc = client(cluster)
    try:
        for master, tag in tag_of.items():
            key = "{%s}:log" % tag
            assert rc.set(key, "on " + master.name)
            assert rc.get(key) == ("on " + master.name).encode()
            assert redis_call(master.port, "EXISTS", key) == 1
    finally:
        rc.close()
    assert all(redis_call(m.port, "DBSIZE") == 1 for m in masters)
    # Every master served redis-py's SETs (what the bench's cost probe reads).
    assert all(stats.get("set", 0) >= 1 for stats in cluster.commandstats().values())


def test_a_replicated_key_survives_kill_9_of_its_master():
    with RedisCluster(masters=3, replicas=1, timeout=TIMEOUT) as cluster:
        assert len(cluster.masters()) == 3 and len(cluster.replicas()) == 3
        key = "{room:lobby}:history"
        master = cluster.master_for_key(key)
        replicas = cluster.replicas_of(master)
        assert len(replicas) == 1
        # SET then WAIT on one connection: WAIT counts the replicas that
        # have this connection's writes, so a pool could make it vacuous.
        direct = redis.Redis(
            port=master.port, single_connection_client=True, socket_timeout=SOCKET_TIMEOUT
        )
        try:
            assert direct.set(key, "before the crash")
            assert direct.execute_command("WAIT", 1, 1000) == 1
        finally:
            direct.close()
        rc = client(cluster)  # its slot map names the master about to die
        try:
            assert rc.get(key) == b"before the crash"
            cluster.kill(master)
            new_master = cluster.wait_failover(master)
            assert new_master is replicas[0]
            assert cluster.master_for_key(key) is new_master
            assert master not in cluster.masters()
            # The client with the old map reconnects and finds the new master.
            assert rc.get(key) == b"before the crash"
        finally:
            rc.close()
        # The killed node, started again, rejoins as the new master's replica.
        cluster.restart(master)
        assert cluster.role(master) == "slave"
        assert cluster.replicas_of(new_master) == [master]


def test_a_reshard_under_a_client_writing_and_reading_loses_nothing(redis_cluster):
    cluster = redis_cluster
    source, target = cluster.masters()[:2]
    # redis-cli moves the lowest slots of the source: a key in each of them.
    source_slots = [s for first, last in cluster.slots_of(source) for s in range(first, last + 1)]
    moving = source_slots[:1000]
    keys = list(keys_for_slots(moving).values())
    written: dict = {}  # key -> the last value written and read back
    ops = [0]
    errors: list = []
    round0_done = threading.Event()
    stop = threading.Event()

    def writer():
        rc = client(cluster)
        try:
            round_ = 0
            while not stop.is_set():
                for key in keys:
                    value = "%s@%d" % (key, round_)
                    rc.set(key, value)
                    got = rc.get(key)
                    if got != value.encode():
                        errors.append((key, value, got))
                    written[key] = value
                    ops[0] += 1
                round0_done.set()
                round_ += 1
        except Exception as e:  # reported by the test
            errors.append(repr(e))
            round0_done.set()
        finally:
            rc.close()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        assert round0_done.wait(TIMEOUT), "the writer did not write every key once"
        cluster.reset_stats()
        before = ops[0]
        started = time.monotonic()
        cluster.reshard(source, target, 1000)
        resharded_in = time.monotonic() - started
        during = ops[0] - before
        # One more full round on the new map.
        after = ops[0]
        deadline = time.monotonic() + TIMEOUT
        while ops[0] < after + len(keys) and not errors and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a counter, bounded by the deadline
    finally:
        stop.set()
        thread.join(TIMEOUT)
    assert not thread.is_alive(), "the writer is stuck"
    assert errors == []
    assert during > 0, "no write happened during the reshard (%.1f s)" % resharded_in
    # The client was redirected (MOVED, ASK): it did meet the reshard.
    redirects = {
        node.name: {e: n for e, n in stats.items() if e in ("MOVED", "ASK")}
        for node, stats in cluster.errorstats().items()
    }
    assert any(redirects.values()), redirects
    counts = cluster.slot_counts()
    assert counts[source] == len(source_slots) - 1000 and counts[target] >= 1000 + 5461
    # Every key now lives on the target, with its last value.
    assert {cluster.master_of_slot(slot) for slot in moving} == {target}
    rc = client(cluster)
    try:
        assert len(written) == len(keys)
        for key, value in written.items():
            assert rc.get(key) == value.encode(), key
    finally:
        rc.close()
    assert redis_call(target.port, "DBSIZE") == len(keys)


def test_a_fourth_master_added_and_rebalanced_takes_a_quarter(redis_cluster):
    cluster = redis_cluster
    rc = client(cluster)
    try:
        keys = ["key%d" % i for i in range(400)]
        for key in keys:
            rc.set(key, key.upper())
        new = cluster.add_master()
        assert len(cluster.masters()) == 4
        assert cluster.slot_counts()[new] == 0
        cluster.rebalance()
        counts = cluster.slot_counts()
        assert len(counts) == 4 and sum(counts.values()) == CLUSTER_SLOTS
        assert min(counts.values()) >= CLUSTER_SLOTS // 4 - 2, counts
        # Keys moved with their slots, and the client follows them.
        assert 0 < redis_call(new.port, "DBSIZE") < len(keys)
        for key in keys:
            assert rc.get(key) == key.upper().encode(), key
    finally:
        rc.close()


def test_sharded_pubsub_through_the_cluster_client_on_every_master(redis_cluster):
    cluster = redis_cluster
    # A channel per master: one subscriber object holds a connection to each.
    channels = {}
    for master in cluster.masters():
        channels[master] = channel_in_slot(cluster.slots_of(master)[0][0])
    subscriber, publisher = client(cluster), client(cluster)
    pubsub = subscriber.pubsub()
    try:
        pubsub.ssubscribe(*channels.values())
        confirmed = sharded_messages(pubsub, lambda ms: len(ms) == len(channels))
        assert {(t, c) for t, c, _ in confirmed} == {("ssubscribe", c) for c in channels.values()}
        for master, channel in channels.items():
            assert publisher.spublish(channel, "to " + master.name) == 1
        got = sharded_messages(pubsub, lambda ms: len(ms) == len(channels))
        assert sorted(got) == sorted(
            ("smessage", channel, ("to " + master.name).encode())
            for master, channel in channels.items()
        )
        # Each channel's SPUBLISH ran on the master owning its slot.
        for master, stats in cluster.commandstats().items():
            assert stats.get("spublish") == 1, (master, stats)
    finally:
        pubsub.close()
        subscriber.close()
        publisher.close()


def test_a_reshard_moving_a_channel_unsubscribes_it_and_redis_py_does_not_resubscribe(
    redis_cluster,
):
    """What redis-py 8.2 does when a reshard moves a shard channel's slot.

    Redis 7.0, on losing a slot, pushes ``sunsubscribe`` for each of its
    channels to their subscribers.  Observed with redis-py 8.2.0:

    - get_sharded_message returns that push as a message of type
      "sunsubscribe" (data 0), and that is all: redis-py does NOT
      resubscribe by itself.  The subscriber, polling, hears nothing more
      (12 s were tried by hand), and an SPUBLISH to the channel from
      another client reaches no one (it returns 0).
    - redis-py's ClusterPubSub re-routes its shard channels after a slot
      map refresh of the RedisCluster object it was made from (a MOVED
      on any command of that object, or nodes_manager.initialize()),
      and does so on a thread of its own (a ThreadPoolExecutor), not the
      caller's.  If the same object publishes, its first SPUBLISH after
      the move is redirected, then lost (0 receivers), and only then the
      subscription follows.
    - Calling ssubscribe(channel) again on the unrequested sunsubscribe
      works at once: the subscription is made on the new owner, and the
      next SPUBLISH is received.

    So the gchat bus must treat an sunsubscribe it did not ask for as
    "resubscribe now", and count on losing what is published on that
    channel between the move and the resubscription.  Should a redis-py
    upgrade resubscribe by itself, the second assertion below fails:
    then this test, and the bus's workaround, can say so.
    """
    cluster = redis_cluster
    owner, other = cluster.masters()[:2]
    slot = cluster.slots_of(owner)[0][0]  # the lowest: the one reshard moves
    channel = channel_in_slot(slot)
    subscriber, publisher = client(cluster), client(cluster)
    pubsub = subscriber.pubsub()
    try:
        pubsub.ssubscribe(channel)
        sharded_messages(pubsub, lambda ms: ms == [("ssubscribe", channel, 1)])
        assert publisher.spublish(channel, "before") == 1
        sharded_messages(pubsub, lambda ms: ms == [("smessage", channel, b"before")])

        cluster.reshard(owner, other, 1)
        assert cluster.master_of_slot(slot) is other
        # The server's push, through get_sharded_message.
        sharded_messages(pubsub, lambda ms: ms == [("sunsubscribe", channel, 0)])
        # redis-py does not resubscribe by itself: 2 s of polling bring
        # nothing, and the new owner has no subscriber.
        assert sharded_messages_for(pubsub, 2.0) == []
        assert publisher.spublish(channel, "lost") == 0

        # The workaround: subscribe again on the unrequested sunsubscribe.
        pubsub.ssubscribe(channel)
        sharded_messages(pubsub, lambda ms: ms == [("ssubscribe", channel, 1)])
        assert publisher.spublish(channel, "after") == 1
        sharded_messages(pubsub, lambda ms: ms == [("smessage", channel, b"after")])
    finally:
        pubsub.close()
        subscriber.close()
        publisher.close()


def test_a_wait_that_expires_says_why_with_the_nodes_logs(redis_cluster):
    """A wait's deadline error names what was still missing and ends with
    the tails of the nodes' logs: here, a master killed without a replica
    (its slots stay down, and there is no one to fail over to)."""
    cluster = redis_cluster
    master = cluster.masters()[0]
    cluster.kill(master)
    with pytest.raises(ClusterError, match="node0 has no replica to fail over to"):
        cluster.wait_failover(master)
    started = time.monotonic()
    with pytest.raises(ClusterError) as raised:
        cluster.wait_converged("slots on a dead master", timeout=1.0)
    assert time.monotonic() - started < 1.0 + TIMEOUT / 10
    message = str(raised.value)
    assert "waited 1 s for slots on a dead master; still: " in message
    assert "node0 owns slots and is down" in message or "cluster_state:fail" in message
    assert "--- node0 127.0.0.1:%d (exit -9) ---" % master.port in message
    assert "Cluster state changed: ok" in message  # a live node's log
