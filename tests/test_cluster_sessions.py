"""Sessions across a cluster's nodes, on the in-memory model of the routed
bus (cluster_harness.py): ids that every host gives alike, a session
moved to another node silently, a lost or stopped node's sessions away
and leaving once, and the lines a resuming node reads from a room's log."""

import re

from cluster_harness import Cluster
from test_cluster_chat import settled

from gchat import protocol as p
from gchat.cluster import line_seq, logged_lines
from gchat.events import Why

TAGGED = re.compile(r"@(\S+) (.*)")


def start_session(h, conn) -> str:
    h.say(conn, "/session")
    lines = h.take(conn)
    assert lines[0].startswith("session "), lines
    return lines[0].split()[1]


def split(lines):
    """[(id, text)] of tagged lines; an untagged line is an error."""
    out = []
    for line in lines:
        match = TAGGED.fullmatch(line)
        assert match, line
        out.append((match.group(1), match.group(2)))
    return out


def test_every_host_of_a_room_gives_a_line_the_same_id():
    h = Cluster(nodes=("A", "B"))
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    start_session(h, ann)
    start_session(h, bob)
    h.say(bob, "hi", "/me waves")
    h.say(ann, "hello")
    seen_by_ann, seen_by_bob = h.take_all(ann, bob)
    assert seen_by_ann == seen_by_bob
    texts = [text for _, text in split(seen_by_ann)]
    assert sorted(texts) == sorted(["bob: hi", "* bob waves", "ann: hello"])
    ids = [i for i, _ in split(seen_by_ann)]
    assert len(set(ids)) == 3 and ids == sorted(ids, key=lambda i: int(i.split(":")[1]))


def test_a_session_resumed_on_another_node_moves_there_silently():
    h = Cluster(nodes=("A", "B"))
    ann, bob, cid = h.named("A", "ann"), h.named("A", "bob"), h.named("B", "cid")
    settled(h, ann, bob, cid)
    token = start_session(h, ann)
    h.say(bob, "one")
    [(last, _)] = split(h.take(ann))
    h.say(bob, "two")
    h.take(ann)
    back = h.connect("B")
    h.say(back, f"/resume {token} {last}")
    lines = h.take(back)
    assert lines[1:] == ["resumed ann #lobby 1", lines[2]] and lines[2].endswith(" bob: two")
    # The old connection (half-open) is told, and closed.
    assert h.take(ann) == ["error: resumed elsewhere"]
    assert (ann, Why.RESUMED) in h.departed
    assert h.take_all(bob, cid) == [["bob: one", "bob: two"], ["bob: one", "bob: two"]]
    h.say(back, "back")
    assert h.take_all(bob, cid) == [["ann: back"], ["ann: back"]]
    h.say(bob, "/who")
    assert h.take(bob) == ["Here now (3): bob, cid, ann"]
    assert h.names["ann"] == "B"


def test_a_lost_node_s_session_is_away_and_leaves_once_everywhere_when_its_window_ends():
    h = Cluster(nodes=("A", "B", "C"), resume_window=5.0)
    ann, bob, cid = h.named("A", "ann"), h.named("B", "bob"), h.named("C", "cid")
    settled(h, ann, bob, cid)
    start_session(h, ann)
    h.run()
    h.kill("A")
    assert h.take_all(bob, cid) == [[], []]  # away: nobody sees it go
    h.say(bob, "/who")
    assert h.take(bob) == ["Here now (3): bob, ann, cid"]
    h.now += 6
    assert h.take_all(bob, cid) == [
        ["ann has left (connection lost)"],
        ["ann has left (connection lost)"],
    ]
    # Both survivors said it expired; the first in the room's order was
    # applied, the second changed nothing.
    assert h.ops("lobby", "expire") == [["expire", "ann", "A"]] * 2
    h.now += 6
    assert h.take_all(bob, cid) == [[], []]


def test_a_stopped_node_s_session_is_away_and_resumes_on_another_node():
    h = Cluster(nodes=("A", "B"))
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    token = start_session(h, ann)
    h.say(bob, "one")
    [(last, _)] = split(h.take(ann))
    h.stop("A")
    assert h.take(ann) == ["server stopping; resume elsewhere"]
    h.say(bob, "while away")
    assert h.take(bob) == ["bob: one", "bob: while away"]  # no "ann has left"
    back = h.connect("B")
    h.say(back, f"/resume {token} {last}")
    lines = h.take(back)
    assert lines[1] == "resumed ann #lobby 1" and lines[2].endswith(" bob: while away")
    assert h.take(bob) == []  # no arrival either


def test_a_resume_after_the_expiry_is_unknown_and_the_name_is_not_kept():
    h = Cluster(nodes=("A", "B"), resume_window=5.0)
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    token = start_session(h, ann)
    h.run()
    h.kill("A")
    h.run()  # found lost: away from now
    h.now += 6
    assert h.take(bob) == ["ann has left (connection lost)"]
    back = h.connect("B")
    h.say(back, f"/resume {token} -")
    lines = h.take(back)
    # The model keeps the record (Redis expires it with the name); the
    # move finds nobody to take over, and says so.
    assert p.RESUME_UNKNOWN in lines and lines[-1] == p.NAME_PROMPT_AGAIN


# The lines a resuming node reads from the room's log (logged_lines).

E = "ep"


def seq(offset, index, k=1):
    return line_seq(offset, index) + k


def test_logged_lines_tells_each_operation_s_lines_with_their_ids():
    entries = [
        (4, "A", [["say", "ann: old", True]]),
        (5, "B", [["say", "bob: x", True], ["enter", "cid"], ["session", "cid"]]),
        (6, "A", [["nick", "ann", "anna"], ["leave", "cid", "joined #den"], ["present", []]]),
    ]
    after, upto = seq(4, 0), seq(6, 2, 0)
    assert logged_lines(entries, E, after, upto) == [
        (seq(5, 0), f"@ep:{seq(5, 0)} bob: x\n".encode()),
        (seq(5, 1), f"@ep:{seq(5, 1)} cid has arrived\n".encode()),
        (seq(6, 0), f"@ep:{seq(6, 0)} ann is now known as anna\n".encode()),
        (seq(6, 1), f"@ep:{seq(6, 1)} cid has left (joined #den)\n".encode()),
    ]
    # upto cuts: what this node's own log holds is not told twice.
    assert [s for s, _ in logged_lines(entries, E, after, seq(5, 1))] == [seq(5, 0), seq(5, 1)]


def test_logged_lines_cannot_tell_a_lost_node_s_departures_nor_a_trimmed_log():
    lost = [(5, "B", [["lost", "A", "server lost"]]), (6, "B", [["say", "bob: x", True]])]
    assert logged_lines(lost, E, seq(4, 0), seq(7, 0)) is None
    # ... unless it lies before the resume point.
    assert logged_lines(lost, E, seq(5, 0), seq(7, 0)) == [
        (seq(6, 0), f"@ep:{seq(6, 0)} bob: x\n".encode())
    ]
    trimmed = [(9, "B", [["say", "bob: x", True]])]
    assert logged_lines(trimmed, E, seq(4, 0), seq(10, 0)) is None
    assert logged_lines([], E, seq(4, 0), seq(10, 0)) is None


def test_logged_lines_says_an_expiry_once_and_not_after_a_resume():
    entries = [
        (5, "B", [["expire", "ann", "A"]]),
        (6, "C", [["expire", "ann", "A"]]),  # the second host's: nothing
        (7, "B", [["move", "dan"]]),
        (8, "C", [["expire", "dan", "A"]]),  # dan resumed on B first: nothing
    ]
    lines = logged_lines(entries, E, seq(4, 0), seq(9, 0))
    assert lines == [(seq(5, 0), f"@ep:{seq(5, 0)} ann has left (connection lost)\n".encode())]


def test_a_session_already_away_when_its_node_stops_is_away_everywhere_and_leaves_once():
    h = Cluster(nodes=("A", "B", "C"), resume_window=5.0)
    ann, bob = h.named("A", "ann"), h.named("B", "bob")
    settled(h, ann, bob)
    start_session(h, ann)
    h.disconnect(ann)  # its connection drops: away on A, nobody sees it
    h.run()
    h.stop("A")
    h.run()
    assert h.take(bob) == []
    # A node that starts to host the lobby later does not see a ghost of it.
    cid = h.named("C", "cid")
    h.say(cid, "/who")
    assert h.take(cid) == ["Here now (2): cid, bob"]
    assert h.take(bob) == ["cid has arrived"]
    h.now += 6
    assert h.take(bob) == ["ann has left (connection lost)"]
    assert h.take(cid) == []
