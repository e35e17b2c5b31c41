"""The writer's hot path (gchat/bus/direct_calls.py) against a real
redis-server and a real Redis Cluster: a batch goes over kept connections,
one per server; anything unusual (a script missing, a slot moved, Redis
gone) hands the whole batch to redis-py's pipeline, and what the rooms
hold is what one publish would leave."""

import json

import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot

from gchat.bus.room_stream import RoomStream, room_keys

TIMEOUT = 5.0


def ops(text):
    return json.dumps([2, ["say", "lobby", "alice", text]])


def item(room, seq, text):
    return (room, "node-a", seq, ops(text), "E", (f"alice: {text}",), False)


def gchat_clients(client) -> int:
    """Connections of the test's client that the server sees (CLIENT LIST)."""
    return sum(1 for c in client.client_list() if c.get("name") == "direct-test")


def test_a_batch_goes_over_one_kept_connection_and_publishes_each_entry(redis_server):
    client = redis.Redis.from_url(redis_server.url, client_name="direct-test")
    rooms = RoomStream(client, "t", stream_max=1000, history=5)
    first = rooms.publish_batch([item(f"room{i}", 1, "one") for i in range(20)])
    assert [p.status for p in first] == [1] * 20
    assert {p.value for p in first} == {1}  # each room's first entry
    # The script was not loaded yet (redis-py loads it on first use): the
    # first batch met NOSCRIPT and went through the pipeline, which loaded it.
    assert rooms.direct.stats == {"direct": 0, "fallbacks": 1}
    second = rooms.publish_batch([item(f"room{i}", 2, "two") for i in range(20)])
    assert [tuple(p) for p in second] == [(1, 2)] * 20
    assert rooms.direct.stats == {"direct": 1, "fallbacks": 1}
    rooms.publish_batch([item(f"room{i}", 3, "three") for i in range(20)])
    assert rooms.direct.stats == {"direct": 2, "fallbacks": 1}
    # One connection kept across batches, beside the pool's own (the
    # pipeline's), not one per batch.
    assert gchat_clients(client) == 2
    epoch, entries = rooms.read("room7", 1)
    assert epoch == "E" and [e.seq for e in entries] == [1, 2, 3]
    assert rooms.snapshot("room7").history == [b"alice: one", b"alice: two", b"alice: three"]
    # A copy is a copy on this path too.
    assert tuple(rooms.publish_batch([item("room7", 2, "two")])[0]) == (0, 3)


def test_a_missing_script_sends_the_batch_through_the_pipeline_which_loads_it(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    rooms = RoomStream(client, "t", stream_max=1000, history=5)
    assert rooms.publish_batch([item("lobby", 1, "one")])[0].status == 1  # loads the script
    assert rooms.publish_batch([item("lobby", 2, "two")])[0] == (1, 2)
    assert rooms.direct.stats == {"direct": 1, "fallbacks": 1}
    client.script_flush()
    # The first call of the batch meets NOSCRIPT: nothing of it went in, the
    # pipeline loads the script and publishes the batch.
    out = rooms.publish_batch([item("lobby", 3, "three"), item("den", 1, "one")])
    assert [tuple(p) for p in out] == [(1, 3), (1, 1)]
    assert rooms.direct.stats == {"direct": 1, "fallbacks": 2}
    assert rooms.publish_batch([item("lobby", 4, "four")])[0] == (1, 4)
    assert rooms.direct.stats == {"direct": 2, "fallbacks": 2}
    assert [e.seq for e in rooms.read("lobby", 1)[1]] == [1, 2, 3, 4]


def test_redis_gone_raises_what_the_pipeline_raises_and_back_it_goes_on(redis_server):
    client = redis.Redis.from_url(redis_server.url, socket_timeout=TIMEOUT)
    rooms = RoomStream(client, "t", stream_max=1000, history=5)
    assert rooms.publish_batch([item("lobby", 1, "one")])[0].status == 1
    redis_server.kill()
    fallbacks = rooms.direct.stats["fallbacks"]
    with pytest.raises(redis.ConnectionError):
        rooms.publish_batch([item("lobby", 2, "two")])
    redis_server.start()  # empty: the room starts again
    assert rooms.publish_batch([item("lobby", 2, "two")])[0] == (-1, 0)
    assert rooms.direct.stats["fallbacks"] > fallbacks


def test_on_a_redis_cluster_each_master_gets_its_rooms_and_a_moved_slot_falls_back(
    redis_cluster,
):
    cluster = redis_cluster
    client = ClusterClient.from_url(cluster.url, socket_timeout=TIMEOUT)
    try:
        rooms = RoomStream(client, "t", stream_max=1000, history=5)
        names = [f"room{i}" for i in range(30)]
        masters = {
            cluster.master_of_slot(key_slot(room_keys("t", n).offset.encode())).name for n in names
        }
        assert len(masters) == 3  # the batch spans every master
        out = rooms.publish_batch([item(n, 1, "one") for n in names])  # loads the script
        assert [p.status for p in out] == [1] * 30
        cluster.reset_stats()
        out = rooms.publish_batch([item(n, 2, "two") for n in names])
        assert [tuple(p) for p in out] == [(1, 2)] * 30
        assert rooms.direct.stats == {"direct": 1, "fallbacks": 1}
        calls = {
            node.name: stats.get("evalsha", 0) for node, stats in cluster.commandstats().items()
        }
        assert all(calls.values()) and sum(calls.values()) == 30, calls

        # Move the slot of one room's keys (the room whose slot lies lowest
        # in its master's range: redis-cli moves the lowest slots): the
        # kept connection is told MOVED, and the pipeline follows it.
        def below(name):
            slot = key_slot(room_keys("t", name).offset.encode())
            source = cluster.master_of_slot(slot)
            lower = sum(
                max(0, min(last, slot - 1) - first + 1) for first, last in cluster.slots_of(source)
            )
            return lower, slot, source

        moved = min(names, key=lambda n: below(n)[0])
        lower, slot, source = below(moved)
        target = next(m for m in cluster.masters() if m.name != source.name)
        cluster.reshard(source, target, lower + 1)
        assert cluster.master_of_slot(slot).name == target.name
        out = rooms.publish_batch([item(n, 3, "three") for n in names])
        # The other masters took their calls before the MOVED was read: sent
        # again through the pipeline, those come back as copies (status 0),
        # and the moved room's call went in once, on its new master.
        assert {(p.status, p.value) for p in out} == {(0, 3), (1, 3)}
        assert out[names.index(moved)] == (1, 3)
        assert rooms.direct.stats == {"direct": 1, "fallbacks": 2}
        out = rooms.publish_batch([item(n, 4, "four") for n in names])
        assert [tuple(p) for p in out] == [(1, 4)] * 30
        assert rooms.direct.stats == {"direct": 2, "fallbacks": 2}  # the new map, direct again
        for n in names:
            assert [e.seq for e in rooms.read(n, 1)[1]] == [1, 2, 3, 4], n
    finally:
        client.close()
