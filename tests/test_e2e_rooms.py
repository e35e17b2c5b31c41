"""Rooms and history (name mode), end to end over real sockets against the
gchat console script: rooms that do not hear each other, /join and its
errors, /rooms, history blocks, the least recently used empty room dropped
at --max-rooms, departures in the right room (merged in big rooms), bursts
of /join, and --compat untouched.  Every wait has a deadline; quiet() is
used only to check that something did NOT happen."""

import re
import socket
import struct
import time

import pytest

END = "--- end of history ---"


# --- Helpers -----------------------------------------------------------


def header(room, count):
    """The history block's first line (the spec's "last N lines", in the
    singular for one line)."""
    return f"--- last {count} line{'' if count == 1 else 's'} of #{room} ---"


def roster_names(line):
    """The names in a roster line ("Nobody else is here." or
    "Also here (N): a, b"), checking that N counts them when all are shown."""
    if line == "Nobody else is here.":
        return set()
    match = re.fullmatch(r"Also here \((\d+)\): (.*?)(, and (\d+) more \(/who lists all\))?", line)
    assert match, line
    names = match.group(2).split(", ")
    assert int(match.group(1)) == len(names) + int(match.group(4) or 0), line
    return set(names)


def who_names(line):
    match = re.fullmatch(r"Here now \((\d+)\): (.*)", line)
    assert match, line
    names = match.group(2).split(", ")
    assert int(match.group(1)) == len(names), line
    return set(names)


def expect_history(client, room, lines):
    """The history block of room, exactly lines; with no lines, that no
    block follows: the answer to a /who sent now is the very next line."""
    if lines:
        assert client.lines(len(lines) + 2) == [header(room, len(lines)), *lines, END]
    else:
        client.say("/who")
        client.expect(r"Here now \(\d+\): .*")


def join(client, arg, shown, others=None, history=None):
    """client sends `/join arg` and receives "You are now in #shown" and a
    roster line (naming exactly others, when given), then, when history is
    given, exactly that history block (or none, for [])."""
    client.say(f"/join {arg}")
    client.expect(f"You are now in {re.escape('#' + shown)}")
    roster = client.expect(r"Nobody else is here\.|Also here \(\d+\): .*")
    if others is not None:
        assert roster_names(roster) == set(others), roster
    if history is not None:
        expect_history(client, shown, history)
    return roster


def enter(server, name, room, *present):
    """A client named name, moved from the (empty) lobby into room, where
    the clients present already are: they each hear it arrive."""
    client = server.named(name)
    client.nick = name
    join(client, room, room, others={p.nick for p in present})
    for other in present:
        other.expect(f"{re.escape(name)} has arrived")
    return client


def everyone_hears(clients, line):
    """Each client's very next line is line."""
    for client in clients:
        client.expect(re.escape(line))


def rooms(client):
    """/rooms, parsed: (total, [(name, count, own)], more)."""
    client.say("/rooms")
    line = client.expect(r"Rooms \(\d+\): .*")
    match = re.fullmatch(r"Rooms \((\d+)\): (.*?)(?:, and (\d+) more)?", line)
    assert match, line
    entries = [
        (name, int(count), bool(own))
        for name, count, own in re.findall(r"(#[^ ,]+) \((\d+)(, you are here)?\)", match.group(2))
    ]
    assert ", ".join(
        f"{n} ({c}{', you are here' if o else ''})" for n, c, o in entries
    ) == match.group(2), line
    return int(match.group(1)), entries, int(match.group(3) or 0)


def reset(client):
    """Close with an RST, as a crashed peer does."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


# --- Rooms keep to themselves ------------------------------------------


def test_two_rooms_do_not_hear_each_other(gchat):
    alice = enter(gchat, "alice", "red")
    bob = enter(gchat, "bob", "red", alice)
    carol = enter(gchat, "carol", "blue")
    dave = enter(gchat, "dave", "blue", carol)
    red, blue = [alice, bob], [carol, dave]

    alice.say("hello red")
    everyone_hears(red, "alice: hello red")
    bob.say("/me waves")
    everyone_hears(red, "* bob waves")
    alice.say("/nick alicia")
    everyone_hears(red, "alice is now known as alicia")
    # blue's next line is its own chat: none of red's lines reached it
    carol.say("blue only")
    everyone_hears(blue, "carol: blue only")

    erin = gchat.named("erin")  # arrives in the lobby: neither room hears of it
    join(erin, "red", "red", others={"alicia", "bob"}, history=["alice: hello red", "* bob waves"])
    everyone_hears(red, "erin has arrived")  # red's next line: not carol's chat
    erin.say("/me looks around")
    everyone_hears(red + [erin], "* erin looks around")
    erin.close()
    everyone_hears(red, "erin has left")
    dave.say("still blue")
    everyone_hears(blue, "dave: still blue")  # no arrival, action or departure of erin's
    bob.say("still red")
    everyone_hears(red, "bob: still red")
    assert all(client.quiet() for client in red + blue)


def test_join_sends_room_line_roster_history_then_live_lines(gchat):
    host = enter(gchat, "host", "Games")  # the creator's spelling is the one shown
    host.say("one")
    host.say("/me deals")
    host.expect("host: one")
    host.expect(r"\* host deals")
    stay = gchat.named("stay")
    guest = gchat.named("guest")
    stay.expect("guest has arrived")
    guest.send("/join #games\n/who\n")  # the answer to /who is live, after the block
    expected = [
        "You are now in #Games",
        "Also here (1): host",
        "--- last 2 lines of #Games ---",
        "host: one",
        "* host deals",
        END,
    ]
    assert guest.lines(len(expected)) == expected
    assert who_names(guest.line()) == {"host", "guest"}
    host.expect("guest has arrived")
    stay.expect(r"guest has left \(joined #Games\)")
    host.say("live")
    guest.expect("host: live")
    host.expect("host: live")
    # the block came as a whole: nothing in between, whatever the segmentation
    assert ("\n".join(expected) + "\n").encode() in guest.raw
    assert stay.quiet()  # the lobby heard nothing of #Games


def test_old_room_hears_left_joined_and_new_room_hears_arrived(gchat):
    tea = enter(gchat, "tea", "Tea")
    watcher = gchat.named("watcher")
    mover = gchat.named("mover")
    watcher.expect("mover has arrived")
    join(mover, "tea", "Tea", others={"tea"}, history=[])
    watcher.expect(r"mover has left \(joined #Tea\)")
    tea.expect("mover has arrived")
    join(mover, "#LOBBY", "lobby", others={"watcher"}, history=[])
    tea.expect(r"mover has left \(joined #lobby\)")
    watcher.expect("mover has arrived")
    assert tea.quiet() and watcher.quiet()


def test_room_names_compare_after_nfkc_and_casefold(start_gchat):
    server = start_gchat("--flood-rate", "0")
    first = enter(server, "first", "games")
    held = []  # kept open: a client garbage-collected would leave
    for name, arg in [
        ("plain", "games"),
        ("hash", "#games"),
        ("upper", "GAMES"),
        ("wide", "ＧＡＭＥＳ"),
        ("widehash", "#Ｇａｍｅｓ"),
    ]:
        client = server.named(name)
        held.append(client)
        join(client, arg, "games")  # the same room: its spelling as created
        first.expect(f"{name} has arrived")
        client.say("/join #gAmEs")
        client.expect("error: you are already in #games")
    first.say("/join ＧＡＭＥＳ")
    first.expect("error: you are already in #games")
    assert rooms(first) == (2, [("#games", 6, True), ("#lobby", 0, False)], 0)
    # a ligature is the same room as its letters (NFKC)
    fi = server.named("fi")
    join(fi, "ﬁle", "ﬁle", others=())
    fi2 = server.named("fi2")
    join(fi2, "FILE", "ﬁle", others={"fi"})
    fi.expect("fi2 has arrived")
    # 32 characters (the "#" not counted) is long enough
    join(fi, "x" * 32, "x" * 32, others=())
    join(fi, "#" + "y" * 32, "y" * 32, others=())


def test_join_errors_leave_the_client_where_it_was(start_gchat):
    server = start_gchat("--max-rooms", "2", "--flood-rate", "0")
    away = enter(server, "away", "one")
    a = server.named("a")
    c = server.named("c")
    a.expect("c has arrived")  # lobby: a, c; #one: away; two rooms, both with members
    cases = [
        ("/join", re.escape("error: usage: /join ROOM")),
        ("/JOIN   ", re.escape("error: usage: /join ROOM")),
        ("/join #", r"error: (usage: /join ROOM|a room name .*)"),
        (
            "/join bad!name",
            re.escape("error: '!' is not allowed in a room name (letters, digits, _ - . only)"),
        ),
        ("/join two words", r"error: .*"),
        ("/join " + "x" * 33, "error: a room name has at most 32 characters"),
        ("/join #" + "x" * 33, "error: a room name has at most 32 characters"),
        ("/join lobby", "error: you are already in #lobby"),
        ("/join #LOBBY", "error: you are already in #lobby"),
        (
            "/join two",
            re.escape("error: too many rooms (2); join an existing one (/rooms lists them)"),
        ),
    ]
    for i, (line, error) in enumerate(cases):
        a.say(line)
        a.expect(error)
        a.say(f"still here {i}")  # a is still in the lobby: c hears it, #one does not
        a.expect(f"a: still here {i}")
        c.expect(f"a: still here {i}")
    away.say("/join one")
    away.expect("error: you are already in #one")
    away.say("/join " + "z" * 32)
    away.expect(re.escape("error: too many rooms (2); join an existing one (/rooms lists them)"))
    away.say("away still in one")
    away.expect("away: away still in one")
    assert c.quiet()  # none of away's lines, nor a's errors, reached c
    # an existing room can still be joined at the limit...
    join(a, "one", "one", others={"away"}, history=["away: away still in one"])
    away.expect("a has arrived")
    c.expect(r"a has left \(joined #one\)")
    join(c, "ONE", "one", others={"away", "a"}, history=["away: away still in one"])
    away.expect("c has arrived")
    a.expect("c has arrived")
    # ...and the lobby, now empty, is never dropped to make room
    c.say("/join two")
    c.expect(re.escape("error: too many rooms (2); join an existing one (/rooms lists them)"))
    c.say("in one")
    everyone_hears([away, a, c], "c: in one")
    assert rooms(c) == (2, [("#one", 3, True), ("#lobby", 0, False)], 0)


# --- --max-rooms: the least recently used empty room goes ---------------


def test_least_recently_used_empty_room_is_dropped_never_the_lobby(start_gchat):
    server = start_gchat("--max-rooms", "3", "--flood-rate", "0")
    b = server.named("b")
    b.say("in the lobby")
    b.expect("b: in the lobby")
    join(b, "x", "x", others=(), history=[])  # the lobby is empty now, and the oldest
    b.say("x line")
    b.expect("b: x line")
    join(b, "y", "y", others=(), history=[])
    b.say("y line")
    b.expect("b: y line")
    join(b, "lobby", "lobby", others=(), history=["b: in the lobby"])
    # lobby (b), #x (0), #y (0): at the limit.  A new room drops #x, the
    # least recently used empty room, and keeps #y.
    join(b, "z", "z", others=(), history=[])
    total, entries, more = rooms(b)
    assert (total, more, entries[0]) == (3, 0, ("#z", 1, True))
    assert sorted(entries[1:]) == [("#lobby", 0, False), ("#y", 0, False)]
    join(b, "y", "y", others=(), history=["b: y line"])  # #y was kept, history and all
    # #x was dropped: its history is gone.  Now the lobby (emptied before
    # #z) and #z are empty: #z goes, since the lobby never does.
    join(b, "x", "x", others=(), history=[])
    total, entries, more = rooms(b)
    assert (total, more, entries[0]) == (3, 0, ("#x", 1, True))
    assert sorted(entries[1:]) == [("#lobby", 0, False), ("#y", 0, False)]
    # the lobby was never dropped: its history is still there for a newcomer
    c = server.client()
    c.line()
    c.say("c")
    assert c.lines(5) == [
        "You are c",
        "Nobody else is here.",
        header("lobby", 1),
        "b: in the lobby",
        END,
    ]
    join(c, "y", "y", others=(), history=["b: y line"])
    # lobby (0), #x (b), #y (c): the only empty room is the lobby, so no new room
    b.say("/join w")
    b.expect(re.escape("error: too many rooms (3); join an existing one (/rooms lists them)"))
    b.say("still in x")
    b.expect("b: still in x")
    assert c.quiet()


# --- History -----------------------------------------------------------


def test_history_keeps_the_last_n_chat_and_me_lines_only(start_gchat):
    server = start_gchat("--history", "3")
    a = enter(server, "a", "h")
    b = enter(server, "b", "h", a)
    a.say("one")
    a.say("two")
    a.say("/me three")
    for line in ["a: one", "a: two", "* a three"]:
        everyone_hears([a, b], line)
    b.say("/nick bee")
    everyone_hears([a, b], "b is now known as bee")
    b.say("/msg a private")
    a.expect(r"bee \(private\): private")
    b.expect(r"bee \(private to a\): private")
    b.say("/join")
    b.expect("error: usage: /join ROOM")
    a.say("four")
    everyone_hears([a, b], "a: four")
    passer = server.named("passer")  # comes and goes: neither is history
    join(passer, "h", "h", others={"a", "bee"}, history=["a: two", "* a three", "a: four"])
    everyone_hears([a, b], "passer has arrived")
    passer.close()
    everyone_hears([a, b], "passer has left")
    late = server.named("late")
    join(late, "h", "h", others={"a", "bee"}, history=["a: two", "* a three", "a: four"])


def test_history_of_an_emptied_room_is_seen_by_a_later_joiner(gchat):
    a = enter(gchat, "a", "attic")
    a.say("anyone?")
    a.expect(re.escape("a: anyone?"))
    a.say("/me leaves a note")
    a.expect(r"\* a leaves a note")
    a.close()
    b = gchat.named("b")
    join(b, "ATTIC", "attic", others=(), history=["a: anyone?", "* a leaves a note"])
    b.say("/who")
    b.expect(r"Here now \(1\): b")


def test_lobby_history_follows_the_roster_after_naming(gchat):
    a = gchat.named("a")
    a.say("hello lobby")
    a.expect("a: hello lobby")
    b = gchat.client()
    b.line()
    b.send("b\n/who\n")
    expected = ["You are b", "Also here (1): a", header("lobby", 1), "a: hello lobby", END]
    assert b.lines(5) == expected
    assert who_names(b.line()) == {"a", "b"}  # live lines after the block
    assert ("\n".join(expected) + "\n").encode() in b.raw
    a.expect("b has arrived")


def test_empty_history_sends_no_frame_lines(gchat):
    a = gchat.named("a")
    b = gchat.client()
    b.line()
    b.send("b\n/who\n")  # nobody spoke in the lobby: the /who answer follows the roster
    assert b.lines(2) == ["You are b", "Also here (1): a"]
    assert who_names(b.line()) == {"a", "b"}
    a.expect("b has arrived")
    join(a, "fresh", "fresh", others=(), history=[])
    b.expect(r"a has left \(joined #fresh\)")
    join(b, "fresh", "fresh", others={"a"}, history=[])  # arrivals are not history
    assert b"---" not in b.raw and b"---" not in a.raw


def test_history_zero_sends_none(start_gchat):
    server = start_gchat("--history", "0")
    a = server.named("a")
    a.say("lobby line")
    a.expect("a: lobby line")
    b = server.client()
    b.line()
    b.send("b\n/who\n")
    assert b.lines(2) == ["You are b", "Also here (1): a"]
    assert who_names(b.line()) == {"a", "b"}
    a.expect("b has arrived")
    join(a, "den", "den", others=(), history=[])
    b.expect(r"a has left \(joined #den\)")
    a.say("den line")
    a.expect("a: den line")
    join(b, "den", "den", others={"a"}, history=[])
    assert b"---" not in b.raw


# --- /msg, /who, /rooms ------------------------------------------------


def test_msg_crosses_rooms_and_who_lists_own_room_only(gchat):
    a = enter(gchat, "a", "red")
    c = enter(gchat, "c", "red", a)
    b = enter(gchat, "b", "blue")
    a.say("/msg B hi there")
    b.expect(r"a \(private\): hi there")
    a.expect(r"a \(private to b\): hi there")
    b.say("/msg a back at you")
    a.expect(r"b \(private\): back at you")
    b.expect(r"b \(private to a\): back at you")
    a.say("/who")
    assert who_names(a.line()) == {"a", "c"}
    b.say("/who")
    b.expect(r"Here now \(1\): b")
    c.say("marker")
    everyone_hears([c, a], "c: marker")  # c saw none of the private lines
    assert b.quiet()


@pytest.mark.parametrize("limit", [None, 2])
def test_rooms_lists_every_room_with_exact_counts(start_gchat, limit):
    server = start_gchat(*(["--roster-limit", str(limit)] if limit else []))
    r1 = enter(server, "r1", "red")
    r2 = enter(server, "r2", "red", r1)
    r3 = enter(server, "r3", "red", r1, r2)
    b1 = enter(server, "b1", "blue")
    b2 = enter(server, "b2", "blue", b1)
    lone = server.named("lone")
    join(lone, "empty", "empty", others=())
    join(lone, "lobby", "lobby", others=())
    if limit is None:
        expected = {
            lone: "Rooms (4): #lobby (1, you are here), #red (3), #blue (2), #empty (0)",
            b1: "Rooms (4): #blue (2, you are here), #red (3), #lobby (1), #empty (0)",
            r1: "Rooms (4): #red (3, you are here), #blue (2), #lobby (1), #empty (0)",
        }
    else:
        expected = {
            lone: "Rooms (4): #lobby (1, you are here), #red (3), and 2 more",
            b1: "Rooms (4): #blue (2, you are here), #red (3), and 2 more",
            r1: "Rooms (4): #red (3, you are here), #blue (2), and 2 more",
        }
    for client, line in expected.items():
        client.say("/rooms")
        client.expect(re.escape(line))
    assert all(client.quiet() for client in [r2, r3, b2])  # to the asker alone
    b2.close()
    b1.expect("b2 has left")
    r3.say("/join blue")
    r3.expect("You are now in #blue")
    r3.expect(r"Also here \(1\): b1")
    b1.expect("r3 has arrived")
    r1.expect(r"r3 has left \(joined #blue\)")
    b1.say("/rooms")
    if limit is None:
        b1.expect(re.escape("Rooms (4): #blue (2, you are here), #red (2), #lobby (1), #empty (0)"))
    else:
        b1.expect(re.escape("Rooms (4): #blue (2, you are here), #red (2), and 2 more"))


# --- Departures --------------------------------------------------------


def test_departures_are_announced_in_the_leavers_room(gchat):
    red1 = enter(gchat, "red1", "red")
    red2 = enter(gchat, "red2", "red", red1)
    red3 = enter(gchat, "red3", "red", red1, red2)
    red4 = enter(gchat, "red4", "red", red1, red2, red3)
    blue1 = enter(gchat, "blue1", "blue")
    blue2 = enter(gchat, "blue2", "blue", blue1)
    lobby = gchat.named("lob")
    red2.close()
    everyone_hears([red1, red3, red4], "red2 has left")
    red3.say("/quit off to bed")
    assert red3.closed_after() == ["Goodbye."]
    everyone_hears([red1, red4], "red3 has left (off to bed)")
    reset(red4)
    everyone_hears([red1], "red4 has left (connection lost)")
    blue1.say("marker")
    everyone_hears([blue1, blue2], "blue1: marker")  # blue heard none of it
    lobby.say("lobby marker")
    everyone_hears([lobby], "lob: lobby marker")  # nor did the lobby
    blue2.say("/quit")
    assert blue2.closed_after() == ["Goodbye."]
    everyone_hears([blue1], "blue2 has left")
    assert red1.quiet() and lobby.quiet()


def test_idle_departure_is_announced_in_its_room_only(start_gchat):
    server = start_gchat("--idle-timeout", "1")
    sleepy = enter(server, "sleepy", "red")
    chatty = enter(server, "chatty", "red", sleepy)
    other = enter(server, "other", "blue")
    lobby = server.named("lob")
    # each of these said something after sleepy's last line, so sleepy is
    # the first to go idle, and the others are still there to hear it
    chatty.say("awake")
    everyone_hears([chatty, sleepy], "chatty: awake")
    other.say("awake")
    other.expect("other: awake")
    lobby.say("awake")
    lobby.expect("lob: awake")
    assert sleepy.closed_after(5) == ["error: idle for 1 s; disconnecting"]
    # then they go idle too; until then chatty alone heard of sleepy
    assert chatty.closed_after(5) == [
        "sleepy has left (idle timeout)",
        "error: idle for 1 s; disconnecting",
    ]
    assert other.closed_after(5) == ["error: idle for 1 s; disconnecting"]
    assert lobby.closed_after(5) == ["error: idle for 1 s; disconnecting"]


def parse_departures(line):
    """{name: reason} from a departures line: "NAME has left", "NAME has left
    (REASON)", or "A (REASON), B, C have left"."""
    match = re.fullmatch(r"(\S+) has left(?: \((.*)\))?", line)
    if match:
        return {match.group(1): match.group(2) or ""}
    match = re.fullmatch(r"(.*) have left", line)
    assert match, line
    left = {}
    for item in match.group(1).split(", "):
        part = re.fullmatch(r"(\S+)(?: \((.*)\))?", item)
        assert part and part.group(1) not in left, line
        left[part.group(1)] = part.group(2) or ""
    return left


def test_merged_departures_name_everyone_who_left(start_gchat):
    server = start_gchat(
        "--arrival-merge-threshold", "3", "--arrival-merge-window", "1", "--flood-rate", "0"
    )
    watcher = enter(server, "watcher", "big")
    other = enter(server, "other", "big", watcher)
    leavers = {}
    for name in ["l1", "l2", "l3", "l4", "l5", "l6"]:
        client = server.named(name)
        # a chat line of its own ends any wait for its arrival at once
        client.say("/join big")
        client.say(f"hi from {name}")
        client.expect(f"{name}: hi from {name}", skip=True)
        for member in [watcher, other, *leavers.values()]:
            member.expect(f"{name} has arrived")
            member.expect(f"{name}: hi from {name}")
        leavers[name] = client
    # eight members; six leave in a burst, for five different reasons
    leavers["l1"].close()
    reset(leavers["l2"])
    leavers["l3"].say("/quit see ya")
    leavers["l4"].say("/join elsewhere")
    leavers["l5"].close()
    leavers["l6"].say("/join #elsewhere")
    expected = {
        "l1": "",
        "l2": "connection lost",
        "l3": "see ya",
        "l4": "joined #elsewhere",
        "l5": "",
        "l6": "joined #elsewhere",
    }
    heard = {}
    for member in [watcher, other]:
        lines, left = [], {}
        deadline = time.monotonic() + 5
        while set(left) != set(expected):
            line = member.line(max(deadline - time.monotonic(), 0.001))
            lines.append(line)
            for name, reason in parse_departures(line).items():
                assert name not in left, f"{name} announced twice: {lines}"
                left[name] = reason
        assert left == expected, lines
        heard[member] = lines
    assert heard[watcher] == heard[other]
    # held back and merged: fewer lines than departures, one naming several
    assert len(heard[watcher]) < len(expected), heard[watcher]
    assert any(line.endswith(" have left") for line in heard[watcher]), heard[watcher]
    watcher.say("after")
    everyone_hears([watcher, other], "watcher: after")  # nothing more, no duplicate
    assert leavers["l3"].closed_after()[-1] == "Goodbye."


# --- Churn and bursts --------------------------------------------------


def test_tight_join_leave_loop_keeps_order_and_other_rooms_flow(start_gchat):
    server = start_gchat("--flood-rate", "0")
    calm1 = enter(server, "calm1", "calm")
    calm2 = enter(server, "calm2", "calm", calm1)
    sitter = enter(server, "sitter", "ping")
    looper = server.named("looper")
    rounds = 300
    looper.send("".join(f"/join {'ping' if i % 2 == 0 else 'pong'}\n" for i in range(rounds)))
    calm1.say("still flowing")
    everyone_hears([calm1, calm2], "calm1: still flowing")
    for i in range(rounds):
        if i % 2 == 0:
            assert looper.lines(2) == ["You are now in #ping", "Also here (1): sitter"], i
        else:
            assert looper.lines(2) == ["You are now in #pong", "Nobody else is here."], i
    for _ in range(rounds // 2):
        sitter.expect("looper has arrived")
        sitter.expect(r"looper has left \(joined #pong\)")
    looper.say("/who")
    looper.expect(r"Here now \(1\): looper")
    sitter.say("done")
    sitter.expect("sitter: done")  # nothing more for sitter
    assert calm1.quiet() and calm2.quiet()  # calm heard none of it
    assert server.proc.poll() is None


def test_a_thousand_joins_in_a_burst(start_gchat):
    server = start_gchat("--flood-rate", "0", "--max-rooms", "50")
    calm1 = enter(server, "calm1", "calm")
    calm2 = enter(server, "calm2", "calm", calm1)
    burster = server.named("burster")
    burster.send("".join(f"/join r{i}\n" for i in range(1000)))
    calm1.say("during the burst")
    everyone_hears([calm1, calm2], "calm1: during the burst")
    for i in range(1000):
        assert burster.lines(2) == [f"You are now in #r{i}", "Nobody else is here."], i
    # at 50 rooms, each new one dropped the least recently used empty room
    total, entries, more = rooms(burster)
    assert (total, more) == (50, 0)
    assert entries[:2] == [("#r999", 1, True), ("#calm", 2, False)]
    assert sorted(entries[2:]) == sorted(
        [("#lobby", 0, False)] + [(f"#r{i}", 0, False) for i in range(952, 999)]
    )
    calm2.say("after the burst")
    everyone_hears([calm1, calm2], "calm2: after the burst")
    newcomer = server.named("newcomer")  # still accepting
    newcomer.say("/rooms")
    newcomer.expect(r"Rooms \(50\): #lobby \(1, you are here\), #calm \(2\), #r999 \(1\), .*")
    assert server.proc.poll() is None


# --- Hostile names, /help, --compat ------------------------------------


def test_room_names_with_control_characters_are_refused(gchat):
    a = enter(gchat, "a", "safe")
    b = enter(gchat, "b", "safe", a)
    for bad in [
        b"/join ga\x01mes\n",
        b"/join \x1b[31mred\n",
        b"/join del\x7f\n",
        "/join c1\u009bx\n".encode(),
        b"/join nul\x00\n",
    ]:
        a.send(bad)
        a.expect(r"error: '[^']+' is not allowed in a room name \(letters, digits, _ - \. only\)")
    a.say("still safe")
    everyone_hears([a, b], "a: still safe")  # b saw none of the errors
    assert not re.search(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]", a.raw)
    a.say("/rooms")
    a.expect(re.escape("Rooms (2): #safe (2, you are here), #lobby (0)"))  # none was created


def test_help_mentions_join_and_rooms(gchat):
    a = gchat.named("helpme")
    a.send("/help\n/who\n")
    lines = []
    while True:
        line = a.line()
        if line.startswith("Here now"):
            break
        lines.append(line)
    text = "\n".join(lines)
    assert "/join" in text and "/rooms" in text, text


def test_compat_has_no_rooms_and_no_history(compat):
    a = compat.client()
    a.expect(f"You are {a.address}")
    for line in ["/join x", "/join #games", "/rooms"]:
        a.say(line)
        a.expect(f"{re.escape(a.address)}: {re.escape(line)}")
    late = compat.client()
    late.expect(f"You are {late.address}")
    a.expect(f"{late.address} has arrived")
    a.say("after")
    late.expect(f"{a.address}: after")  # its very next line: no history
    a.expect(f"{a.address}: after")
    assert late.raw == f"You are {late.address}\n{a.address}: after\n".encode()
    assert (
        a.raw
        == (
            f"You are {a.address}\n{a.address}: /join x\n{a.address}: /join #games\n"
            f"{a.address}: /rooms\n{late.address} has arrived\n"
            f"{a.address}: after\n"
        ).encode()
    )
