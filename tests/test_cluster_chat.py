"""The chat of a cluster, driven without Redis and without gevent
(cluster_harness): every node that hosts a room applies the room's entries
in the room log's order, a node reads only the rooms it has members in,
names are unique cluster-wide, members of other nodes count everywhere,
nodes come and go, and copies of entries change nothing."""

import pytest
from cluster_harness import Cluster
from hypothesis import given, settings
from hypothesis import strategies as st

from gchat import protocol as p
from gchat.events import BUS, Why
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
    assert h.ops("den", "say") == []


def test_concurrent_lines_of_two_nodes_are_seen_in_the_room_logs_order_everywhere():
    """Batches interleave, and nodes read at different times.  Nobody, the
    senders included, sees its own node's lines first: everyone sees the
    room log's order, each sender's lines in the order it typed them."""
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
    assert [op[1] for op in h.ops("lobby", "say")] == expected
    assert h.take_now(bob) == expected
    assert h.take_now(ann) == []  # its own line is not back at A yet
    h.deliver("A", limit=2)
    assert h.take_now(ann) == expected[:2]
    assert h.take_all(amy, bea) == [expected, expected]
    assert h.take_now(ann) == expected[2:]
    assert h.take_now(bob) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["say", "step", "deliver", "join"]), st.integers(0, 5)),
        max_size=40,
    )
)
def test_every_member_sees_its_rooms_lines_in_the_rooms_one_order_whatever_the_interleaving(
    script,
):
    """Two rooms over three nodes, and a mover whose node hosts the den only
    while the mover is there: whatever the batches and reads, each member
    sees its room's lines in the order of the room's log, and each sender's
    lines are in that log in the order it typed them."""
    h = Cluster(nodes=("A", "B", "C"))
    lobby = [h.named("A", "a0"), h.named("B", "b1"), h.named("C", "c2")]
    den = [h.named("A", "a3"), h.named("B", "b4")]
    for conn in den:
        h.say(conn, "/join den")
    mover = h.named("C", "m5")
    stayers = lobby + den
    settled(h, *stayers, mover)
    people = stayers + [mover]
    said = {conn.name: [] for conn in people}
    for action, who in script:
        if action == "say":
            text = f"line {sum(map(len, said.values()))}"
            h.say(people[who], text)
            said[people[who].name].append(text)
        elif action == "step":
            h.step("ABC"[who % 3])
        elif action == "deliver":
            h.deliver("ABC"[who % 3], limit=who or None, hosting=who != 4)
        else:
            h.say(mover, "/join den" if who % 2 else "/join lobby")
    h.run()
    logs = {room: [op[1] for op in h.ops(room, "say")] for room in ("lobby", "den")}
    assert sum(map(len, logs.values())) == sum(map(len, said.values()))
    for conn in stayers:
        chat = [line for line in h.take_now(conn) if ": line " in line]
        assert chat == logs["lobby" if conn in lobby else "den"], conn.name
    for name, lines in said.items():
        for log in logs.values():
            mine = [line.split(": ", 1)[1] for line in log if line.startswith(name + ": ")]
            assert mine == [line for line in lines if line in mine]
    assert h.hosted("C") == ({"lobby", "den"} if mover.room.key == "den" else {"lobby"})


NAMES = ["ann", "Ann", "bob", "cid", "dee"]
ROOMS = ["lobby", "den", "attic"]


def check_settled_cluster(h):
    """What must hold once a cluster has settled: Redis's names, each
    room's members hash, what each node hosts and knows, and each roster,
    all say who is connected where, and nothing waits."""
    named = {}
    for node in h.nodes.values():
        for conn in node.conns:
            if conn in node.chat.connected and conn.room is not None:
                assert p.name_key(conn.name) not in named, conn.name
                named[p.name_key(conn.name)] = conn
    assert h.names == {key: conn.node for key, conn in named.items()}
    for room in ROOMS:
        inside = {key: conn for key, conn in named.items() if conn.room.key == room}
        assert h.members(room) == {key: f"{c.node} {c.name}" for key, c in inside.items()}
    for node in h.nodes.values():
        chat = node.chat
        rooms = {conn.room.key for conn in named.values() if conn.node == node.id}
        assert chat.hosted == rooms == h.hosted(node.id), node.id
        assert set(chat.names) == {key for key, c in named.items() if c.room.key in rooms}
        for key in rooms:
            expected = sorted(c.name for c in named.values() if c.room.key == key)
            assert sorted(chat.rooms.get(key).names()) == expected, (node.id, key)
        assert not (chat.busy or chat.inflight or chat.awaiting or chat.heading), node.id
        assert not (chat.claims or chat.claiming or chat.entering or chat.published), node.id


# What clients and nodes do, and how often, in the test below.
ACTIONS = (
    ["connect"] * 3
    + ["join"] * 3
    + ["nick"] * 2
    + ["leave", "quit"]
    + ["say"] * 2
    + ["msg"]
    + ["step"] * 4
    + ["deliver"] * 4
    + ["tick"]
)


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False), st.booleans())
def test_whatever_clients_do_and_whenever_nodes_run_a_settled_cluster_agrees(rng, restart):
    """Clients come, take and change names (some the same), move, talk
    and leave, at any point of their node's batches and reads (and Redis
    restarts empty once, midway, if restart); once the cluster has
    settled, names, members, hosting and rosters agree everywhere."""
    h = Cluster(nodes=("A", "B", "C"), arrival_merge_threshold=3, arrival_merge_window=1.0)
    clients = []
    for turn in range(60):
        if restart and turn == 30:
            h.redis_restart()
        action = rng.choice(ACTIONS)
        live = [c for c in clients if c in h.nodes[c.node].chat.connected]
        conn = rng.choice(live) if live else None
        if action == "connect" or conn is None:
            clients.append(h.connect(rng.choice("ABC")))
            h.say(clients[-1], rng.choice(NAMES))
        elif action == "join":
            h.say(conn, f"/join {rng.choice(ROOMS)}", *rng.choice([[], ["hi"], ["/who"]]))
        elif action == "nick":
            h.say(conn, f"/nick {rng.choice(NAMES)}")
        elif action == "leave":
            h.disconnect(conn)
        elif action == "quit":
            h.say(conn, "/quit")
        elif action == "say":
            h.say(conn, "hi", "/who")
        elif action == "msg":
            h.say(conn, f"/msg {rng.choice(NAMES)} psst")
        elif action == "step":
            h.step(rng.choice("ABC"))
        elif action == "deliver":
            h.deliver(
                rng.choice("ABC"),
                limit=rng.choice([None, 1, 2]),
                rooms=rng.choice([None, None, ["lobby"], ["den"], []]),
                hosting=rng.random() < 0.7,
            )
        else:
            h.now += 0.5
    h.run()
    h.now += 10
    h.run()
    check_settled_cluster(h)


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
    assert h.ops("lobby", "say") == []


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
    assert h.take(bob) == ["ann has left (joined #den)", "ann has arrived"]


def test_a_private_line_to_a_local_member_goes_through_its_nodes_inbox_in_order():
    h = Cluster()
    ann, amy = h.named("A", "ann"), h.named("A", "amy")
    settled(h, ann, amy)
    h.say(amy, "mine")
    h.step("A")
    h.say(ann, "/msg amy psst")
    assert h.take_now(ann) == []  # told when the bus has routed it
    h.step("A")
    assert h.take_now(ann) == ["ann (private to amy): psst"]
    assert h.take_now(amy) == []  # neither line is back yet
    assert h.take(amy) == ["amy: mine", "ann (private): psst"]
    assert h.ops("~A") == [["msg", "ann", "amy", "psst"]]
    assert h.ops("lobby", "msg") == []


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
    h.named("B", "bob")  # B hosts the lobby: it knows ann
    c = h.connect("B")
    h.say(c, "ANN")
    assert h.take_now(c) == [PROMPT, "error: the name ANN is taken", p.NAME_PROMPT_AGAIN]
    h.say(c, "a b")
    assert h.take_now(c) == [
        "error: 'U+0020' is not allowed in a name (letters, digits, _ - . only)",
        p.NAME_PROMPT_AGAIN,
    ]
    assert not h.chat("B").requests  # nothing was asked of Redis


def test_a_name_taken_in_a_room_this_node_does_not_host_is_refused_by_redis():
    h = Cluster()
    ann = h.named("A", "ann")
    h.say(ann, "/join den")
    h.run()
    bob = h.named("B", "bob")
    assert "ann" not in h.chat("B").names  # B hosts the lobby, not den
    c = h.connect("B")
    h.say(c, "Ann")
    assert h.chat("B").requests[-1][0] == "claim"
    assert h.take(c) == [PROMPT, "error: the name Ann is taken", p.NAME_PROMPT_AGAIN]
    assert h.names == {"ann": "A", "bob": "B"}
    assert h.take(bob) == []


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
    # A hosts the lobby already, B asks for it first: dan enters before zed.
    assert h.take(d) == [
        PROMPT,
        "error: the name Zed is taken",
        p.NAME_PROMPT_AGAIN,
        "You are dan",
        "Also here (1): ann",
        "zed has arrived",
        "dan: hi",
    ]
    assert h.take(c) == [PROMPT, "You are zed", "Also here (2): ann, dan", "dan: hi"]
    assert h.take(ann) == ["dan has arrived", "zed has arrived", "dan: hi"]
    assert h.names == {"ann": "A", "zed": "B", "dan": "A"}


def test_a_client_that_leaves_before_its_claim_is_answered_frees_the_name():
    h = Cluster()
    c = h.connect("A")
    h.say(c, "ann")
    h.disconnect(c)
    h.run()
    assert h.names == {}
    assert h.ops("lobby") == []
    again = h.named("B", "ann")
    assert again.name == "ann"


def test_a_client_that_leaves_before_its_enter_comes_back_arrives_and_leaves_everywhere():
    h = Cluster()
    amy, bob = h.named("A", "amy"), h.named("B", "bob")
    settled(h, amy, bob)
    c = h.connect("A")
    h.say(c, "cid")
    h.step("A")  # the claim is answered
    h.step("A")  # the enter is published (A hosts the lobby)
    assert h.ops("lobby")[-1] == ["enter", "cid"]
    h.disconnect(c)
    h.run()
    assert h.take_all(amy, bob) == [["cid has arrived", "cid has left"]] * 2
    assert "cid" not in h.names
    assert "cid" not in h.chat("A").names and "cid" not in h.chat("B").names
    assert "cid" not in h.members("lobby")


def test_a_first_client_that_leaves_before_its_room_is_hosted_publishes_nothing():
    h = Cluster()
    bob = h.named("B", "bob")
    settled(h, bob)
    c = h.connect("A")
    h.say(c, "cid")
    h.step("A")  # claimed
    h.step("A")  # the lobby is asked for, not hosted yet
    assert h.nodes["A"].asked == [("host", "lobby")]
    h.disconnect(c)
    h.run()
    assert h.take(bob) == []
    assert h.names == {"bob": "B"}
    assert h.ops("lobby") == [["enter", "bob"]]
    assert h.hosted("A") == set() and h.chat("A").hosted == set()


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
    assert h.members("lobby") == {"anna": "A anna", "amy": "A amy", "bob": "B bob"}
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
    assert h.members("lobby")["ann"] == "A ANN"


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
    assert h.members("lobby") == {"ann": "A ann"}
    for node in "ABC":
        assert set(h.chat(node).names) == ({"ann"} if node == "A" else set())
    assert h.hosted("B") == h.hosted("C") == set()


def test_rooms_count_the_members_of_every_node_from_the_directories():
    h = Cluster()
    ann, amy = h.named("A", "ann"), h.named("A", "amy")
    bob, ben = h.named("B", "bob"), h.named("B", "ben")
    h.say(ann, "/join den")
    h.say(ben, "/join den")
    h.say(bob, "/join Attic")
    settled(h, ann, amy, bob, ben)
    assert "attic" not in h.hosted("A")  # counted from B's directory
    h.say(amy, "/rooms")
    assert h.take(amy) == ["Rooms (3): #lobby (1, you are here), #den (2), #Attic (1)"]
    h.say(bob, "/rooms")
    assert h.take(bob) == ["Rooms (3): #Attic (1, you are here), #den (2), #lobby (1)"]
    h.say(ben, "/who")
    assert h.take(ben) == ["Here now (2): ben, ann"]
    assert h.directories == {"A": {"lobby": 1, "den": 1}, "B": {"den": 1, "Attic": 1}}


def test_rooms_are_a_heartbeat_old_for_the_rooms_a_node_does_not_host():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(bob, "/join attic")
    while h.step() | h.deliver():
        pass  # settled, but no heartbeat yet
    assert h.take_now(ann) == ["bob has left (joined #attic)"]
    h.say(ann, "/rooms")
    h.step()
    h.deliver()
    assert h.take_now(ann) == ["Rooms (1): #lobby (1, you are here)"]
    h.beat()
    h.say(ann, "/rooms")
    assert h.take(ann) == ["Rooms (2): #lobby (1, you are here), #attic (1)"]


def test_join_across_nodes_moves_the_member_everywhere_with_the_rooms_history():
    h = Cluster()
    ann, amy = h.named("A", "ann"), h.named("A", "amy")
    bob = h.named("B", "bob")
    h.say(ann, "/join den")
    h.run()
    h.say(ann, "den line", "/me reads")
    h.say(bob, "lobby line")
    settled(h, ann, amy, bob)
    assert "den" not in h.hosted("B")
    h.say(bob, "/join den")
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


def test_a_join_into_a_room_this_node_does_not_host_names_it_as_its_host_spells_it():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    h.say(ann, "/join den")
    settled(h, ann, bob)
    h.say(bob, "/join DEN")
    assert h.take(bob) == ["You are now in #den", "Also here (1): ann"]
    assert h.take(ann) == ["bob has arrived"]
    assert h.ops("lobby")[-1] == ["leave", "bob", "joined #den"]  # as one server says it


def test_private_lines_cross_nodes_and_rooms():
    h = Cluster()
    ann, amy = h.named("A", "ann"), h.named("A", "amy")
    bob = h.named("B", "bob")
    h.say(bob, "/join den")
    settled(h, ann, amy, bob)
    h.say(ann, "/msg bob psst", "/msg nobody hello?")
    assert h.take(ann) == ["ann (private to bob): psst", "error: no such user: nobody"]
    assert h.take_all(bob, amy) == [["ann (private): psst"], []]
    h.say(bob, "/msg amy back at you")
    assert h.take(amy) == ["bob (private): back at you"]
    assert h.take(bob) == ["bob (private to amy): back at you"]
    assert h.ops("~B") == [["msg", "ann", "bob", "psst"]]
    assert h.ops("~A") == [["msg", "bob", "amy", "back at you"]]


def test_a_private_line_to_a_name_typed_in_another_case_reaches_its_holder():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    h.say(bob, "/join den")
    settled(h, ann, bob)
    h.say(ann, "/msg BOB psst")
    h.run()
    assert h.take_now(bob) == ["ann (private): psst"]


def test_the_senders_copy_of_a_private_line_shows_the_name_as_its_holder_spells_it():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    h.say(bob, "/join den")
    settled(h, ann, bob)
    h.say(ann, "/msg BOB psst")
    assert h.take(ann) == ["ann (private to bob): psst"]  # as one server says it


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
# Interest: a node reads the rooms it has members in, and no other


def test_a_node_is_handed_no_entry_of_a_room_where_it_has_no_member():
    h = Cluster(nodes=("A", "B", "C"))
    ann = h.named("A", "ann")
    bob, ben = h.named("B", "bob"), h.named("B", "ben")
    cid = h.named("C", "cid")
    h.say(ben, "/join den")
    h.say(cid, "/join den")
    settled(h, ann, bob, ben, cid)
    h.say(ben, "in den", "/me waves")
    h.say(cid, "/nick cy")
    h.say(ann, "in the lobby")
    h.run()
    assert len(h.entries("den")) >= 4
    assert h.rooms_read("A") == {"lobby"}
    assert h.rooms_read("C") == {"lobby", "den"}  # cid was in the lobby first
    assert h.hosted("A") == {"lobby"} and h.chat("A").hosted == {"lobby"}
    assert h.hosted("C") == {"den"} and h.chat("C").hosted == {"den"}
    assert all(room_key != "den" for room_key, _ in h.nodes["A"].snapshots)
    chat = h.chat("A")
    assert set(chat.names) == {"ann", "bob"}  # ben and cy are not known at A
    assert chat.rooms.get("den") is None
    assert not any(room_key == "lobby" for room_key, *_ in h.nodes["C"].delivered[-3:])
    assert h.take_all(ann, bob) == [["ann: in the lobby"]] * 2


def test_a_node_asks_to_host_a_room_before_its_member_enters_and_drops_it_after_the_leave():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    node = h.nodes["A"]
    node.asked.clear()
    h.say(ann, "/join den")
    h.step("A")
    assert node.asked == [("host", "den")]
    assert h.ops("lobby")[-1] == ["leave", "ann", "joined #den"]
    h.run()
    # ann's enter is published after the snapshot: A reads it back.
    (snapshot,) = [snap for room_key, snap in node.snapshots if room_key == "den"]
    assert [(n, ops) for n, _, ops in h.entries("den")] == [("A", [["enter", "ann"]])]
    assert h.logs["den"].entries[0].offset > snapshot.offset
    assert ("den", "A", 1, [["enter", "ann"]]) in node.delivered
    # The lobby was dropped once ann's leave was back: no member of A's there.
    assert node.asked == [("host", "den"), ("drop", "lobby")]
    assert h.hosted("A") == {"den"}
    h.say(ann, "/join lobby")
    h.step("A")  # ann's leave from den is out: den is kept until it is back
    h.deliver("A", rooms=["lobby"])
    h.step("A")
    assert ("drop", "den") not in node.asked
    assert h.hosted("A") == {"den", "lobby"}
    h.deliver("A", rooms=["den"])  # the leave is back
    h.step("A")
    assert node.asked[-1] == ("drop", "den")
    assert node.asked.count(("host", "lobby")) == 1
    h.run()
    assert h.hosted("A") == {"lobby"} and h.chat("A").hosted == {"lobby"}
    assert h.take(ann) == [
        "You are now in #den",
        "Nobody else is here.",
        "You are now in #lobby",
        "Also here (1): bob",
    ]


def test_a_room_on_its_way_in_is_not_dropped_while_the_leave_is_out():
    """The room a /join goes to is asked for at once, to be ready when the
    leave from the old room is back; it is kept meanwhile, not dropped as
    a room with nobody of this node's in it and asked for again."""
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    node = h.nodes["A"]
    node.asked.clear()
    h.say(ann, "/join den")
    h.step("A")
    h.deliver("A", rooms=[])  # den hosted; the leave not read yet
    h.step("A")
    assert node.asked == [("host", "den")]
    h.run()
    assert node.asked == [("host", "den"), ("drop", "lobby")]
    assert h.take(ann) == ["You are now in #den", "Nobody else is here."]


def test_a_node_that_starts_to_host_a_room_gets_its_roster_and_history_from_the_snapshot():
    h = Cluster(history=3)
    ann = h.named("A", "ann")
    bob = h.named("B", "bob")
    h.say(bob, "/join den")
    h.run()
    h.say(bob, "d1", "d2", "/me d3", "d4")
    h.say(ann, "lobby line")
    settled(h, ann, bob)
    assert h.logs["den"].history == [b"bob: d2\n", b"* bob d3\n", b"bob: d4\n"]
    assert h.chat("A").rooms.get("den") is None
    h.say(ann, "/join den")
    h.run()
    (snapshot,) = [snap for room_key, snap in h.nodes["A"].snapshots if room_key == "den"]
    assert snapshot.members == [("B", "bob")]
    assert snapshot.history == [b"bob: d2\n", b"* bob d3\n", b"bob: d4\n"]
    assert h.take(ann) == [
        "You are now in #den",
        "Also here (1): bob",
        *history_block("den", ["bob: d2", "* bob d3", "bob: d4"]),
    ]
    assert h.take(bob) == ["ann has arrived"]
    h.say(ann, "/who")
    assert h.take(ann) == ["Here now (2): ann, bob"]


def test_a_line_between_the_snapshot_and_the_enter_is_in_the_history_once():
    h = Cluster(history=3)
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    h.say(bob, "/join den")
    h.run()
    h.say(bob, "d1", "d2")
    settled(h, ann, bob)
    h.say(ann, "/join den")
    h.step("A")
    h.deliver("A", rooms=[])  # den's snapshot: d1, d2
    h.say(bob, "d3")
    h.step("B")  # after the snapshot, before ann's enter
    h.run()
    assert h.take(ann) == [
        "You are now in #den",
        "Also here (1): bob",
        *history_block("den", ["bob: d1", "bob: d2", "bob: d3"]),
    ]


def test_a_join_is_a_leave_in_the_old_rooms_log_then_an_enter_in_the_new_ones():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    h.say(bob, "/join den")
    settled(h, ann, bob)
    h.say(ann, "/join den")
    h.step("A")
    assert h.ops("lobby")[-1] == ["leave", "ann", "joined #den"]
    assert h.ops("den")[-1] == ["enter", "bob"]
    h.deliver("A", rooms=["lobby"])  # the leave is back; den hosted
    assert h.take_now(ann) == []  # in neither room, as on every node
    assert ann.room is not None and ann not in ann.room.members
    h.step("A")
    assert h.ops("den")[-1] == ["enter", "ann"]
    assert h.take_now(ann) == []
    h.deliver("A")
    assert h.take_now(ann) == ["You are now in #den", "Also here (1): bob"]
    assert h.take(bob) == ["ann has arrived"]


def test_members_of_a_dropped_room_are_forgotten():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "/join den")
    h.run()
    chat = h.chat("A")
    assert "bob" not in chat.names and chat.rooms.lobby.size == 0
    assert not any(member.node == "B" for member in chat.remotes.values())
    assert "B" not in chat.nodes
    h.say(ann, "/join lobby")
    assert h.take(ann) == [
        "You are now in #den",
        "Nobody else is here.",
        "You are now in #lobby",
        "Also here (1): bob",
    ]


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
    assert h.chat("C").names == {} and h.hosted("C") == set()
    cid = h.connect("C")
    h.say(cid, "cid", "/who", "/rooms")
    assert h.take(cid) == [
        PROMPT,
        "You are cid",
        "Also here (1): ann",
        "Here now (2): cid, ann",
        "Rooms (2): #lobby (2, you are here), #den (1)",
    ]
    assert {name: member.room.name for name, member in h.chat("C").names.items()} == {
        "ann": "lobby",
        "cid": "lobby",
    }
    assert h.take_all(ann, bob) == [["cid has arrived"], []]
    h.say(cid, "/join den")
    assert h.take(cid) == ["You are now in #den", "Also here (1): bob"]
    assert h.take_all(ann, bob) == [["cid has left (joined #den)"], ["cid has arrived"]]


def test_a_node_started_later_shows_the_rooms_histories_once():
    h = Cluster(history=3)
    ann = h.named("A", "ann")
    bob = h.named("B", "bob")
    h.say(ann, "one", "two", "/join den")
    h.run()
    h.say(ann, "d1", "d2", "d3", "d4")
    h.say(bob, "three", "/msg ann private lines are not kept")
    settled(h, ann, bob)
    h.start("C")
    h.say(ann, "d5")
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
    # The first survivor's bus published it into B's rooms, and each host
    # where B's members were known: twice in each room.
    assert h.ops("lobby", "lost") == [["lost", "B", NODE_LOST]] * 2
    assert h.ops("den", "lost") == [["lost", "B", NODE_LOST]] * 2
    assert h.members("lobby") == {"ann": "A ann"} and h.members("den") == {"cid": "C cid"}
    h.say(ann, "/who")
    h.say(cid, "/who")
    assert h.take_all(ann, cid) == [["Here now (1): ann"], ["Here now (1): cid"]]
    # The name is free again, here and in Redis.
    newbob = h.named("A", "BOB")
    assert h.take(ann) == ["BOB has arrived"]
    # The departure applied again: nothing changes, the new BOB stays.
    lost = ("X", 1, [["lost", "B", NODE_LOST]])
    for node in "AC":
        h.chat(node).on_bus(BUS, None, ("lobby", [lost]))
        h.chat(node).on_bus(BUS, None, ("den", [lost]))
    h.say(cid, "/join lobby")
    assert h.take(cid) == ["You are now in #lobby", "Also here (2): ann, BOB"]
    assert h.take_all(ann, newbob) == [["cid has arrived"], ["cid has arrived"]]


def test_a_lost_node_s_members_in_a_room_no_survivor_hosts_leave_its_members_hash():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    h.say(bob, "/join attic")
    settled(h, ann, bob)
    h.kill("B")
    h.run()
    assert h.ops("attic", "lost") == [["lost", "B", NODE_LOST]]  # from B's directory
    assert h.members("attic") == {}
    h.say(ann, "/join attic")
    assert h.take(ann) == ["You are now in #attic", "Nobody else is here."]


def test_a_member_of_a_node_lost_before_its_heartbeat_is_not_left_in_a_room():
    """The lost node's "lost" missed the room (its directory did not list
    it yet, and no survivor hosted it): the room's members hash still
    lists its member, and the node that hosts the room later takes it out."""
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(bob, "/join attic")
    while h.step() | h.deliver():
        pass  # settled, but no heartbeat yet: attic is not in B's directory
    h.kill("B")
    h.run()
    assert h.take(ann) == ["bob has left (joined #attic)"]
    assert h.members("attic") == {"bob": "B bob"}
    h.say(ann, "/join attic")
    assert h.take(ann) == ["You are now in #attic", "Nobody else is here."]
    assert h.ops("attic")[-2:] == [["lost", "B", NODE_LOST], ["enter", "ann"]]
    assert h.members("attic") == {"ann": "A ann"}


def test_a_node_declared_lost_while_alive_counts_in_rooms_again_once_back():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    h.say(bob, "/join attic")
    settled(h, ann, bob)
    h.stall("B")
    h.declare_lost("B")
    h.resume("B")
    h.run()
    h.say(ann, "/rooms")
    assert h.take(ann) == ["Rooms (2): #lobby (1, you are here), #attic (1)"]


def test_a_node_once_declared_lost_while_empty_frees_its_names_when_lost_for_real():
    h = Cluster()
    ann = h.named("A", "ann")
    h.stall("B")
    h.declare_lost("B")
    h.run()
    h.resume("B")
    h.run()
    h.named("B", "bob")
    assert h.take(ann) == ["bob has arrived"]
    h.kill("B")
    assert h.take(ann) == ["bob has left (server lost)"]
    assert h.names == {"ann": "A"}


def test_a_stopped_node_says_goodbye_and_its_members_leave_once():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.stop("B")
    assert h.take_now(bob) == [p.SHUTDOWN]
    assert h.take(ann) == ["bob has left (server stopped)"]
    assert h.names == {"ann": "A"}
    assert h.members("lobby") == {"ann": "A ann"}
    h.say(ann, "/rooms")
    assert h.take(ann) == ["Rooms (1): #lobby (1, you are here)"]


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
    # In the order they came, as the room's log told it: the same everywhere.
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


def test_entries_a_failover_lost_are_published_again_and_applied_once():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "one")
    h.say(bob, "two")
    h.run()
    h.say(ann, "three")
    h.run()
    assert h.take_all(ann, bob) == [["ann: one", "bob: two", "ann: three"]] * 2
    h.failover("lobby", lose=2)  # the replica lacks "two" and "three"
    assert [op[1] for op in h.ops("lobby", "say")] == ["ann: one"]
    h.say(ann, "four")  # A's chain is short: "three" goes again first
    h.run()
    assert [op[1] for op in h.ops("lobby", "say")] == ["ann: one", "ann: three", "ann: four"]
    assert h.take_all(ann, bob) == [["ann: four"]] * 2
    assert h.nodes["A"].republished == 1
    assert h.nodes["A"].duplicates >= 1 and h.nodes["B"].resets >= 1
    h.say(bob, "five")  # B's chain too: "two" goes again first
    h.run()
    assert [op[1] for op in h.ops("lobby", "say")][-2:] == ["bob: two", "bob: five"]
    assert h.take_all(ann, bob) == [["bob: five"]] * 2
    h.say(ann, "/join den", "/join lobby")
    assert h.take(ann) == [
        "You are now in #den",
        "Nobody else is here.",
        "You are now in #lobby",
        "Also here (1): bob",
        *history_block("lobby", ["ann: one", "ann: three", "ann: four", "bob: two", "bob: five"]),
    ]


def test_after_redis_restarts_empty_nothing_is_told_twice_and_names_stay_held():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    h.say(ann, "before")
    settled(h, ann, bob)
    h.redis_restart()
    h.run()
    assert h.take_all(ann, bob) == [[], []]
    assert h.names == {"ann": "A", "bob": "B"}
    # Each node said who of the lobby's members are its own (RESYNC).
    assert h.ops("lobby", "present") == [["present", ["ann"]], ["present", ["bob"]]]
    assert h.members("lobby") == {"ann": "A ann", "bob": "B bob"}
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
    assert h.members("lobby") == {"ann": "A ann"}
    h.resume("B")
    h.run()
    assert h.names == {"ann": "A", "bob": "B"}  # claimed again
    assert h.ops("lobby")[-1] == ["present", ["bob"]]
    assert h.members("lobby") == {"ann": "A ann", "bob": "B bob"}
    assert h.take(ann) == []  # silently: bob never left for B
    h.say(ann, "/who")
    assert h.take(ann) == ["Here now (2): ann, bob"]
    h.say(bob, "still here")
    assert h.take_all(ann, bob) == [["bob: still here"], ["bob: still here"]]


def test_after_redis_restarts_empty_an_enter_not_back_yet_is_present():
    h = Cluster()
    amy, bob = h.named("A", "amy"), h.named("B", "bob")
    settled(h, amy, bob)
    cid = h.connect("A")
    h.say(cid, "cid")
    h.step("A")  # claimed
    h.step("A")  # cid's enter is out, not back
    h.redis_restart()  # A publishes it again, then its "present"
    h.run()
    assert h.ops("lobby", "present")[0] == ["present", ["amy", "cid"]]
    assert h.members("lobby") == {"amy": "A amy", "cid": "A cid", "bob": "B bob"}
    assert h.take(cid)[-2:] == ["You are cid", "Also here (2): amy, bob"]
    h.say(bob, "/who")
    assert h.take(bob) == ["cid has arrived", "Here now (3): bob, amy, cid"]


@pytest.mark.parametrize("move", ["/nick zed", "/join den"])
def test_a_node_declared_lost_says_who_is_present_as_it_published_it(move):
    """Its "present" lands after what it published and has not read back:
    a nick, or a /join's leave, is not undone by it."""
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, move)
    if move == "/nick zed":
        h.step("A")  # claimed: the nick waits for the next batch
    h.declare_lost("A")  # while A is alive: the first survivor's "lost" comes first
    h.step("A")  # A's nick or leave lands after it
    assert h.ops("lobby")[-2][0] == "lost"
    h.deliver("A", limit=1)  # A reads the "lost" before its own entry
    h.run()
    assert h.names == {"bob": "B", "zed" if move == "/nick zed" else "ann": "A"}
    h.say(bob, "/who")
    if move == "/nick zed":
        assert h.ops("lobby", "present") == [["present", ["zed"]]] * 2  # one per "lost"
        assert h.members("lobby") == {"bob": "B bob", "zed": "A zed"}
        assert h.take(bob)[-1] == "Here now (2): bob, zed"
    else:
        assert h.ops("lobby", "present") == [["present", []]] * 2
        assert h.members("lobby") == {"bob": "B bob"}
        assert h.take(bob)[-1] == "Here now (1): bob"
        assert h.take(ann) == ["You are now in #den", "Nobody else is here."]


def test_bad_entries_in_a_room_log_are_skipped():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.append("lobby", '[9,["say","from the future",true]]')
    h.append("lobby", '[2,["say","bad keep","yes"]]')
    h.say(bob, "fine")
    assert h.take_all(ann, bob) == [["bob: fine"], ["bob: fine"]]
    assert h.nodes["A"].bad_entries == 2 and h.nodes["B"].bad_entries == 2


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
    assert h.names == {}  # --compat claims nothing


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


def test_compat_a_client_piping_many_lines_at_once_loses_none():
    h = Cluster(compat=True)
    b = h.connect("B", "2.2.2.2:2")
    settled(h, b)
    a = h.connect("A", "1.1.1.1:1")
    h.say(a, *[f"line {i}" for i in range(30)])
    lines = [f"1.1.1.1:1: line {i}" for i in range(30)]
    assert h.take(a) == ["You are 1.1.1.1:1", *lines]
    assert h.take(b) == ["1.1.1.1:1 has arrived", *lines]


# ----------------------------------------------------------------------
# The bus's backlog


def test_a_full_bus_refuses_lines_says_so_and_publishes_nothing():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.chat("A").backlog = lambda: 10**9
    h.chat("A").bus_up = lambda: False  # the bound is for an outage
    before = h.published()
    h.say(ann, "lost?", "/me tries", "/msg bob psst")
    assert h.take(ann) == [f"error: {BUS_DOWN}"] * 3
    assert BUS_DOWN.endswith("your line was not sent")
    assert h.published() == before
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
# Clients that leave midway, and busy clients


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


def test_a_nick_on_its_way_keeps_its_name_from_the_other_clients_of_its_node():
    """Redis says yes to a name its node holds already: between the claim's
    answer and the nick's return the name is taken here all the same."""
    h = Cluster()
    ann, amy, bob = h.named("A", "ann"), h.named("A", "amy"), h.named("B", "bob")
    settled(h, ann, amy, bob)
    h.say(ann, "/nick zed")
    h.step("A")  # claimed: the nick is out, not back
    h.say(amy, "/nick ZED")
    assert h.take_now(amy) == ["error: the name ZED is taken"]
    c = h.connect("A")
    h.say(c, "Zed")
    assert h.take_now(c) == [PROMPT, "error: the name Zed is taken", p.NAME_PROMPT_AGAIN]
    assert h.take_all(ann, amy, bob) == [["ann is now known as zed"]] * 3
    h.say(bob, "/who")
    assert h.take(bob) == ["Here now (3): bob, zed, amy"]
    assert h.members("lobby") == {"zed": "A zed", "amy": "A amy", "bob": "B bob"}
    h.disconnect(ann)
    assert h.take(bob) == ["zed has left"]
    assert h.names == {"amy": "A", "bob": "B"}
    assert not h.chat("A").claiming
    h.say(amy, "/nick ZED")  # free now
    assert h.take(bob) == ["amy is now known as ZED"]


def test_a_client_that_leaves_right_after_its_nick_is_published_leaves():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "/nick zed")
    h.step("A")  # the claim is answered: the nick is queued
    h.disconnect(ann)
    assert h.take(bob) == ["ann is now known as zed", "zed has left"]
    assert h.ops("lobby")[-2:] == [["nick", "ann", "zed"], ["leave", "zed", ""]]
    h.say(bob, "/who")
    assert h.take(bob) == ["Here now (1): bob"]
    assert h.names == {"bob": "B"}
    assert h.members("lobby") == {"bob": "B bob"}
    assert "zed" not in h.chat("A").names


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


def test_a_node_that_came_back_after_being_declared_lost_can_be_lost_again():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.stall("B")
    h.declare_lost("B")
    assert h.take(ann) == ["bob has left (server lost)"]
    h.resume("B")
    h.run()
    assert "B" not in h.lost_marks  # reasserted: a later loss is handled again
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
    assert all(ann not in conns for queue in chat.awaiting.values() for _, conns in queue)


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


def _leave_mid_join(h, ann, stage):
    """ann types /join den, then leaves at stage: "leave-out" (its leave
    from the lobby not back, den not hosted yet), "den-hosted" (the same,
    den hosted), "leave-back" (back, den not hosted yet) or "enter-out"
    (its enter into den published, not back)."""
    h.say(ann, "/join den")
    h.step("A")
    if stage == "den-hosted":
        h.deliver("A", rooms=[])
        assert "den" in h.chat("A").hosted
    elif stage == "leave-back":
        h.deliver("A", rooms=["lobby"], hosting=False)
        assert h.chat("A").heading[ann].carried is not None
    elif stage == "enter-out":
        h.deliver("A", rooms=["lobby"])
        h.step("A")
        assert h.ops("den")[-1] == ["enter", "ann"]
    h.disconnect(ann)
    h.run()


@pytest.mark.parametrize("stage", ["leave-out", "den-hosted", "leave-back", "enter-out"])
def test_a_client_that_leaves_mid_join_leaves_once_and_its_name_is_free(stage):
    h = Cluster()
    ann, bob, ben = h.named("A", "ann"), h.named("B", "bob"), h.named("B", "ben")
    h.say(ben, "/join den")
    settled(h, ann, bob, ben)
    _leave_mid_join(h, ann, stage)
    assert h.take(bob) == ["ann has left (joined #den)"]
    assert h.take(ben) == (["ann has arrived", "ann has left"] if stage == "enter-out" else [])
    assert h.names == {"bob": "B", "ben": "B"}
    assert "ann" not in h.chat("A").names and "ann" not in h.chat("B").names
    assert h.members("lobby") == {"bob": "B bob"} and h.members("den") == {"ben": "B ben"}
    assert h.hosted("A") == set() and h.chat("A").hosted == set()
    again = h.connect("A")
    h.say(again, "ann")
    assert h.take(again) == [PROMPT, "You are ann", "Also here (1): bob"]


def test_a_client_that_leaves_mid_claim_of_a_nick_frees_both_names():
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "/nick zed")
    h.disconnect(ann)  # before the claim is answered
    h.run()
    assert h.take(bob) == ["ann has left"]
    assert h.names == {"bob": "B"}


@pytest.mark.parametrize("stage", ["typed-behind", "now", "leave-out", "leave-back", "enter-out"])
@pytest.mark.parametrize("then", ["hi", "/join attic"])
def test_a_client_that_leaves_with_lines_held_behind_a_join_leaves_once(stage, then):
    """What it typed after /join can follow it into the room only behind
    its enter: lost with it before that, never said in a room it never
    entered nor taken for a move out of the room it already left."""
    h = Cluster()
    ann, bob, ben = h.named("A", "ann"), h.named("B", "bob"), h.named("B", "ben")
    h.say(ben, "/join den")
    settled(h, ann, bob, ben)
    if stage == "typed-behind":
        h.say(ann, "one")
        h.step("A")  # one is out: the /join waits for it, then is held with the rest
    h.say(ann, "/join den", then)
    if stage in ("leave-out", "leave-back", "enter-out"):
        h.step("A")
    if stage == "leave-back":
        h.deliver("A", rooms=["lobby"], hosting=False)
    elif stage == "enter-out":
        h.deliver("A", rooms=["lobby"])
        h.step("A")
        assert h.ops("den")[-1] == ["enter", "ann"]
    h.disconnect(ann)
    h.run()
    before = ["ann: one"] if stage == "typed-behind" else []
    assert h.take(bob) == [*before, "ann has left (joined #den)"]
    if stage == "enter-out":
        said = ["ann: hi"] if then == "hi" else []
        assert h.take(ben) == ["ann has arrived", *said, "ann has left"]
    else:
        assert h.take(ben) == []
        assert h.ops("den") == [["enter", "ben"]]
    assert h.ops("lobby", "leave")[-1] == ["leave", "ann", "joined #den"]
    assert h.ops("attic") == []
    assert h.names == {"bob": "B", "ben": "B"}
    assert h.members("lobby") == {"bob": "B bob"} and h.members("den") == {"ben": "B ben"}
    assert h.hosted("A") == set() and h.chat("A").hosted == set()
    assert not h.chat("A").awaiting and "ann" not in h.chat("B").names


def test_a_room_stays_hosted_until_the_leave_of_a_client_that_left_on_its_way_in_is_back():
    """The enter and the leave of a client that left before its enter was
    published are nobody's entry; the node still waits for them before it
    drops the room, or it would never apply the leave and never free the
    name."""
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "/join den")
    h.step("A")  # ann's leave from the lobby is out
    c = h.connect("A")
    h.say(c, "cid")
    h.step("A")  # claimed: cid's enter waits for the next batch
    h.disconnect(c)
    h.step("A")
    assert h.ops("lobby")[-2:] == [["enter", "cid"], ["leave", "cid", ""]]
    h.deliver("A", limit=1)  # ann's leave only: A has nobody in the lobby now
    h.run()
    assert h.nodes["A"].asked[-1] == ("drop", "lobby")
    assert ("lobby", "A", 3, [["enter", "cid"], ["leave", "cid", ""]]) in h.nodes["A"].delivered
    assert h.take(bob) == ["ann has left (joined #den)", "cid has arrived", "cid has left"]
    assert h.names == {"ann": "A", "bob": "B"}
    assert h.hosted("A") == {"den"} and not h.chat("A").awaiting
    again = h.connect("A")
    h.say(again, "cid")
    assert h.take(again) == [PROMPT, "You are cid", "Also here (1): bob"]


@pytest.mark.parametrize("then", [["hi"], ["/join den"], ["/me waves", "/who"]])
def test_a_client_that_leaves_with_lines_held_behind_a_nick_leaves_under_its_new_name(then):
    """Its held lines would act on its old name: lost with it, not said
    under the old name after the nick, nor taken for a move of a member
    that is not there any more."""
    h = Cluster()
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    h.say(ann, "/nick zed")
    h.step("A")  # claimed: the nick is out, not back
    h.say(ann, *then)
    assert h.chat("A").busy[ann] == [line.encode() for line in then]
    h.disconnect(ann)
    assert h.take(bob) == ["ann is now known as zed", "zed has left"]
    assert h.ops("lobby")[-2:] == [["nick", "ann", "zed"], ["leave", "zed", ""]]
    assert h.names == {"bob": "B"} and h.members("lobby") == {"bob": "B bob"}
    assert h.ops("den") == [] and h.hosted("A") == set()
