"""The chat of a cluster, driven without Redis and without gevent
(cluster_harness): every node applies the same entries in the stream's
order, names are unique cluster-wide, members of other nodes count
everywhere, nodes come and go, and copies of entries change nothing."""

import pytest
from cluster_harness import LOST_PREFIX, Cluster
from hypothesis import given, settings
from hypothesis import strategies as st

from gchat import protocol as p
from gchat.bus.entry import Entry, encode
from gchat.events import Why
from gchat.protocol import BUS_DOWN, NODE_LOST

PROMPT = p.NAME_PROMPT


def history_block(room, lines):
    return [p.render_history_open(room, len(lines)), *lines, p.HISTORY_CLOSE]


def settled(h, *conns):
    """Run the cluster and drop what conns received so far."""
    h.run()
    for conn in conns:
        h.take_now(conn)


# ----------------------------------------------------------------------
# Lines and their order


def test_a_line_reaches_its_room_on_every_node_and_only_its_room():
    h = Cluster()
    ann, amy = h.named("A", "ann"), h.named("A", "amy")
    bob, ben = h.named("B", "bob"), h.named("B", "ben")
    h.say(ben, "/join den")
    settled(h, ann, amy, bob, ben)
    h.say(ann, "hello from A")
    h.say(bob, "/me waves from B")
    expected = ["ann: hello from A", "* bob waves from B"]
    assert h.take_all(ann, amy, bob, ben) == [expected, expected, expected, []]


def test_concurrent_lines_of_two_nodes_are_seen_in_the_streams_order_everywhere():
    """Batches interleave, and nodes read at different times.  Nobody, the
    senders included, sees its own node's lines first: everyone sees the
    stream's order, each sender's lines in the order it typed them."""
    h = Cluster()
    ann, amy = h.named("A", "ann"), h.named("A", "amy")
    bob, bea = h.named("B", "bob"), h.named("B", "bea")
    settled(h, ann, amy, bob, bea)
    h.say(ann, "a1")
    h.step("A")
    h.say(bob, "b1")
    h.step("B")
    h.say(ann, "a2")  # a chat line goes out at once, a1 still out or not
    h.say(bob, "b2")
    h.step("B", "A")
    h.say(amy, "a3")
    h.step("A")
    h.deliver("B")  # B reads everything; A has read nothing yet
    expected = ["ann: a1", "bob: b1", "bob: b2", "ann: a2", "amy: a3"]
    assert h.take_now(bob) == expected
    assert h.take_now(ann) == []  # its own line is not back at A yet
    h.deliver("A", limit=2)
    assert h.take_now(ann) == expected[:2]
    assert h.take_all(amy, bea) == [expected, expected]
    assert h.take_now(ann) == expected[2:]
    assert h.take_now(bob) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["say", "step", "deliver"]), st.integers(0, 3)), max_size=40)
)
def test_every_member_sees_the_same_lines_in_the_same_order_whatever_the_interleaving(script):
    h = Cluster(nodes=("A", "B", "C"))
    people = [h.named("A", "a0"), h.named("B", "b1"), h.named("C", "c2"), h.named("A", "a3")]
    settled(h, *people)
    said = 0
    for action, who in script:
        if action == "say":
            h.say(people[who], f"line {said}")
            said += 1
        elif action == "step":
            h.step("ABC"[who % 3])
        else:
            h.deliver("ABC"[who % 3], limit=who or None)
    seen = h.take_all(*people)
    stream_order = [op[2] for entry in h.entries() for op in entry.ops if op[0] == "say"]
    assert len(stream_order) == said
    assert all(lines == stream_order for lines in seen), seen


def test_the_sender_sees_its_own_line_only_when_it_comes_back():
    h = Cluster()
    ann, amy, bob = h.named("A", "ann"), h.named("A", "amy"), h.named("B", "bob")
    settled(h, ann, amy, bob)
    h.say(ann, "hi")
    assert h.take_now(ann) == []  # not even published
    h.step("A")
    h.hold("A")
    h.deliver()
    assert h.take_now(bob) == ["ann: hi"]
    assert h.take_now(ann) == [] and h.take_now(amy) == []  # A has not read it back
    h.resume("A")
    assert h.take_all(ann, amy, bob) == [["ann: hi"], ["ann: hi"], []]


def test_a_clients_own_order_what_it_is_told_waits_for_what_it_published():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "hello", "/who", "/bogus")
    assert h.take_now(ann) == []
    h.step("A")
    h.say(bob, "after")
    h.step("B")
    h.deliver("A", limit=1)  # ann's entry only
    assert h.take_now(ann) == [
        "ann: hello",
        "Here now (2): ann, bob",
        "error: unknown command /bogus (try /help)",
    ]
    assert h.take(ann) == ["bob: after"]
    assert h.take(bob) == ["ann: hello", "bob: after"]


def test_a_command_after_join_sees_the_new_room():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "/join den")
    h.run()
    h.say(ann, "/who")
    assert h.take(ann) == ["You are now in #den", "Nobody else is here.", "Here now (1): ann"]


def test_who_typed_right_after_join_answers_for_the_new_room_in_order():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "/who", "/join den", "/who")
    # As one server says it: the lobby's roster, the move, den's roster.
    assert h.take(ann) == [
        "Here now (2): ann, bob",
        "You are now in #den",
        "Nobody else is here.",
        "Here now (1): ann",
    ]


def test_an_error_typed_before_join_comes_before_the_move():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "hello", "/bogus", "/join den")
    assert h.take(ann) == [
        "ann: hello",
        "error: unknown command /bogus (try /help)",
        "You are now in #den",
        "Nobody else is here.",
    ]


def test_a_line_typed_right_after_join_goes_to_the_new_room():
    h = Cluster()
    ann, amy = h.named("A", "ann"), h.named("A", "amy")
    bob = h.named("B", "bob")
    h.say(bob, "/join den")
    settled(h, ann, amy, bob)
    h.say(ann, "/join den", "meant for den")
    assert h.take_all(ann, amy, bob) == [
        ["You are now in #den", "Also here (1): bob", "ann: meant for den"],
        ["ann has left (joined #den)"],
        ["ann has arrived", "ann: meant for den"],
    ]


def test_join_and_back_in_one_read():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "/join den", "/join lobby")
    assert h.take(ann) == [
        "You are now in #den",
        "Nobody else is here.",
        "You are now in #lobby",
        "Also here (1): bob",
    ]


def test_a_private_line_to_a_local_member_waits_for_its_own_entries():
    h = Cluster()
    ann, amy = h.named("A", "ann"), h.named("A", "amy")
    settled(h, ann, amy)
    h.say(amy, "mine")
    h.step("A")
    h.say(ann, "/msg amy psst")
    assert h.take_now(amy) == []  # amy's line has not come back yet
    assert h.take_now(ann) == ["ann (private to amy): psst"]
    assert h.take(amy) == ["amy: mine", "ann (private): psst"]


# ----------------------------------------------------------------------
# Names


@pytest.mark.parametrize("first", ["A", "B"])
def test_two_nodes_racing_for_one_name_exactly_one_gets_it_whatever_the_case(first):
    h = Cluster()
    on_a, on_b = h.connect("A"), h.connect("B")
    h.say(on_a, "Ann")
    h.say(on_b, "aNN")
    assert h.step(first, "B" if first == "A" else "A")
    winner, loser, lost_as = (on_a, on_b, "aNN") if first == "A" else (on_b, on_a, "Ann")
    won_as = "Ann" if winner is on_a else "aNN"
    assert h.take(winner) == [PROMPT, f"You are {won_as}", "Nobody else is here."]
    assert h.take(loser) == [PROMPT, f"error: the name {lost_as} is taken", p.NAME_PROMPT_AGAIN]
    assert h.names == {"ann": first}
    h.say(loser, "bob")
    assert h.take(loser) == ["You are bob", f"Also here (1): {won_as}"]
    assert h.take(winner) == ["bob has arrived"]


def test_a_name_known_to_be_taken_is_refused_at_once_and_bad_names_too():
    h = Cluster()
    h.named("A", "ann")
    c = h.connect("B")
    h.say(c, "ANN")
    assert h.take_now(c) == [PROMPT, "error: the name ANN is taken", p.NAME_PROMPT_AGAIN]
    h.say(c, "a b")
    assert h.take_now(c) == [
        "error: 'U+0020' is not allowed in a name (letters, digits, _ - . only)",
        p.NAME_PROMPT_AGAIN,
    ]
    assert not h.chat("B").requests  # nothing was asked of Redis


def test_typing_ahead_lines_wait_for_the_name_then_come_in_order():
    h = Cluster()
    bob = h.named("B", "bob")
    settled(h, bob)
    cid = h.connect("A")
    h.say(cid, "cid", "first", "/me waves", "/who")
    assert h.take_now(cid) == [PROMPT]
    assert h.take(cid) == [
        "You are cid",
        "Also here (1): bob",
        "cid: first",
        "* cid waves",
        "Here now (2): cid, bob",
    ]
    assert h.take_now(bob) == ["cid has arrived", "cid: first", "* cid waves"]


def test_a_refused_name_and_the_lines_typed_after_it_go_on_as_names():
    """As with one server: after "taken", the next line is the next try."""
    h = Cluster()
    ann = h.named("A", "ann")
    c, d = h.connect("B"), h.connect("A")
    h.say(c, "zed")
    h.say(d, "Zed", "dan", "hi")
    h.step("B", "A")
    assert h.take(d) == [
        PROMPT,
        "error: the name Zed is taken",
        p.NAME_PROMPT_AGAIN,
        "You are dan",
        "Also here (2): ann, zed",
        "dan: hi",
    ]
    assert h.take(c) == [PROMPT, "You are zed", "Also here (1): ann", "dan has arrived", "dan: hi"]
    assert h.take(ann) == ["zed has arrived", "dan has arrived", "dan: hi"]


def test_a_client_that_leaves_before_its_claim_is_answered_frees_the_name():
    h = Cluster()
    c = h.connect("A")
    h.say(c, "ann")
    h.disconnect(c)
    h.run()
    assert h.names == {}
    again = h.named("B", "ann")
    assert again.name == "ann"


def test_a_client_that_leaves_before_its_enter_comes_back_arrives_and_leaves_everywhere():
    h = Cluster()
    amy, bob = h.named("A", "amy"), h.named("B", "bob")
    settled(h, amy, bob)
    c = h.connect("A")
    h.say(c, "cid")
    h.step("A")  # the claim is answered, the enter is queued
    h.disconnect(c)
    h.run()
    assert h.take_all(amy, bob) == [["cid has arrived", "cid has left"]] * 2
    assert "cid" not in h.names
    assert "cid" not in h.chat("A").names and "cid" not in h.chat("B").names


def test_nick_across_nodes_renames_everywhere_and_frees_the_old_name():
    h = Cluster()
    ann, amy, bob = h.named("A", "ann"), h.named("A", "amy"), h.named("B", "bob")
    settled(h, ann, amy, bob)
    h.say(ann, "/nick anna")
    assert h.take_now(ann) == []  # claimed first, renamed when the nick comes back
    renamed = p.render_nick("ann", "anna")
    assert renamed == "ann is now known as anna"
    assert h.take_all(ann, amy, bob) == [[renamed]] * 3
    assert h.names == {"anna": "A", "amy": "A", "bob": "B"}
    h.say(bob, "/msg anna hi", "/msg ann hi")
    assert h.take(bob) == ["bob (private to anna): hi", "error: no such user: ann"]
    assert h.take_now(ann) == ["bob (private): hi"]
    newcomer = h.named("B", "ANN")  # the old name is free
    assert h.take(ann) == ["ANN has arrived"]
    h.say(ann, "/nick Bob")
    assert h.take(ann) == ["error: the name Bob is taken"]
    h.say(newcomer, "/who")
    assert h.take(newcomer) == ["Here now (4): bob, ANN, anna, amy"]


def test_a_change_of_case_needs_no_claim():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "/nick ANN")
    assert h.chat("A").requests == []
    assert h.take_all(ann, bob) == [["ann is now known as ANN"]] * 2
    assert h.names == {"ann": "A", "bob": "B"}


def test_two_nodes_racing_for_one_new_nick_one_gets_it():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "/nick zed")
    h.say(bob, "/nick ZED")
    h.step("B", "A")
    assert h.take(ann) == ["error: the name zed is taken", "bob is now known as ZED"]
    assert h.take(bob) == ["bob is now known as ZED"]
    assert h.names == {"ann": "A", "zed": "B"}


# ----------------------------------------------------------------------
# Who is here, on every node


def test_arrivals_and_departures_are_announced_on_every_node():
    h = Cluster(nodes=("A", "B", "C"))
    ann = h.named("A", "ann")
    bob = h.connect("B")
    h.say(bob, "bob")
    assert h.take(bob) == [PROMPT, "You are bob", "Also here (1): ann"]
    cid = h.connect("C")
    h.say(cid, "cid")
    assert h.take(cid) == [PROMPT, "You are cid", "Also here (2): ann, bob"]
    assert h.take(ann) == ["bob has arrived", "cid has arrived"]
    assert h.take(bob) == ["cid has arrived"]
    h.say(ann, "/who")
    h.say(bob, "/who")
    assert h.take(ann) == ["Here now (3): ann, bob, cid"]
    assert h.take(bob) == ["Here now (3): bob, ann, cid"]
    h.say(cid, "/quit see you")
    assert h.take(cid) == ["Goodbye."]
    assert h.take(bob) == ["cid has left (see you)"]
    h.disconnect(bob, Why.IDLE)
    assert h.take(bob) == [p.render_idle(300)]
    assert h.take(ann) == ["cid has left (see you)", "bob has left (idle timeout)"]
    h.say(ann, "/who")
    assert h.take(ann) == ["Here now (1): ann"]
    assert h.names == {"ann": "A"}
    for node in "ABC":
        assert set(h.chat(node).names) == {"ann"}


def test_rooms_count_the_members_of_every_node():
    h = Cluster()
    ann, amy = h.named("A", "ann"), h.named("A", "amy")
    bob, ben = h.named("B", "bob"), h.named("B", "ben")
    h.say(ann, "/join den")
    h.say(ben, "/join den")
    h.say(bob, "/join Attic")
    settled(h, ann, amy, bob, ben)
    h.say(amy, "/rooms")
    assert h.take(amy) == ["Rooms (3): #lobby (1, you are here), #den (2), #Attic (1)"]
    h.say(bob, "/rooms")
    assert h.take(bob) == ["Rooms (3): #Attic (1, you are here), #den (2), #lobby (1)"]
    h.say(ben, "/who")
    assert h.take(ben) == ["Here now (2): ben, ann"]


def test_join_across_nodes_moves_the_member_everywhere_with_the_rooms_history():
    h = Cluster()
    ann, amy = h.named("A", "ann"), h.named("A", "amy")
    bob = h.named("B", "bob")
    h.say(ann, "/join den")
    h.run()
    h.say(ann, "den line", "/me reads")
    h.say(bob, "lobby line")
    settled(h, ann, amy, bob)
    h.say(bob, "/join DEN")
    assert h.take(bob) == [
        "You are now in #den",
        "Also here (1): ann",
        *history_block("den", ["ann: den line", "* ann reads"]),
    ]
    assert h.take(amy) == ["bob has left (joined #den)"]
    assert h.take(ann) == ["bob has arrived"]
    h.say(ann, "in den")
    assert h.take_all(ann, amy, bob) == [["ann: in den"], [], ["ann: in den"]]
    h.say(bob, "/join lobby")
    assert h.take(bob) == [
        "You are now in #lobby",
        "Also here (1): amy",
        *history_block("lobby", ["bob: lobby line"]),
    ]
    assert h.take_all(ann, amy) == [["bob has left (joined #lobby)"], ["bob has arrived"]]


def test_private_lines_cross_nodes_and_rooms():
    h = Cluster()
    ann, amy = h.named("A", "ann"), h.named("A", "amy")
    bob = h.named("B", "bob")
    h.say(bob, "/join den")
    settled(h, ann, amy, bob)
    h.say(ann, "/msg BOB psst", "/msg nobody hello?")
    assert h.take(ann) == ["ann (private to bob): psst", "error: no such user: nobody"]
    assert h.take_all(bob, amy) == [["ann (private): psst"], []]
    h.say(bob, "/msg amy back at you")
    assert h.take(amy) == ["bob (private): back at you"]
    assert h.take(bob) == ["bob (private to amy): back at you"]


def test_a_private_line_to_a_member_who_left_is_refused_or_goes_nowhere():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "/msg bob one")
    h.step("A")
    h.disconnect(bob)
    h.run()
    assert h.take_now(ann) == ["ann (private to bob): one", "bob has left"]
    h.say(ann, "/msg bob two")
    assert h.take(ann) == ["error: no such user: bob"]


# ----------------------------------------------------------------------
# Nodes that start later, stop, or are lost


def test_a_node_started_later_learns_who_is_here_without_announcements():
    h = Cluster()
    ann = h.named("A", "ann")
    bob = h.named("B", "bob")
    h.say(bob, "/join den")
    settled(h, ann, bob)
    h.start("C")
    h.run()
    chat = h.chat("C")
    assert {name: member.room.name for name, member in chat.names.items()} == {
        "ann": "lobby",
        "bob": "den",
    }
    cid = h.connect("C")
    h.say(cid, "cid", "/who", "/rooms")
    assert h.take(cid) == [
        PROMPT,
        "You are cid",
        "Also here (1): ann",
        "Here now (2): cid, ann",
        "Rooms (2): #lobby (2, you are here), #den (1)",
    ]
    assert h.take_all(ann, bob) == [["cid has arrived"], []]
    h.say(cid, "/join den")
    assert h.take(cid) == ["You are now in #den", "Also here (1): bob"]
    assert h.take_all(ann, bob) == [["cid has left (joined #den)"], ["cid has arrived"]]


def test_the_others_presence_reaches_a_new_node_s_first_client_silently():
    """A client of the new node named before the others' "present" comes
    back: their members then appear in its /who, with no arrival line."""
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.start("C")
    cid = h.connect("C")
    h.say(cid, "cid")
    h.step("C")  # the claim
    h.step("C")  # the enter, after C's hello
    h.deliver("C")
    assert h.take_now(cid) == [PROMPT, "You are cid", "Nobody else is here."]
    h.run()
    assert h.take_now(cid) == []
    h.say(cid, "/who")
    assert h.take(cid) == ["Here now (3): cid, ann, bob"]
    assert h.take_all(ann, bob) == [["cid has arrived"]] * 2


def test_a_node_started_later_has_the_rooms_histories_once():
    h = Cluster(history=3)
    ann = h.named("A", "ann")
    bob = h.named("B", "bob")
    h.say(ann, "one", "two", "/join den")
    h.run()
    h.say(ann, "d1", "d2", "d3", "d4")
    h.say(bob, "three", "/msg ann private lines are not kept")
    settled(h, ann, bob)
    h.start("C")
    h.say(ann, "d5")  # after C's snapshot: C reads it from the stream
    h.run()
    cid = h.connect("C")
    h.say(cid, "cid", "/join den")
    assert h.take(cid) == [
        PROMPT,
        "You are cid",
        "Also here (1): bob",
        *history_block("lobby", ["ann: one", "ann: two", "bob: three"]),
        "You are now in #den",
        "Also here (1): ann",
        *history_block("den", ["ann: d3", "ann: d4", "ann: d5"]),
    ]


def test_a_lost_node_s_members_leave_everywhere_once_and_their_names_are_free():
    h = Cluster(nodes=("A", "B", "C"))
    ann = h.named("A", "ann")
    bob, ben = h.named("B", "bob"), h.named("B", "ben")
    cid = h.named("C", "cid")
    h.say(ben, "/join den")
    h.say(cid, "/join den")
    settled(h, ann, bob, ben, cid)
    h.kill("B")
    assert h.take_all(ann, cid) == [["bob has left (server lost)"], ["ben has left (server lost)"]]
    assert h.names == {"ann": "A", "cid": "C"}
    h.say(ann, "/who")
    h.say(cid, "/who")
    assert h.take_all(ann, cid) == [["Here now (1): ann"], ["Here now (1): cid"]]
    # The name is free again, here and in Redis.
    newbob = h.named("A", "BOB")
    assert h.take(ann) == ["BOB has arrived"]
    # The departure again: a second survivor's copy (the same entry), then
    # applied bypassing the Deduper: nothing changes, the new BOB stays.
    h.append(encode(LOST_PREFIX + "B", 1, [["lost", "B", NODE_LOST]]))
    h.run()
    lost = Entry(LOST_PREFIX + "B", 1, [["lost", "B", NODE_LOST]])
    for node in "AC":
        h.chat(node).apply([lost])
        h.chat(node).apply([lost])
    h.say(cid, "/join lobby")
    assert h.take(cid) == ["You are now in #lobby", "Also here (2): ann, BOB"]
    assert h.take_all(ann, newbob) == [["cid has arrived"], ["cid has arrived"]]
    assert h.nodes["A"].duplicates == 1 and h.nodes["C"].duplicates == 1


def test_a_stopped_node_says_goodbye_and_its_members_leave_once():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.stop("B")
    assert h.take_now(bob) == [p.SHUTDOWN]
    assert h.take(ann) == ["bob has left (server stopped)"]
    assert h.names == {"ann": "A"}


def test_merged_departures_of_a_lost_node_in_a_big_room():
    h = Cluster(arrival_merge_threshold=2, arrival_merge_window=1.0)
    ann = h.named("A", "ann")
    others = [h.named("B", name) for name in ("p1", "p2", "p3")]
    h.now += 1
    settled(h, ann, *others)
    h.kill("B")
    assert h.take(ann) == []  # held back within the window
    h.now += 1
    (line,) = h.take(ann)
    # (In which order: see test_a_lost_node_s_members_leave_in_one_order_everywhere.)
    assert line.endswith(" have left")
    assert sorted(line[: -len(" have left")].split(", ")) == [
        "p1 (server lost)",
        "p2 (server lost)",
        "p3 (server lost)",
    ]


def test_a_lost_node_s_members_leave_in_one_order_everywhere():
    h = Cluster(nodes=("A", "B", "C"), roster_limit=100)
    ann, cid = h.named("A", "ann"), h.named("C", "cid")
    names = [f"p{i}" for i in range(40)]
    for name in names:
        h.named("B", name)
    settled(h, ann, cid)
    h.kill("B")
    # In the order they came, as the stream told it: the same everywhere.
    expected = [f"{name} has left (server lost)" for name in names]
    assert h.take_all(ann, cid) == [expected, expected]


def test_merged_arrivals_of_another_node_in_a_big_room():
    h = Cluster(arrival_merge_threshold=2, arrival_merge_window=1.0)
    ann, amy = h.named("A", "ann"), h.named("A", "amy")
    h.now += 1
    settled(h, ann, amy)
    for name in ("x", "y", "z"):
        c = h.connect("B")
        h.say(c, name)
    h.run()
    assert h.take(ann) == []
    h.now += 1
    assert h.take_all(ann, amy) == [["x, y, z have arrived"]] * 2


# ----------------------------------------------------------------------
# Copies of entries, and Redis restarts


def test_republished_entries_are_applied_once():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    h.say(ann, "one")
    h.say(bob, "two")
    h.run()
    h.say(ann, "/join den")
    h.say(bob, "/msg ann psst")
    h.run()
    h.say(ann, "/nick anna")
    h.run()
    h.say(ann, "/join lobby")
    seen = h.take_all(ann, bob)
    assert seen == [
        [
            "bob has arrived",
            "ann: one",
            "bob: two",
            "You are now in #den",
            "Nobody else is here.",
            "bob (private): psst",
            "ann is now known as anna",
            "You are now in #lobby",
            "Also here (1): bob",
            *history_block("lobby", ["ann: one", "bob: two"]),
        ],
        [
            "ann: one",
            "bob: two",
            "bob (private to ann): psst",
            "ann has left (joined #den)",
            "anna has arrived",
        ],
    ]
    copies = h.replay()
    assert copies == len(h.stream) // 2
    h.replay(node="A")
    h.run()
    assert h.take_all(ann, bob) == [[], []]
    h.say(ann, "/who")
    assert h.take(ann) == ["Here now (2): anna, bob"]
    assert h.nodes["A"].duplicates > 0


def test_after_redis_restarts_empty_nothing_is_told_twice_and_names_stay_held():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    h.say(ann, "before")
    settled(h, ann, bob)
    h.redis_restart()
    h.run()
    assert h.take_all(ann, bob) == [[], []]
    assert h.names == {"ann": "A", "bob": "B"}
    h.say(bob, "after")
    assert h.take_all(ann, bob) == [["bob: after"], ["bob: after"]]
    c = h.connect("B")
    h.say(c, "ann")
    assert h.take(c) == [PROMPT, "error: the name ann is taken", p.NAME_PROMPT_AGAIN]
    h.say(ann, "/who")
    assert h.take(ann) == ["Here now (2): ann, bob"]


def test_a_stalled_node_declared_lost_comes_back_with_its_members():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.stall("B")
    h.declare_lost("B")
    assert h.take(ann) == ["bob has left (server lost)"]
    assert h.names == {"ann": "A"}
    h.resume("B")
    h.run()
    assert h.names == {"ann": "A", "bob": "B"}  # claimed again
    h.say(ann, "/who")
    assert h.take(ann) == ["Here now (2): ann, bob"]
    h.say(bob, "still here")
    assert h.take_all(ann, bob) == [["bob: still here"], ["bob: still here"]]


def test_bad_entries_in_the_stream_are_skipped():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.append({"v": b"9", "n": "X", "s": 1, "o": '[["say","lobby","from the future",true]]'})
    h.append({"v": b"1", "n": "X", "s": 1, "o": '[["say","lobby","bad keep","yes"]]'})
    h.say(bob, "fine")
    assert h.take_all(ann, bob) == [["bob: fine"], ["bob: fine"]]
    assert h.nodes["A"].bad_entries == 2


# ----------------------------------------------------------------------
# --compat


def test_compat_cluster_replays_the_seed_transcript_across_three_nodes():
    h = Cluster(nodes=("A", "B", "C"), compat=True)
    a = h.connect("A", "1.1.1.1:1")
    assert h.take(a) == ["You are 1.1.1.1:1"]
    b = h.connect("B", "2.2.2.2:2")
    assert h.take(b) == ["You are 2.2.2.2:2"]
    assert h.take(a) == ["2.2.2.2:2 has arrived"]
    h.say(a, "Hi!")
    h.say(b, "Hi yourself.", "/who")
    assert h.take(a) == ["1.1.1.1:1: Hi!", "2.2.2.2:2: Hi yourself.", "2.2.2.2:2: /who"]
    h.disconnect(a)
    c = h.connect("C", "3.3.3.3:3")
    assert h.take(c) == ["You are 3.3.3.3:3"]
    h.say(b, "Welcome.")
    h.run()
    h.kill("B")
    assert h.take(c) == ["2.2.2.2:2: Welcome.", "2.2.2.2:2 has left"]
    assert h.take_now(b) == []  # its node is gone
    assert h.chat("C").rooms.lobby.history is None


def test_compat_lines_before_the_enter_comes_back_are_kept_in_order():
    h = Cluster(compat=True)
    b = h.connect("B", "2.2.2.2:2")
    settled(h, b)
    a = h.connect("A", "1.1.1.1:1")
    h.say(a, "one", "two")
    assert h.take_now(a) == []
    assert h.take(a) == ["You are 1.1.1.1:1", "1.1.1.1:1: one", "1.1.1.1:1: two"]
    assert h.take(b) == ["1.1.1.1:1 has arrived", "1.1.1.1:1: one", "1.1.1.1:1: two"]
    h.disconnect(a, Why.ERROR)
    assert h.take(b) == ["1.1.1.1:1 has left"]


# ----------------------------------------------------------------------
# The bus's backlog


def test_a_full_bus_refuses_lines_says_so_and_publishes_nothing():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.chat("A").backlog = lambda: 10**9
    h.chat("A").bus_up = lambda: False  # the bound is for an outage
    before = len(h.stream)
    h.say(ann, "lost?", "/me tries", "/msg bob psst")
    assert h.take(ann) == [f"error: {BUS_DOWN}"] * 3
    assert BUS_DOWN.endswith("your line was not sent")
    assert len(h.stream) == before
    assert h.take(bob) == []
    assert h.chat("A").counts["bus_refused"] == 3


def test_while_redis_answers_a_burst_past_the_backlog_is_held_not_refused():
    h = Cluster(bus_backlog=3)
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "1", "2", "3", "4", "5")
    assert h.take(bob) == ["ann: 1", "ann: 2", "ann: 3", "ann: 4", "ann: 5"]
    assert h.take(ann) == ["ann: 1", "ann: 2", "ann: 3", "ann: 4", "ann: 5"]


def test_the_bus_backlog_counts_the_lines_of_the_batch():
    h = Cluster(bus_backlog=3)
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.chat("A").bus_up = lambda: False  # an outage, as far as the bound goes
    h.say(ann, "1", "2", "3", "4")
    # The refusal at once, not after the lines the bus took.
    assert h.take_now(ann) == [f"error: {BUS_DOWN}"]
    assert h.take(ann) == ["ann: 1", "ann: 2", "ann: 3"]
    assert h.take(bob) == ["ann: 1", "ann: 2", "ann: 3"]
    h.say(ann, "5")  # a new batch: the bus holds nothing now
    assert h.take(bob) == ["ann: 5"]


# ----------------------------------------------------------------------
# Found wrong once, fixed since


def test_two_nicks_in_one_read_rename_twice():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "/nick x", "/nick y")
    expected = ["ann is now known as x", "x is now known as y"]
    assert h.take_all(ann, bob) == [expected, expected]
    assert h.names == {"y": "A", "bob": "B"}
    h.say(bob, "/who")
    assert h.take(bob) == ["Here now (2): bob, y"]


def test_two_clients_of_one_node_racing_for_one_name():
    h = Cluster()
    watch = h.named("B", "watch")
    settled(h, watch)
    c1, c2 = h.connect("A"), h.connect("A")
    h.say(c1, "ann")
    h.say(c2, "Ann")
    assert h.take(c1) == [PROMPT, "You are ann", "Also here (1): watch"]
    assert h.take(c2) == [PROMPT, "error: the name Ann is taken", p.NAME_PROMPT_AGAIN]
    assert h.take(watch) == ["ann has arrived"]


def test_a_client_that_leaves_right_after_its_nick_is_published_leaves():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "/nick zed")
    h.step("A")  # the claim is answered: the nick is queued
    h.disconnect(ann)
    assert h.take(bob) == ["ann is now known as zed", "zed has left"]
    h.say(bob, "/who")
    assert h.take(bob) == ["Here now (1): bob"]
    assert h.names == {"bob": "B"}


def test_a_held_newcomer_that_leaves_within_the_window_is_never_announced_anywhere():
    h = Cluster(arrival_merge_threshold=2, arrival_merge_window=10)
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    h.now += 20
    settled(h, ann, bob)
    cid = h.connect("A")
    h.say(cid, "cid")
    h.run()
    h.disconnect(cid)
    h.run()
    h.now += 20
    assert h.take_all(ann, bob) == [[], []]


def test_compat_a_client_piping_many_lines_at_once_loses_none():
    h = Cluster(compat=True)
    b = h.connect("B", "2.2.2.2:2")
    settled(h, b)
    a = h.connect("A", "1.1.1.1:1")
    h.say(a, *[f"line {i}" for i in range(30)])
    lines = [f"1.1.1.1:1: line {i}" for i in range(30)]
    assert h.take(a) == ["You are 1.1.1.1:1", *lines]
    assert h.take(b) == ["1.1.1.1:1 has arrived", *lines]


def test_a_node_that_came_back_after_being_declared_lost_can_be_lost_again():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.stall("B")
    h.declare_lost("B")
    assert h.take(ann) == ["bob has left (server lost)"]
    h.resume("B")
    h.run()
    h.kill("B")
    assert h.take(ann) == ["bob has left (server lost)"]
    h.say(ann, "/who")
    assert h.take(ann) == ["Here now (1): ann"]


def test_a_client_that_leaves_with_lines_held_leaves_nothing_behind():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "one", "/me waves", "three")  # the command waits for one, three for it
    chat = h.chat("A")
    assert chat.busy.get(ann) == [b"/me waves", b"three"]
    h.disconnect(ann)
    assert h.take(bob) == ["ann: one", "* ann waves", "ann: three", "ann has left"]
    assert ann not in chat.busy and ann not in chat.inflight and chat._held == 0
    assert not chat.awaiting or all(ann not in conns for _, conns in chat.awaiting)


def test_chat_lines_follow_each_other_at_once_and_a_command_waits_for_them():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "one")
    h.step("A")  # one is out
    h.say(ann, "two", "/who", "three")
    chat = h.chat("A")
    assert chat.busy.get(ann) == [b"/who", b"three"]  # two went out at once
    assert h.take(ann) == ["ann: one", "ann: two", "Here now (2): ann, bob", "ann: three"]
    assert h.take(bob) == ["ann: one", "ann: two", "ann: three"]
