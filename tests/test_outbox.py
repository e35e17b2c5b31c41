"""Outbox: bounded per-client output and the slow-client policies, driven
with a fake non-blocking send (no sockets)."""

import pytest

from gchat.outbox import Outbox


class FakeSocket:
    """A non-blocking send that accepts up to `room` bytes, then refuses."""

    def __init__(self, room):
        self.room = room
        self.received = b""
        self.woken = 0

    def send(self, data):
        if self.room <= 0:
            raise BlockingIOError
        taken = bytes(data[: self.room])
        self.room -= len(taken)
        self.received += taken
        return len(taken)

    def wake(self):
        self.woken += 1

    def drain(self, outbox, room=10**9):
        """What the writer greenlet does once the peer reads."""
        self.room = room
        while True:
            data = outbox.pending()
            if not data:
                return
            outbox.sent(self.send(data))


def make(room, limit=100, policy="disconnect"):
    sock = FakeSocket(room)
    return sock, Outbox(limit, policy, sock.send, sock.wake)


def test_fast_path_sends_directly_and_parks_nothing():
    sock, box = make(room=1000)
    assert box.offer(b"a\n") and box.offer(b"b\n")
    assert sock.received == b"a\nb\n"
    assert box.parked_bytes == 0 and sock.woken == 0


def test_what_the_kernel_refuses_is_parked_and_the_writer_woken():
    sock, box = make(room=3)
    box.offer(b"hello\n")
    assert sock.received == b"hel" and box.parked_bytes == 3 and sock.woken == 1
    box.offer(b"more\n")  # behind parked bytes: parked too, never sent first
    assert sock.received == b"hel"
    sock.drain(box)
    assert sock.received == b"hello\nmore\n"


def test_lines_parked_while_the_writer_is_sending_are_kept():
    """Regression: the writer took pending(), the hub parked more, then the
    writer's send completed; the newer lines must survive."""
    sock, box = make(room=0, limit=1000)
    box.offer(b"one\n")
    data = box.pending()
    box.offer(b"two\n")
    sock.room = len(data)
    box.sent(sock.send(data))
    assert box.parked_bytes == 4
    sock.drain(box)
    assert sock.received == b"one\ntwo\n"


def test_disconnect_policy_refuses_over_the_limit():
    sock, box = make(room=0, limit=10)
    assert box.offer(b"12345\n")
    assert not box.offer(b"123456\n")  # 6 + 7 > 10
    assert box.parked_bytes == 6


def test_force_queues_a_departing_clients_last_line_over_the_limit():
    sock, box = make(room=0, limit=10)
    box.offer(b"12345\n")
    assert box.offer(b"goodbye, slow one\n", force=True)
    sock.drain(box)
    assert sock.received == b"12345\ngoodbye, slow one\n"


def test_drop_policy_skips_whole_offers_and_reports_them_once_caught_up():
    sock, box = make(room=0, limit=10, policy="drop")
    box.offer(b"a\n")
    box.offer(b"b\nc\n")
    box.offer(b"0123456789\n")  # would pass the limit: dropped, 1 line
    box.offer(b"x\ny\nz\n")  # 2 + 4 + 6 = 12 > 10: dropped, 3 lines
    assert box.missed == 4 and box.dropped == 4
    sock.drain(box)
    assert sock.received == b"a\nb\nc\nerror: you were too slow to read; 4 messages were skipped\n"
    assert box.missed == 0 and box.dropped == 4


def test_drop_policy_notice_comes_before_anything_newer():
    sock, box = make(room=0, limit=80, policy="drop")
    box.offer(b"1234567\n")
    box.offer(b"x" * 79 + b"\n")  # dropped
    sock.room = 8
    box.sent(sock.send(box.pending()))  # "1234567\n" sent: caught up, notice parked
    box.offer(b"new\n")
    sock.drain(box)
    assert sock.received == (
        b"1234567\nerror: you were too slow to read; 1 messages were skipped\nnew\n"
    )


def test_partial_send_of_the_parked_head_keeps_the_rest_in_order():
    sock, box = make(room=0, limit=100)
    box.offer(b"abcdef\n")
    box.offer(b"gh\n")
    sock.room = 2
    box.sent(sock.send(box.pending()))
    assert box.parked_bytes == len(b"cdef\ngh\n")
    sock.drain(box)
    assert sock.received == b"abcdef\ngh\n"


@pytest.mark.parametrize("error", [BrokenPipeError, ConnectionResetError])
def test_a_broken_connection_discards_output(error):
    def send(data):
        raise error

    box = Outbox(100, "disconnect", send, lambda: None)
    assert box.offer(b"x\n")
    assert box.broken and box.parked_bytes == 0
    assert box.offer(b"y\n")  # ignored, not an exception
