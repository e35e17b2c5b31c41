"""The chat's rules in one room, driven without sockets: fake connections,
the real Chat, Room and Fanout, and the bytes each connection would be
sent.  Rooms, history and moves: test_rooms.py."""

import pytest
from chat_harness import Harness, named

from gchat import protocol as p
from gchat.events import Why


def test_compat_greeting_arrival_chat_and_leaving():
    h = Harness(compat=True)
    a = h.connect("1.1.1.1:1")
    assert h.take(a) == ["You are 1.1.1.1:1"]
    b = h.connect("2.2.2.2:2")
    h.say(b, "hi", "/who")
    assert h.take(a) == ["2.2.2.2:2 has arrived", "2.2.2.2:2: hi", "2.2.2.2:2: /who"]
    assert h.take(b) == ["You are 2.2.2.2:2", "2.2.2.2:2: hi", "2.2.2.2:2: /who"]
    h.chat.depart(b, Why.IDLE)
    assert h.take(a) == ["2.2.2.2:2 has left"]  # no reason in --compat


def test_arrival_and_chat_in_one_batch_reach_each_client_in_order():
    """Everything happens before one flush: each client still sees its own
    correct sequence (the newcomer does not hear of its own arrival)."""
    h = Harness()
    a = h.connect("a-addr")
    h.say(a, "ann")
    h.say(a, "before")
    b = h.connect("b-addr")
    h.say(b, "bob")
    h.say(a, "after")
    assert h.take(a) == [
        p.NAME_PROMPT,
        "You are ann",
        "Nobody else is here.",
        "ann: before",
        "bob has arrived",
        "ann: after",
    ]
    # The newcomer's history holds what was said before it came, framed,
    # and then live lines: "ann: before" once, "ann: after" once.
    assert h.take(b) == [
        p.NAME_PROMPT,
        "You are bob",
        "Also here (1): ann",
        "--- last 1 line of #lobby ---",
        "ann: before",
        p.HISTORY_CLOSE,
        "ann: after",
    ]


def test_private_lines_are_interleaved_in_order_with_broadcasts():
    h = Harness()
    a, b = named(h, "ann"), named(h, "bob")
    h.take(a)
    h.say(a, "one", "/msg bob two", "three")
    assert h.take(b) == ["ann: one", "ann (private): two", "ann: three"]
    assert h.take(a) == ["ann: one", "ann (private to bob): two", "ann: three"]


def test_departure_mid_batch_gets_what_came_before_and_its_farewell():
    h = Harness()
    a, b = named(h, "ann"), named(h, "bob")
    h.take(a)
    h.say(a, "first")
    h.say(b, "/quit bye all", "never sent")
    h.say(a, "second")
    departed = h.flush()
    assert departed == [(b, Why.QUIT)]
    assert h.received.pop(b).decode().splitlines() == ["ann: first", "Goodbye."]
    assert h.received.pop(a).decode().splitlines() == [
        "ann: first",
        "bob has left (bye all)",
        "ann: second",
    ]


def test_name_taken_and_freed_after_departure():
    h = Harness()
    a = named(h, "Zed")
    c = h.connect("c-addr")
    h.say(c, "zED")
    assert h.take(c) == [p.NAME_PROMPT, "error: the name zED is taken", p.NAME_PROMPT_AGAIN]
    h.chat.depart(a, Why.EOF)
    h.say(c, "zED")
    assert h.take(c)[0] == "You are zED"


def test_too_long_lines_get_an_error_and_the_client_stays():
    h = Harness(max_line=10)
    a = named(h, "ann")
    h.say(a, p.TOO_LONG, "ok")
    assert h.take(a) == ["error: line longer than 10 bytes discarded", "ann: ok"]
    assert a in h.chat.connected


def test_blank_lines_say_nothing_in_name_mode():
    h = Harness()
    a = named(h, "ann")
    h.say(a, "", "   ", "x")
    assert h.take(a) == ["ann: x"]


def test_roster_for_a_newcomer_is_bounded_but_counts_everyone():
    h = Harness(roster_limit=2)
    for name in ["a", "b", "c", "d"]:
        named(h, name)
    e = h.connect("e-addr")
    h.say(e, "e")
    assert h.take(e)[2] == "Also here (4): a, b, and 2 more (/who lists all)"
    h.say(e, "/who")
    assert h.take(e) == ["Here now (5): a, b, c, d, e"]


def test_every_departure_reason_is_told_to_the_others_and_the_client():
    for why, farewell, left in [
        (Why.IDLE, "error: idle for 300 s; disconnecting", "x has left (idle timeout)"),
        (Why.SLOW, p.SENDQ_EXCEEDED, "x has left (send queue exceeded)"),
        (Why.EOF, None, "x has left"),
        (Why.ERROR, None, "x has left (connection lost)"),
    ]:
        h = Harness()
        watcher, x = named(h, "w"), named(h, "x")
        h.take(watcher)
        h.chat.depart(x, why)
        h.chat.depart(x, why)  # a second report of the same end changes nothing
        assert h.take(watcher) == [left]
        assert h.take(x) == ([farewell] if farewell else [])
        assert h.chat.counts["departures"] == 1


def test_name_timeout_of_a_nameless_client_is_told_to_it_alone():
    h = Harness()
    w = named(h, "w")
    n = h.connect("n-addr")
    h.take(n)
    h.chat.depart(n, Why.NAME_TIMEOUT)
    assert h.take(n) == ["error: no name given within 60 s; disconnecting"]
    assert h.take(w) == []


def test_shutdown_says_goodbye_to_everyone_without_departure_lines():
    h = Harness()
    a, b = named(h, "a"), named(h, "b")
    n = h.connect("n-addr")
    h.take(a), h.take(n)
    h.chat.shutdown()
    assert h.take(a) == [p.SHUTDOWN]
    assert h.take(b) == [p.SHUTDOWN]
    assert h.take(n) == [p.SHUTDOWN]
    assert not h.chat.connected and not h.chat.names


def test_lines_after_quit_in_the_same_chunk_are_ignored():
    h = Harness()
    a, b = named(h, "a"), named(h, "b")
    h.take(a)
    h.say(b, "/quit", "ghost")
    assert "b: ghost" not in h.take(a)


def test_names_are_cleaned_of_controls_before_the_rules():
    h = Harness()
    c = h.connect("c-addr")
    h.say(c, b"bad\x1bname")
    lines = h.take(c)
    assert lines[1].startswith("error: ") and "\x1b" not in "".join(lines)


def test_arrival_storm_in_a_big_room_is_announced_in_one_line():
    h = Harness(arrival_merge_threshold=3, roster_limit=2, arrival_merge_window=0)
    old = [named(h, name) for name in ["a", "b", "c"]]
    h.take(old[0])
    newcomers = [h.connect(f"n{i}-addr") for i in range(4)]
    for i, conn in enumerate(newcomers):
        h.say(conn, f"n{i}")
    h.say(old[1], "hello")
    assert h.take(old[0]) == ["n0, n1 and 2 more have arrived", "b: hello"]
    # Each newcomer's roster counts everyone present at the announcement.
    assert h.take(newcomers[0]) == [
        p.NAME_PROMPT,
        "You are n0",
        "Also here (6): a, b, and 4 more (/who lists all)",
        "b: hello",
    ]
    assert h.take(newcomers[3])[2] == "Also here (6): a, b, and 4 more (/who lists all)"


def test_held_back_arrivals_wait_for_the_merge_window():
    h = Harness(arrival_merge_threshold=1, arrival_merge_window=0.5)
    a = named(h, "a")
    h.take(a)
    c = h.connect("c-addr")
    h.say(c, "c")
    assert h.chat.due(h.now + 0.2) == pytest.approx(0.3)
    assert h.take(a) == []  # still inside the window
    h.now += 0.5
    assert h.take(a) == ["c has arrived"]
    assert h.chat.due(h.now) is None


def test_a_single_arrival_in_a_big_room_keeps_the_exact_line():
    h = Harness(arrival_merge_threshold=2, arrival_merge_window=0)
    a = named(h, "a")
    named(h, "b")
    h.take(a)
    c = h.connect("c-addr")
    h.say(c, "c")
    assert h.take(a) == ["c has arrived"]
    assert h.take(c)[1:] == ["You are c", "Also here (2): a, b"]


def test_newcomer_that_leaves_before_its_announcement_is_never_mentioned():
    h = Harness(arrival_merge_threshold=1)
    a = named(h, "a")
    h.take(a)
    c = h.connect("c-addr")
    h.say(c, "c")
    h.chat.depart(c, Why.EOF)
    assert h.take(a) == []
    assert "c" not in h.chat.lobby.names()


def test_compat_never_merges_arrivals():
    h = Harness(compat=True, arrival_merge_threshold=1)
    a = h.connect("1:1")
    h.take(a)
    for i in range(3):
        h.connect(f"{i}:2")
    assert h.take(a) == ["0:2 has arrived", "1:2 has arrived", "2:2 has arrived"]
