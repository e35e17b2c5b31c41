"""Exercise 8.15: a client that never reads must not delay anyone else.
Its output is bounded by --sendq; --slow-policy decides what happens then."""

import re

MESSAGES = 1500
# ~1 KB lines: 1.5 MB in all, far beyond the 64 KiB sendq plus the 16 KiB
# kernel buffer (--sndbuf) plus the slow client's small receive buffer.
PAD = "x" * 900
# Lines sent before the readers catch up: 20 KB, well inside every bound,
# so that only the client that never reads is ever slow.
BURST = 20
# Small bounds so that the slow client fills them fast; no flood control,
# since the sender sends as fast as it can on purpose.
BOUNDS = ("--flood-rate", "0", "--sendq", "65536", "--sndbuf", "16384")
CHAT = re.compile(r"sender: (\d+) x+")


def _take_messages(client, count, others):
    """The seqs of the next count chat lines from sender; other lines go to others."""
    seqs = []
    while len(seqs) < count:
        line = client.line(timeout=30)
        match = CHAT.fullmatch(line)
        if match:
            seqs.append(int(match.group(1)))
        else:
            others.append(line)
    return seqs


def _chat_while_one_never_reads(server):
    """snail never reads; sender sends MESSAGES lines while reader reads.
    Returns the clients, reader's seqs and reader's other lines."""
    slow = server.named("snail", rcvbuf=4096)  # never reads from here on
    reader = server.named("reader")
    sender = server.named("sender")
    reader.expect("sender has arrived")
    seqs, others = [], []
    for start in range(0, MESSAGES, BURST):
        for seq in range(start, min(start + BURST, MESSAGES)):
            sender.say(f"{seq} {PAD}")
        batch = min(BURST, MESSAGES - start)
        _take_messages(sender, batch, [])  # its echoes, so that it never blocks
        seqs += _take_messages(reader, batch, others)
    return slow, reader, sender, seqs, others


def test_disconnect_policy_drops_the_slow_client_and_spares_the_others(start_gchat):
    server = start_gchat(*BOUNDS, "--slow-policy", "disconnect")
    slow, reader, sender, seqs, others = _chat_while_one_never_reads(server)
    assert seqs == list(range(MESSAGES))  # everything, in order
    assert others == ["snail has left (send queue exceeded)"]
    # The slow client got an in-order prefix, then the connection ended.
    got = [int(m) for m in re.findall(r"^sender: (\d+) ", "\n".join(slow.closed_after(30)), re.M)]
    assert got == list(range(len(got))) and len(got) < MESSAGES
    server.wait_for_log(r"snail left .*slow")


def test_drop_policy_skips_messages_in_order_and_says_how_many(start_gchat):
    server = start_gchat(*BOUNDS, "--slow-policy", "drop")
    slow, reader, sender, seqs, others = _chat_while_one_never_reads(server)
    assert seqs == list(range(MESSAGES))
    assert others == []  # nobody left
    sender.say("end")  # the slow client now reads everything up to this
    received, missed = [], 0
    while True:
        line = slow.line(timeout=30)
        if line == "sender: end":
            break
        match = CHAT.fullmatch(line)
        if match:
            received.append(int(match.group(1)))
        elif not line.endswith(" has arrived"):
            match = re.fullmatch(
                r"error: you were too slow to read; (\d+) messages were skipped", line
            )
            assert match, line
            missed += int(match.group(1))
    assert missed > 0
    assert received == sorted(set(received))  # in order, no duplicates
    assert len(received) + missed == MESSAGES  # each message arrived or was counted
