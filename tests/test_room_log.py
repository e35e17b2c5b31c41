"""The rules of one room's order on the sharded bus (gchat/bus/room_log.py),
pure: a simulated log in place of Redis, hypothesis for what pub/sub may
drop, repeat or deliver after a failover."""

from hypothesis import given, settings
from hypothesis import strategies as st

from gchat.bus.room_log import RoomEntry, RoomReader, RoomWriter, Verdict


class Log:
    """A room's log as Redis keeps it: epoch, offset, stream, chains."""

    def __init__(self):
        self.epoch = "e1"
        self.stream = []  # RoomEntry, in offset order
        self.chain = {}  # node -> last seq

    def publish(self, node, seq, ops):
        """What the publish script does; returns the entry or the chain's end."""
        last = self.chain.get(node, 0)
        if seq != last + 1:
            return last
        self.chain[node] = seq
        offset = self.stream[-1].offset + 1 if self.stream else 1
        entry = RoomEntry(self.epoch, offset, node, seq, ops)
        self.stream.append(entry)
        return entry

    def lose_tail(self, count):
        """A failover: the new master lacks the last count writes."""
        lost = self.stream[len(self.stream) - count :]
        del self.stream[len(self.stream) - count :]
        for entry in lost:
            self.chain[entry.node] = min(self.chain[entry.node], entry.seq - 1)

    def lose_all(self, epoch):
        """Redis came back empty: a new epoch, an empty stream."""
        self.epoch = epoch
        self.stream = []
        self.chain = {}


def drive(reader, entry, log, applied):
    """What the bus's I/O does with an entry delivered live."""
    verdict = reader.judge(entry)
    if verdict is Verdict.DUPLICATE:
        return verdict
    if verdict is Verdict.APPLY:
        applied.append((entry.node, entry.seq))
        reader.mark(entry)
        return verdict
    if verdict is Verdict.RESET:
        reader.reset()
        todo = list(log.stream)
    else:  # GAP: what the stream holds from the position, up to entry
        todo = [e for e in log.stream if reader.offset <= e.offset <= entry.offset]
        first = todo[0] if todo and todo[0].offset == reader.offset else None
        if reader.continues(first):
            todo = todo[1:] if first is not None else todo
        else:
            reader.reset()
            todo = list(log.stream)
    for item in todo:
        if reader.fresh(item):
            applied.append((item.node, item.seq))
        reader.mark(item)
    return verdict


def test_in_order_entries_apply_and_a_repeat_is_a_duplicate():
    log, reader, applied = Log(), RoomReader("e1", 0), []
    first = log.publish("a", 1, ["say"])
    second = log.publish("b", 1, ["say"])
    assert drive(reader, first, log, applied) is Verdict.APPLY
    assert drive(reader, first, log, applied) is Verdict.DUPLICATE
    assert drive(reader, second, log, applied) is Verdict.APPLY
    assert applied == [("a", 1), ("b", 1)]
    assert (reader.epoch, reader.offset) == ("e1", 2)


def test_a_missed_message_is_a_gap_filled_from_the_stream():
    log, reader, applied = Log(), RoomReader("e1", 0), []
    entries = [log.publish("a", seq, []) for seq in (1, 2, 3)]
    assert drive(reader, entries[0], log, applied) is Verdict.APPLY
    assert drive(reader, entries[2], log, applied) is Verdict.GAP
    assert applied == [("a", 1), ("a", 2), ("a", 3)]
    assert drive(reader, entries[1], log, applied) is Verdict.DUPLICATE


def test_a_snapshot_position_skips_what_the_snapshot_holds():
    log = Log()
    entries = [log.publish("a", seq, []) for seq in (1, 2, 3)]
    reader, applied = RoomReader("e1", 2), []  # members and history as of offset 2
    assert drive(reader, entries[2], log, applied) is Verdict.APPLY
    assert applied == [("a", 3)]


def test_offsets_handed_out_again_after_a_failover_lose_nothing():
    log, reader, applied = Log(), RoomReader("e1", 0), []
    for seq in (1, 2, 3):
        drive(reader, log.publish("a", seq, []), log, applied)
    log.lose_tail(2)  # the new master has a:1 only, at offset 1
    reissued = log.publish("b", 1, [])  # offset 2, which a:2 had
    assert reissued.offset == 2
    assert drive(reader, reissued, log, applied) is Verdict.RESET
    # a's chain ends at 1 in the new master: a publishes 2 and 3 again.
    assert log.publish("a", 3, []) == 1
    for seq in (2, 3):
        assert drive(reader, log.publish("a", seq, []), log, applied) is Verdict.DUPLICATE
    assert sorted(applied) == [("a", 1), ("a", 2), ("a", 3), ("b", 1)]
    assert len(applied) == len(set(applied))


def test_a_new_epoch_reads_the_stream_again_without_repeating():
    log, reader, applied = Log(), RoomReader("e1", 0), []
    drive(reader, log.publish("a", 1, []), log, applied)
    log.lose_all("e2")
    republished = log.publish("a", 1, [])  # the node's window, published again
    fresh = log.publish("b", 1, [])
    assert drive(reader, fresh, log, applied) is Verdict.RESET
    assert drive(reader, republished, log, applied) is Verdict.DUPLICATE
    assert applied == [("a", 1), ("b", 1)]
    assert (reader.epoch, reader.offset) == ("e2", 2)


def test_the_writer_numbers_its_entries_and_republishes_what_the_room_lacks():
    writer = RoomWriter(window=3)
    entries = [writer.next([f"op{i}"]) for i in range(1, 6)]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    again, lost = writer.after(3)
    assert [e.seq for e in again] == [4, 5] and lost == 0
    again, lost = writer.after(0)  # the room lost everything; 1 and 2 are past the window
    assert [e.seq for e in again] == [3, 4, 5] and lost == 2
    assert writer.after(5) == ([], 0)


def test_a_gap_after_offsets_were_handed_out_again_reads_from_the_start():
    """The reader saw a:2 at offset 2; the new master lost it and gave
    offset 2 and 3 to b's entries, which the reader missed: the gap read
    finds another entry at offset 2 and reads everything again."""
    log, reader, applied = Log(), RoomReader("e1", 0), []
    for seq in (1, 2):
        drive(reader, log.publish("a", seq, []), log, applied)
    log.lose_tail(1)
    log.publish("b", 1, [])  # offset 2, missed
    log.publish("b", 2, [])  # offset 3, missed
    assert drive(reader, log.publish("b", 3, []), log, applied) is Verdict.GAP
    assert sorted(applied) == [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("b", 3)]
    assert reader.continues(log.stream[-1]) and not reader.continues(log.stream[0])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),  # who publishes
            st.booleans(),  # delivered live, or missed
            st.booleans(),  # delivered twice
            st.integers(0, 2),  # a failover after it losing this many writes
        ),
        min_size=1,
        max_size=40,
    )
)
def test_every_entry_the_log_keeps_is_applied_once(steps):
    """Whatever pub/sub drops or repeats, and whatever failovers lose, a
    reader applies every (node, seq) that the log holds at the end exactly
    once, and each node's entries in their order."""
    log, reader, applied = Log(), RoomReader("e1", 0), []
    writers = {node: RoomWriter(window=100) for node in "abc"}
    for node, delivered, twice, lost in steps:
        writer = writers[node]
        result = log.publish(node, writer.seq + 1, [])
        if not isinstance(result, RoomEntry):
            raise AssertionError("a writer's next seq is always accepted here")
        writer.next([])
        if delivered:
            drive(reader, result, log, applied)
            if twice:
                drive(reader, result, log, applied)
        if lost:
            log.lose_tail(min(lost, len(log.stream)))
            # Each writer finds its chain short at its next publish and
            # publishes again what the log lacks, in order.
            for name, w in writers.items():
                again, gone = w.after(log.chain.get(name, 0))
                assert gone == 0
                for item in again:
                    entry = log.publish(name, item.seq, item.ops)
                    drive(reader, entry, log, applied)
    # A last live entry makes the reader catch up with whatever it missed.
    last = log.publish("z", 1, [])
    drive(reader, last, log, applied)
    assert len(applied) == len(set(applied)), "applied twice"
    kept = {(e.node, e.seq) for e in log.stream}
    assert kept <= set(applied), f"missed {kept - set(applied)}"
    for node in "abc":
        seqs = [seq for who, seq in applied if who == node]
        assert seqs == sorted(seqs), f"{node}'s entries out of order: {seqs}"


def test_an_entry_published_again_is_skipped_by_a_reader_born_after_it_first_was():
    """After Redis lost a room, its writers publish their windows again;
    a reader that started to host the room since (its members arrived
    after those lines were said) must not show them as new."""
    from gchat.bus.room_log import AGAIN_SKEW

    reader = RoomReader(born=1000.0)
    old = RoomEntry("E", 1, "a", 7, [], again=1000.0 - AGAIN_SKEW - 0.5)
    recent = RoomEntry("E", 2, "a", 8, [], again=1000.0 - AGAIN_SKEW + 0.5)
    new = RoomEntry("E", 3, "b", 1, [])
    assert not reader.fresh(old)
    assert reader.fresh(recent) and reader.fresh(new)
    # A reader born before it was first published takes it (it may have
    # missed it when Redis died).
    assert RoomReader(born=900.0).fresh(old)
