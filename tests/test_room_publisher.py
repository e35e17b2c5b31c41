"""One node's writes to the room logs (gchat/bus/room_publisher.py), with
a log in memory in place of Redis that keeps the publish script's rules:
the chain, copies, refusals, the force flag."""

import pytest

from gchat.bus.room_publisher import RoomPublisher
from gchat.bus.room_stream import Published


class FakeStream:
    """publish_batch as the script answers it, room by room."""

    def __init__(self):
        self.chains = {}  # (room, node) -> last seq
        self.rooms = {}  # room -> [(node, seq, ops)]
        self.fail_next = False

    def publish_batch(self, items):
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("Redis is down")
        out = []
        for room, node, seq, ops, _epoch, _history, force, _members, _again in items:
            last = self.chains.get((room, node), 0)
            if seq <= last:
                out.append(Published(0, last))
            elif seq > last + 1 and not force:
                out.append(Published(-1, last))
            else:
                self.chains[(room, node)] = seq
                self.rooms.setdefault(room, []).append((node, seq, ops))
                out.append(Published(1, len(self.rooms[room])))
        return out

    def lose(self, room, count):
        """A failover: the room lacks its last count entries."""
        del self.rooms[room][-count:]
        kept = self.rooms[room]
        self.chains[(room, "n")] = kept[-1][1] if kept else 0


def test_entries_go_out_in_order_per_room_in_one_round():
    stream = FakeStream()
    pub = RoomPublisher(stream, "n", window=10)
    for text in ("a1", "a2"):
        pub.submit("a", text)
    pub.submit("b", "b1")
    assert pub.flush() == 3
    assert stream.rooms == {"a": [("n", 1, "a1"), ("n", 2, "a2")], "b": [("n", 1, "b1")]}
    assert pub.flush() == 0 and not pub.waiting


def test_a_failed_round_waits_and_goes_again_whole():
    stream = FakeStream()
    pub = RoomPublisher(stream, "n", window=10)
    pub.submit("a", "a1")
    stream.fail_next = True
    with pytest.raises(ConnectionError):
        pub.flush()
    assert len(pub.waiting) == 1
    assert pub.flush() == 1 and stream.rooms["a"] == [("n", 1, "a1")]


def test_what_a_failover_lost_is_published_again_before_what_follows():
    stream = FakeStream()
    pub = RoomPublisher(stream, "n", window=10)
    for i in range(1, 5):
        pub.submit("a", f"a{i}")
    pub.flush()
    stream.lose("a", 2)  # the new master has a1, a2
    pub.submit("a", "a5")
    pub.flush()
    assert [seq for _, seq, _ in stream.rooms["a"]] == [1, 2, 3, 4, 5]
    assert pub.stats["refusals"] == 1 and pub.stats["lost"] == 0


def test_entries_past_the_window_are_counted_lost_and_the_chain_moves_on():
    stream = FakeStream()
    pub = RoomPublisher(stream, "n", window=2)
    for i in range(1, 5):
        pub.submit("a", f"a{i}")
    pub.flush()
    stream.rooms["a"].clear()
    stream.chains.clear()  # Redis came back empty
    pub.submit("a", "a5")
    pub.flush()
    # a3 and a4 fell out of the window before a5 (window 2: a4, a5 kept).
    assert [seq for _, seq, _ in stream.rooms["a"]] == [4, 5]
    assert pub.stats["lost"] == 3 and not pub.waiting


def test_a_copy_counts_as_published():
    stream = FakeStream()
    pub = RoomPublisher(stream, "n", window=10)
    pub.submit("a", "a1")
    stream.chains[("a", "n")] = 1  # it went in, but the reply was lost
    assert pub.flush() == 1 and pub.stats["copies"] == 1 and "a" not in stream.rooms


def test_forgotten_entries_are_not_published_again_and_count_lost():
    stream = FakeStream()
    pub = RoomPublisher(stream, "n", window=10)
    for text in ("a1", "a2", "a3"):
        pub.submit("a", text, members=(f"+{text} {text}",))
    pub.flush()
    pub.forget("a", 2)  # past the replay window
    assert pub.extras == {"a": {3: ((), ("+a3 a3",))}}
    stream.lose("a", 3)  # Redis came back without the room
    pub.republish_all()
    pub.flush()
    assert stream.rooms["a"] == [("n", 3, "a3")]
    assert pub.stats["lost"] == 2


def test_entries_handed_over_while_a_round_is_out_wait_for_the_next():
    """The writer's round trip lets the hub run: what it submits meanwhile
    is not part of the round, and is not lost when the round ends."""
    stream = FakeStream()
    pub = RoomPublisher(stream, "n", window=10)
    pub.submit("a", "a1")
    publish = stream.publish_batch

    def publish_while_the_hub_runs(items):
        pub.submit("a", "a2")  # the hub, during the round trip
        stream.publish_batch = publish
        return publish(items)

    stream.publish_batch = publish_while_the_hub_runs
    assert pub.flush() == 2  # the next round of the same flush takes a2
    assert stream.rooms["a"] == [("n", 1, "a1"), ("n", 2, "a2")]


def test_what_a_room_took_is_published_again_with_when_it_first_took_it():
    """Entries a room acknowledged and then lost are marked "again" with the
    time of that first acknowledgement; entries it never took (held while
    Redis was away) go out as new."""
    stream = FakeStream()
    clock = iter([100.0, 200.0, 300.0, 400.0])
    pub = RoomPublisher(stream, "n", window=10, clock=lambda: next(clock))
    pub.submit("a", "a1")
    pub.flush()  # taken at 100.0
    pub.submit("a", "a2")  # never taken before the loss
    sent = []
    publish = stream.publish_batch

    def record(items):
        sent.extend((item[2], item[8]) for item in items)
        return publish(items)

    stream.publish_batch = record
    stream.lose("a", 1)  # Redis came back without the room
    pub.flush()
    assert (1, 100.0) in sent and (2, 0.0) in sent
    assert stream.rooms["a"] == [("n", 1, "a1"), ("n", 2, "a2")]
