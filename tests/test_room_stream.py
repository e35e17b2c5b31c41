"""A room's log in a real redis-server (gchat/bus/room_stream.py): the
publish script's chain, offsets and epoch, the stream read back, the
sharded channel, and a Redis that comes back empty."""

import json
import time

import redis

from gchat.bus.room_log import RoomReader, RoomWriter, Verdict
from gchat.bus.room_stream import RoomStream, parse_message, room_keys

DEADLINE = 5.0


def stream(server, history=3):
    client = redis.Redis.from_url(server.url)
    return RoomStream(client, "t", stream_max=1000, history=history)


def ops(text):
    return json.dumps([["say", "lobby", text, True]])


def test_a_rooms_keys_share_one_slot_and_rooms_differ():
    lobby, den = room_keys("c", "lobby"), room_keys("c", "den")
    assert {key.split("}")[0] for key in lobby} == {"{c:r:lobby"}
    assert not set(lobby) & set(den)


def test_publish_numbers_entries_and_the_stream_gives_them_back(redis_server):
    rooms = stream(redis_server)
    assert rooms.publish("lobby", "a", 1, ops("one"), "E1", ("a: one",)).status == 1
    second = rooms.publish("lobby", "b", 1, ops("two"), "E2", ("b: two",))
    assert second == (1, 2)
    epoch, entries = rooms.read("lobby", 1)
    assert epoch == "E1"  # the first publish set it; the second's was not used
    assert [(e.offset, e.node, e.seq) for e in entries] == [(1, "a", 1), (2, "b", 1)]
    assert json.loads(entries[1].ops[0]) == [["say", "lobby", "two", True]]
    assert rooms.read("lobby", 2)[1][0].node == "b"
    assert rooms.snapshot("lobby")[:3] == ("E1", 2, [b"a: one", b"b: two"])
    assert rooms.snapshot("den")[:3] == (None, 0, [])


def test_history_keeps_the_last_lines(redis_server):
    rooms = stream(redis_server, history=2)
    for seq in range(1, 5):
        rooms.publish("lobby", "a", seq, ops(str(seq)), "E", (f"a: {seq}",))
    assert rooms.snapshot("lobby")[2] == [b"a: 3", b"a: 4"]


def test_the_chain_refuses_copies_and_gaps(redis_server):
    rooms = stream(redis_server)
    assert rooms.publish("lobby", "a", 1, ops("1"), "E").status == 1
    assert rooms.publish("lobby", "a", 1, ops("1"), "E") == (0, 1)  # a retry: the room has it
    assert rooms.publish("lobby", "a", 3, ops("3"), "E") == (-1, 1)  # 2 is missing
    assert rooms.publish("lobby", "a", 3, ops("3"), "E", force=True).status == 1
    assert [e.seq for e in rooms.read("lobby", 1)[1]] == [1, 3]


def test_a_publish_reaches_a_sharded_subscriber(redis_server):
    rooms = stream(redis_server)
    listener = redis.Redis.from_url(redis_server.url).pubsub()
    listener.ssubscribe(rooms.keys("lobby").channel)
    deadline = time.monotonic() + DEADLINE
    while listener.get_sharded_message(timeout=0.1) is None:  # the confirmation
        assert time.monotonic() < deadline
    rooms.publish("lobby", "a", 1, ops("hi"), "E1")
    message = None
    while message is None:
        assert time.monotonic() < deadline, "no message on the room's channel"
        message = listener.get_sharded_message(timeout=0.1)
    entry = parse_message(message["data"])
    assert (entry.epoch, entry.offset, entry.node, entry.seq) == ("E1", 1, "a", 1)
    assert json.loads(entry.ops[0]) == [["say", "lobby", "hi", True]]
    listener.close()


def test_redis_back_empty_gives_a_new_epoch_and_the_node_publishes_again(redis_server):
    rooms = stream(redis_server)
    writer, reader, applied = RoomWriter(window=10), RoomReader(), []
    for text in ("one", "two"):
        entry = writer.next([text])
        rooms.publish("lobby", "a", entry.seq, ops(text), "E1")
    epoch, entries = rooms.read("lobby", 1)
    for entry in entries:
        assert reader.judge(entry) is Verdict.APPLY
        applied.append((entry.node, entry.seq))
        reader.mark(entry)
    redis_server.kill()
    redis_server.start()
    rooms = stream(redis_server)
    third = writer.next(["three"])
    outcome = rooms.publish("lobby", "a", third.seq, ops("three"), "E2")
    assert outcome == (-1, 0)  # the room lost a's entries
    again, lost = writer.after(outcome.value)
    assert lost == 0
    for entry in again:
        assert rooms.publish("lobby", "a", entry.seq, ops(entry.ops[0]), "E2").status == 1
    epoch, entries = rooms.read("lobby", 1)
    assert epoch == "E2"
    assert reader.judge(entries[-1]) is Verdict.RESET
    reader.reset()
    for entry in entries:
        if reader.fresh(entry):
            applied.append((entry.node, entry.seq))
        reader.mark(entry)
    assert applied == [("a", 1), ("a", 2), ("a", 3)]


def test_the_members_follow_the_entries_and_a_snapshot_gives_them_with_the_chains(redis_server):
    rooms = stream(redis_server)
    rooms.publish("den", "a", 1, ops("x"), "E", members=("+ann Ann", "+al Al"))
    rooms.publish("den", "b", 1, ops("x"), "E", members=("+bob Bob",))
    snap = rooms.snapshot("den", "Den")
    assert sorted(snap.members) == [("a", "Al"), ("a", "Ann"), ("b", "Bob")]
    assert snap.chains == {"a": 1, "b": 1} and snap.offset == 2 and snap.name == "Den"
    # "-": only the node that holds the name removes it.
    rooms.publish("den", "b", 2, ops("x"), "E", members=("-ann",))
    rooms.publish("den", "a", 2, ops("x"), "E", members=("-al",))
    assert sorted(rooms.snapshot("den").members) == [("a", "Ann"), ("b", "Bob")]
    # "=": none of the publisher's, before a list; "!NODE": none of NODE's.
    rooms.publish("den", "a", 3, ops("x"), "E", members=("=", "+zed Zed"))
    assert sorted(rooms.snapshot("den").members) == [("a", "Zed"), ("b", "Bob")]
    rooms.publish("den", "a", 4, ops("x"), "E", members=("!b",))
    snap = rooms.snapshot("den", "den")
    assert snap.members == [("a", "Zed")]
    assert snap.name == "Den"  # the first host's spelling stays


def test_an_entry_published_again_says_when_it_first_was(redis_server):
    rooms = stream(redis_server)
    pubsub = redis.Redis.from_url(redis_server.url).pubsub()
    pubsub.ssubscribe(room_keys("t", "lobby").channel)
    assert pubsub.get_sharded_message(timeout=DEADLINE)["type"] == "ssubscribe"
    rooms.publish("lobby", "a", 1, ops("once"), "E")
    rooms.publish("lobby", "a", 2, ops("again"), "E", again=1733.25)
    _, entries = rooms.read("lobby", 1)
    assert [(e.seq, e.again) for e in entries] == [(1, 0.0), (2, 1733.25)]
    live = []
    deadline = time.monotonic() + DEADLINE
    while len(live) < 2 and time.monotonic() < deadline:
        message = pubsub.get_sharded_message(timeout=0.1)
        if message and message["type"] == "smessage":
            live.append(parse_message(message["data"]))
    assert [(e.seq, e.again) for e in live] == [(1, 0.0), (2, 1733.25)]
