"""Rooms and history, driven without sockets (chat_harness): moving
between rooms, who hears what, history order and bounds, the registry's
LRU eviction, room name rules, and every error of /join."""

import pytest
from chat_harness import Harness, named
from hypothesis import given, settings
from hypothesis import strategies as st

from gchat import protocol as p
from gchat.events import Why


def crowd(h, names):
    """Clients named in the lobby, every held arrival announced and every
    line so far read."""
    people = [named(h, name) for name in names]
    h.now += 100
    for person in people:
        h.take(person)
    return people


def history_block(room, lines):
    return [
        f"--- last {len(lines)} line{'s' if len(lines) != 1 else ''} of #{room} ---",
        *lines,
        p.HISTORY_CLOSE,
    ]


def test_join_moves_the_client_and_each_room_hears_only_its_own():
    h = Harness()
    a, b, c = crowd(h, ["ann", "bob", "cid"])
    h.say(b, "/join #games")
    assert h.take(b) == ["You are now in #games", "Nobody else is here."]
    assert h.take(a) == ["bob has left (joined #games)"]
    h.take(c)
    h.say(c, "/join games")
    assert h.take(c) == ["You are now in #games", "Also here (1): bob"]
    assert h.take(b) == ["cid has arrived"]
    h.take(a)
    h.say(a, "lobby talk", "/me sits")
    h.say(b, "games talk", "/me plays", "/nick bobby")
    assert h.take(a) == ["ann: lobby talk", "* ann sits"]
    assert h.take(c) == ["bob: games talk", "* bob plays", "bob is now known as bobby"]
    assert h.take(b) == ["bob: games talk", "* bob plays", "bob is now known as bobby"]
    h.chat.depart(c, Why.IDLE)
    assert h.take(b) == ["cid has left (idle timeout)"]
    assert h.take(a) == []


def test_join_sends_room_line_roster_history_then_live_in_one_piece():
    h = Harness(history=3)
    a, b = named(h, "ann"), named(h, "bob")
    h.say(a, "/join den")
    for i in range(5):
        h.say(a, f"line {i}")
    h.say(a, "/me yawns", "/nick anne")  # a /nick is not kept in the history
    h.take(a), h.take(b)
    h.writes.clear()
    h.say(b, "/join DEN")
    h.say(a, "live")
    assert h.take(b) == [
        "You are now in #den",
        "Also here (1): anne",
        *history_block("den", ["ann: line 3", "ann: line 4", "* ann yawns"]),
        "anne: live",
    ]
    assert h.writes[b] == 1  # everything of the batch, history included, in one write


def test_history_keeps_chat_and_me_but_not_arrivals_departures_or_private_lines():
    h = Harness()
    a, b = named(h, "ann"), named(h, "bob")
    h.say(a, "hi", "/msg bob secret", "/me waves", "/who", "/help")
    h.chat.depart(b, Why.EOF)
    c = h.connect("c-addr")
    h.say(c, "cid")
    assert h.take(c) == [
        p.NAME_PROMPT,
        "You are cid",
        "Also here (1): ann",
        *history_block("lobby", ["ann: hi", "* ann waves"]),
    ]


def test_an_empty_history_sends_no_frame_and_history_zero_keeps_none():
    h = Harness(history=0)
    a = named(h, "ann")
    h.say(a, "said")
    c = h.connect("c-addr")
    h.say(c, "cid")
    assert h.take(c) == [p.NAME_PROMPT, "You are cid", "Also here (1): ann"]
    h2 = Harness()
    d = named(h2, "dan")
    h2.say(d, "/join quiet")
    assert h2.take(d) == ["You are now in #quiet", "Nobody else is here."]


def test_an_emptied_room_keeps_its_history_for_a_later_joiner():
    h = Harness()
    a, b = named(h, "ann"), named(h, "bob")
    h.say(a, "/join attic", "dusty", "/join lobby")
    h.take(a), h.take(b)
    assert h.chat.rooms.get("attic").size == 0
    h.say(b, "/join Attic")
    assert h.take(b) == [
        "You are now in #attic",
        "Nobody else is here.",
        *history_block("attic", ["ann: dusty"]),
    ]


@pytest.mark.parametrize("history", [1, 2, 7])
def test_history_is_bounded_and_in_order(history):
    h = Harness(history=history)
    a = named(h, "ann")
    for i in range(20):
        h.say(a, f"m{i}")
    c = h.connect("c-addr")
    h.say(c, "cid")
    got = h.take(c)[3:]
    assert got == history_block("lobby", [f"ann: m{i}" for i in range(20 - history, 20)])


def test_a_move_in_the_middle_of_a_batch_keeps_the_clients_output_in_order():
    """Everything before one flush: the mover gets what its old room said
    before it left, then its new room's lines, never one room's lines
    after the other's out of turn."""
    h = Harness()
    a, b, c = named(h, "ann"), named(h, "bob"), named(h, "cid")
    h.say(c, "/join x")
    h.take(a), h.take(b), h.take(c)
    h.say(a, "one")
    h.say(c, "in x")
    h.say(b, "/join x")
    h.say(a, "two")
    h.say(c, "/msg bob psst")
    h.say(b, "/join lobby")
    h.say(a, "three")
    assert h.take(b) == [
        "ann: one",
        "You are now in #x",
        "Also here (1): cid",
        *history_block("x", ["cid: in x"]),
        "cid (private): psst",
        "You are now in #lobby",
        "Also here (1): ann",
        *history_block("lobby", ["ann: one", "ann: two"]),
        "ann: three",
    ]
    assert h.take(a) == [
        "ann: one",
        "bob has left (joined #x)",
        "ann: two",
        "bob has arrived",
        "ann: three",
    ]
    assert h.take(c) == [
        "cid: in x",
        "bob has arrived",
        "cid (private to bob): psst",
        "bob has left (joined #lobby)",
    ]


def test_msg_reaches_a_name_in_any_room_and_who_lists_only_ones_own_room():
    h = Harness()
    a, b, c = named(h, "ann"), named(h, "bob"), named(h, "cid")
    h.say(b, "/join far")
    h.take(a), h.take(b), h.take(c)
    h.say(a, "/msg BOB hello")
    assert h.take(b) == ["ann (private): hello"]
    assert h.take(a) == ["ann (private to bob): hello"]
    assert h.take(c) == []
    h.say(b, "/who")
    assert h.take(b) == ["Here now (1): bob"]
    h.say(a, "/who")
    assert h.take(a) == ["Here now (2): ann, cid"]


def test_join_errors_leave_the_client_where_it_was():
    h = Harness(max_rooms=2, room_name_max=5)
    a, b = named(h, "ann"), named(h, "bob")
    h.say(b, "/join b")
    h.take(a), h.take(b)
    for command, error in [
        ("/join", "error: usage: /join ROOM"),
        ("/join #", "error: a room name needs at least one character"),
        ("/join sixsix", "error: a room name has at most 5 characters"),
        ("/join a!", "error: '!' is not allowed in a room name (letters, digits, _ - . only)"),
        (
            "/join a b",
            "error: 'U+0020' is not allowed in a room name (letters, digits, _ - . only)",
        ),
        ("/join LOBBY", "error: you are already in #lobby"),
        ("/join new", "error: too many rooms (2); join an existing one (/rooms lists them)"),
    ]:
        h.say(a, command)
        assert h.take(a) == [error], command
    h.say(a, "still here")
    assert h.take(a) == ["ann: still here"]
    assert h.take(b) == []
    assert h.chat.counts["joins"] == 1


def test_room_names_are_cleaned_of_controls_and_compared_after_nfkc_and_case_folding():
    h = Harness()
    a, b = crowd(h, ["ann", "bob"])
    h.say(a, b"/join bad\x1b[31mroom")
    err = h.take(a)
    assert len(err) == 1 and err[0].startswith("error: ") and "\x1b" not in err[0]
    h.say(a, "/join Games")
    h.say(b, "/join #ＧＡＭＥＳ")  # full-width: the same room after NFKC
    h.take(a)
    assert h.take(b) == [
        "ann has left (joined #Games)",
        "You are now in #Games",
        "Also here (1): ann",
    ]
    assert len(h.chat.rooms) == 2


def test_the_least_recently_used_empty_room_is_dropped_for_a_new_one():
    h = Harness(max_rooms=3)
    a, b = named(h, "ann"), named(h, "bob")
    h.say(a, "/join old", "in old", "/join newer", "in newer", "/join lobby")
    assert set(h.chat.rooms.rooms) == {"lobby", "old", "newer"}
    h.say(b, "/join third")  # both empty rooms may go; the older one does
    assert set(h.chat.rooms.rooms) == {"lobby", "newer", "third"}
    assert h.chat.rooms.dropped == 1
    h.take(a), h.take(b)
    h.say(a, "/join old")  # made anew: the old history went with it ...
    assert set(h.chat.rooms.rooms) == {"lobby", "old", "third"}  # ... and "newer" went too
    assert h.take(a) == ["You are now in #old", "Nobody else is here."]


def test_the_lobby_is_never_dropped_and_a_room_with_people_never_is():
    h = Harness(max_rooms=2)
    a, b = named(h, "ann"), named(h, "bob")
    h.say(a, "/join x")
    h.say(b, "/join y")  # lobby (empty) and x (ann): nothing may go
    assert h.take(b)[-1].startswith("error: too many rooms (2)")
    h.say(a, "/join lobby")
    h.say(b, "/join y")  # x is empty now and goes
    assert set(h.chat.rooms.rooms) == {"lobby", "y"}


def test_rooms_lists_own_room_first_then_the_fullest_bounded_with_exact_counts():
    h = Harness(roster_limit=3)
    people = [named(h, f"p{i}") for i in range(7)]
    for person, room in zip(people, ["a", "b", "b", "c", "c", "c"]):
        h.say(person, f"/join {room}")
    h.say(people[1], "/join d", "/join b")  # d is left empty
    h.take(people[0])
    h.say(people[0], "/rooms")
    assert h.take(people[0]) == ["Rooms (5): #a (1, you are here), #c (3), #b (2), and 2 more"]
    h.take(people[6])
    h.say(people[6], "/rooms")
    assert h.take(people[6]) == ["Rooms (5): #lobby (1, you are here), #c (3), #b (2), and 2 more"]


def test_departures_are_announced_in_the_room_the_client_was_in():
    h = Harness()
    a, b, c = named(h, "ann"), named(h, "bob"), named(h, "cid")
    h.say(c, "/join side")
    h.say(b, "/join side")
    h.take(a), h.take(b)
    h.say(c, "/quit later")
    assert h.take(b) == ["cid has left (later)"]
    assert h.take(a) == []


def test_departures_in_a_big_room_are_merged_and_no_name_is_lost():
    h = Harness(arrival_merge_threshold=3, arrival_merge_window=0.5, roster_limit=50)
    people = crowd(h, [f"p{i}" for i in range(6)])
    h.say(people[1], "/join elsewhere")
    h.chat.depart(people[2], Why.IDLE)
    h.chat.depart(people[3], Why.EOF)
    assert h.take(people[0]) == []  # held back within the window
    h.now += 0.5
    assert h.take(people[0]) == ["p1 (joined #elsewhere), p2 (idle timeout), p3 have left"]
    h.chat.depart(people[4], Why.EOF)  # 3 were here: still big, held back
    # 2 were here: small, told at once, after what was held back.
    h.chat.depart(people[5], Why.EOF)
    assert h.take(people[0]) == ["p4 has left", "p5 has left"]


def test_held_departures_are_told_before_anything_else_said():
    h = Harness(arrival_merge_threshold=2, arrival_merge_window=10)
    a, b, c = crowd(h, ["a", "b", "c"])
    h.chat.depart(c, Why.EOF)
    h.say(b, "after")
    assert h.take(a) == ["c has left", "b: after"]


def test_merged_departures_show_at_most_roster_limit_names_and_count_the_rest():
    h = Harness(arrival_merge_threshold=2, arrival_merge_window=0, roster_limit=2)
    people = crowd(h, [f"p{i}" for i in range(6)])
    for person in people[1:5]:
        h.chat.depart(person, Why.EOF)
    assert h.take(people[0]) == ["p1, p2 and 2 more have left"]


def test_a_join_storm_through_a_big_lobby_costs_the_lobby_one_line_per_window():
    h = Harness(arrival_merge_threshold=2, arrival_merge_window=1.0)
    watcher, *others = crowd(h, ["w"] + [f"o{i}" for i in range(5)])
    for i, person in enumerate(others):
        h.say(person, f"/join r{i}")
    h.now += 1
    assert h.take(watcher) == [
        "o0 (joined #r0), o1 (joined #r1), o2 (joined #r2), o3 (joined #r3), "
        "o4 (joined #r4) have left"
    ]


def test_arrivals_and_departures_of_one_window_are_told_departures_first():
    """A name freed and taken again in one window reads in the right order."""
    h = Harness(arrival_merge_threshold=2, arrival_merge_window=1.0)
    a, b, x = crowd(h, ["a", "b", "x"])
    h.chat.depart(x, Why.EOF)
    again = h.connect("x2-addr")
    h.say(again, "x")
    h.now += 1
    assert h.take(a) == ["x has left", "x has arrived"]
    assert h.take(again)[-1] == "Also here (2): a, b"


def test_compat_has_no_rooms_and_no_history():
    h = Harness(compat=True)
    a = h.connect("1.1.1.1:1")
    h.say(a, "/join x", "/rooms")
    b = h.connect("2.2.2.2:2")
    assert h.take(b) == ["You are 2.2.2.2:2"]
    assert h.take(a) == [
        "You are 1.1.1.1:1",
        "1.1.1.1:1: /join x",
        "1.1.1.1:1: /rooms",
        "2.2.2.2:2 has arrived",
    ]
    assert len(h.chat.rooms) == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(["say", "join", "quit", "back", "name"])),
        max_size=60,
    )
)
def test_every_client_is_in_exactly_one_room_and_rooms_stay_within_bounds(steps):
    """Random moves, lines and departures: the registry, the names and the
    rooms' members always agree, and nobody is told a line of a room it
    was not in."""
    h = Harness(max_rooms=3, history=2)
    clients = {}
    for i, action in steps:
        conn = clients.get(i)
        if conn is None or conn not in h.chat.connected:
            clients[i] = named(h, f"c{i}-{len(h.chat.names)}{action}")
            continue
        if action == "say":
            h.say(conn, f"from {conn.room.name}")
        elif action == "join":
            h.say(conn, f"/join r{(i + len(steps)) % 4}")
        elif action == "back":
            h.say(conn, "/join lobby")
        elif action == "quit":
            h.say(conn, "/quit")
        for other in list(h.chat.connected):
            for line in h.take(other):
                if line.startswith("c") and ": from " in line and "(private" not in line:
                    assert line.endswith(f"from {other.room.name}"), (other, line)
    chat = h.chat
    assert len(chat.rooms) <= 3
    in_rooms = [c for room in chat.rooms.rooms.values() for c in (*room.members, *room.arriving)]
    assert sorted(map(id, in_rooms)) == sorted(map(id, chat.connected))
    assert set(chat.names.values()) == chat.connected
    for conn in chat.connected:
        assert chat.rooms.get(conn.room.key) is conn.room
    for key, room in chat.rooms.empty.items():
        assert room.size == 0 and room is not chat.lobby and chat.rooms.get(key) is room


def test_a_held_newcomer_that_leaves_ends_the_wait_and_a_message_to_one_announces_it():
    h = Harness(arrival_merge_threshold=2, arrival_merge_window=5)
    a, b = crowd(h, ["a", "b"])
    c = h.connect("c-addr")
    h.say(c, "c")
    assert h.chat.due(h.now) == pytest.approx(5)
    h.chat.depart(c, Why.EOF)  # never announced, and nothing else is held
    assert h.chat.due(h.now) is None and not h.chat.holding
    d = h.connect("d-addr")
    h.say(d, "d")
    h.say(a, "/msg d hi")
    assert h.take(d) == [p.NAME_PROMPT, "You are d", "Also here (2): a, b", "a (private): hi"]
    assert h.take(b) == ["d has arrived"]


def test_deliveries_and_bytes_are_counted_exactly_members_with_views_included():
    """A member with a line of its own in a batch (a private line, an
    error) still receives the batch's broadcasts, and they count."""
    h = Harness()
    a, b, c = crowd(h, ["ann", "bob", "cid"])
    before = h.chat.counts["bytes_out"]
    deliveries = []
    h.say(a, "one", "/msg bob psst", "two")  # bob gets a view of its own
    h.say(c, "/nosuch")  # so does cid (an error)

    def deliver(conn, data):
        deliveries.append(data)

    counted = h.chat.flush(deliver)
    assert counted == 2 * 3  # two broadcast lines, three recipients
    assert h.chat.counts["bytes_out"] - before == sum(map(len, deliveries))
