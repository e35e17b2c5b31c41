"""Sessions across a cluster (issue 18): real gchat nodes over a real
redis-server (and a Redis Cluster), a session resumed on another node after
its node was killed (-9), stopped (SIGTERM, a rolling restart) or while it
still lives, its departure said once cluster-wide when its window ends."""

import re
import signal

import pytest
from test_e2e_cluster import FAST, until
from test_e2e_cluster import redis_server as redis_server  # noqa: F401  (the fixture)
from test_e2e_sessions import reset, resume, start_session, tagged

# The Redis Cluster runs of the fixture for the tests where its moving parts
# (a room's keys on one master, the name's on another) matter; one
# redis-server for the rest, to keep the suite's time.
ONE_REDIS = pytest.mark.parametrize("redis_server", ["redis"], indirect=True)


def node(start_gchat, redis_server, *args):
    return start_gchat("--redis", redis_server.url, *FAST, *args)


def in_ops(server, name, session=False):
    client = server.named(name)
    token = start_session(client) if session else None
    client.say("/join #ops")
    client.expect("You are now in #ops", skip=True)
    client.expect(r"Nobody else is here\.|Also here.*")
    return client, token


def said(client, count, prefix):
    """bob says count lines, each confirmed by his own echo."""
    for i in range(count):
        client.say(f"{prefix} {i}")
        client.expect(f"bob: {prefix} {i}", skip=True)


def missed(client, count, prefix):
    """The count lines with their ids, each once, in order."""
    return [tagged(client, f"bob: {prefix} {i}") for i in range(count)]


def no_departure_nor_arrival(client, name):
    """/who's roster, which must hold name; no line before it may say that
    name left or arrived."""
    client.say("/who")
    while True:
        line = client.line()
        assert not re.match(f"{name} has (left|arrived)", line), line
        if line.startswith("Here now"):
            assert name in line
            return line


def test_a_killed_node_s_session_resumes_on_another_node_with_every_line_once(
    start_gchat, redis_server
):
    a, b = node(start_gchat, redis_server), node(start_gchat, redis_server)
    bob, _ = in_ops(b, "bob")
    alice, token = in_ops(a, "alice", session=True)
    bob.expect("alice has arrived")
    bob.say("before")
    bob.expect("bob: before")
    last = tagged(alice, "bob: before")
    a.proc.kill()  # kill -9: no goodbye
    said(bob, 20, "gap")
    back = b.client()
    resume(back, token, last)
    back.expect("resumed alice #ops 20")
    ids = missed(back, 20, "gap")
    assert len(set(ids + [last])) == 21
    bob.say("after")
    tagged(back, "bob: after")
    back.say("still me")
    # bob saw no departure and no arrival: his line, alice's, then alice
    # in the roster (after --node-timeout, her node is found lost too).
    assert [bob.line() for _ in range(2)] == ["bob: after", "alice: still me"]
    b.wait_for_log("node .* lost", timeout=10)
    assert "alice" in no_departure_nor_arrival(bob, "alice")
    assert bob.quiet(0.5)


@ONE_REDIS
def test_a_resume_after_the_node_was_found_lost_and_on_a_third_node(start_gchat, redis_server):
    a, b, c = (node(start_gchat, redis_server) for _ in range(3))
    bob, _ = in_ops(b, "bob")
    carol, _ = in_ops(c, "carol")
    alice, token = in_ops(a, "alice", session=True)
    bob.expect("alice has arrived", skip=True)
    carol.expect("alice has arrived", skip=True)
    bob.say("before")
    last = tagged(alice, "bob: before")
    a.proc.kill()
    lost = re.compile("node .* lost")
    until(lambda: any(lost.search(n.stderr_text()) for n in (b, c)), 10, "a loss")
    said(bob, 5, "gap")
    back = c.client()
    resume(back, token, last)
    back.expect("resumed alice #ops 5")
    missed(back, 5, "gap")
    for client in (bob, carol):
        assert "alice" in no_departure_nor_arrival(client, "alice")


def test_a_session_taken_over_on_another_node_while_its_node_lives(start_gchat, redis_server):
    a, b = node(start_gchat, redis_server), node(start_gchat, redis_server)
    bob, _ = in_ops(a, "bob")
    alice, token = in_ops(a, "alice", session=True)
    bob.expect("alice has arrived", skip=True)
    bob.say("one")
    last = tagged(alice, "bob: one")
    said(bob, 3, "more")
    missed(alice, 3, "more")
    # The old connection is still open (half-open after a network change):
    # the resume on node b wins, from an id three lines back.
    back = b.client()
    resume(back, token, last)
    back.expect("resumed alice #ops 3")
    missed(back, 3, "more")
    alice.expect("error: resumed elsewhere")
    alice.closed_after(5)
    said(bob, 2, "later")
    missed(back, 2, "later")
    assert "alice" in no_departure_nor_arrival(bob, "alice")
    # And back again on a, after a dropped connection there.
    reset(back)
    said(bob, 2, "again")
    again = a.client()
    resume(again, token, "-")
    again.expect(r"resumed alice #ops (\d+|gap)")


@ONE_REDIS
def test_an_away_session_of_a_killed_node_leaves_once_cluster_wide(start_gchat, redis_server):
    a, b, c = (node(start_gchat, redis_server, "--resume-window", "2") for _ in range(3))
    bob, _ = in_ops(b, "bob")
    carol, _ = in_ops(c, "carol")
    alice, token = in_ops(a, "alice", session=True)
    bob.expect("alice has arrived", skip=True)
    carol.expect("alice has arrived", skip=True)
    a.proc.kill()
    for client in (bob, carol):
        client.expect(r"alice has left \(connection lost\)", timeout=15)
    for client in (bob, carol):
        client.say("/who")
        roster = client.expect(r"Here now \(2\): (.*)")
        assert sorted(roster.split(": ")[1].split(", ")) == ["bob", "carol"]
        assert client.quiet(0.5)  # once: no second departure
    # Its name is free and its token is no more.
    late = b.client()
    resume(late, token, "-")
    late.expect("error: cannot resume: unknown or expired session")
    late.expect(r".*name\?")
    late.say("alice")
    late.expect("You are alice")


@ONE_REDIS
def test_a_rolling_restart_loses_no_line_for_a_session_client(start_gchat, redis_server):
    a, b = node(start_gchat, redis_server), node(start_gchat, redis_server)
    bob, _ = in_ops(b, "bob")
    alice, token = in_ops(a, "alice", session=True)
    bob.say("one")
    last = tagged(alice, "bob: one")
    a.signal(signal.SIGTERM)  # a's turn
    alice.expect("server stopping; resume elsewhere", skip=True)
    a.wait()
    said(bob, 4, "while-a-restarts")
    a2 = node(start_gchat, redis_server)
    back = a2.client()
    resume(back, token, last)
    back.expect("resumed alice #ops 4")
    ids = missed(back, 4, "while-a-restarts")
    # b's turn: bob is no session client; he comes back on a2 by name.
    b.signal(signal.SIGTERM)
    b.wait()
    bob = a2.named("bob")
    bob.say("/join #ops")
    bob.expect("You are now in #ops", skip=True)
    bob.say("after")
    back.expect(r"@\S+ bob has arrived", skip=True)
    tagged(back, "bob: after")
    assert ids  # each was taken from the replay, in order


@ONE_REDIS
def test_a_private_line_to_a_session_whose_node_is_gone_is_refused_aloud(start_gchat, redis_server):
    a, b = node(start_gchat, redis_server), node(start_gchat, redis_server)
    bob = b.named("bob")
    alice = a.named("alice")
    start_session(alice)
    alice.say("here")  # after her session's operation, in the lobby's order
    bob.expect("alice: here", skip=True)
    a.proc.kill()
    b.wait_for_log("node .* lost", timeout=10)
    bob.say("/msg alice are you there?")
    # Not "has left": she is away.  The line cannot wait for her on a dead
    # node, and bob is told so.
    bob.expect(r"error: alice is away .*cannot be sent private lines.*")


@ONE_REDIS
def test_a_resume_from_no_id_on_another_node_replays_since_the_join(start_gchat, redis_server):
    a, b = node(start_gchat, redis_server), node(start_gchat, redis_server)
    bob, _ = in_ops(b, "bob")
    alice, token = in_ops(a, "alice", session=True)
    said(bob, 2, "seen")
    missed(alice, 2, "seen")
    reset(alice)
    back = b.client()
    resume(back, token, "-")
    back.expect("resumed alice #ops 2")
    missed(back, 2, "seen")


@ONE_REDIS
def test_a_token_whose_session_ended_takes_nothing_on_any_node(start_gchat, redis_server):
    a, b = node(start_gchat, redis_server), node(start_gchat, redis_server)
    alice = a.named("alice")
    token = start_session(alice)
    alice.say("/quit")
    alice.closed_after(5)
    carol = b.client()
    carol.expect(r".*name\?")

    def named_alice():
        carol.say("alice")
        if carol.line() == "You are alice":
            return True
        carol.expect(r".*name\?")  # not free yet: its leave is on its way
        return False

    until(named_alice, what="alice free again")
    late = b.client()
    resume(late, token, "-")
    late.expect("error: cannot resume: unknown or expired session")
    carol.say("/who")
    assert carol.expect(r"Here now.*", skip=True) == "Here now (1): alice"
    carol.say("still mine")
    carol.expect("alice: still mine")


def test_a_session_alone_in_its_room_resumes_after_its_node_is_lost(start_gchat, redis_server):
    # Nobody else hosted #attic: when its node was lost, the room's members
    # in Redis lost it too; the session's record still brings it back.
    a, b = node(start_gchat, redis_server), node(start_gchat, redis_server)
    bob = b.named("bob")
    alice = a.named("alice")
    token = start_session(alice)
    alice.say("/join attic")
    alice.expect("You are now in #attic", skip=True)
    alice.expect("Nobody else is here.")
    alice.say("/me hums")
    last = tagged(alice, "* alice hums")
    a.proc.kill()
    b.wait_for_log("node .* lost", timeout=10)
    back = b.client()
    resume(back, token, last)
    # What the room said since: its node's loss, whose departures no node
    # that was in the room can tell now; a gap, said as such.
    back.expect("resumed alice #attic gap")
    back.expect("Nobody else is here.")
    bob.say("/join attic")
    bob.expect(r"Also here \(1\): alice", skip=True)
    back.expect(r"@\S+ bob has arrived", skip=True)  # after the history block
    # And once more, to a node started since, after this one stops.
    c = node(start_gchat, redis_server)
    b.signal(signal.SIGTERM)
    back.expect("server stopping; resume elsewhere", skip=True)
    again = c.client()
    resume(again, token, "-")
    again.expect(r"resumed alice #attic \d+")


@ONE_REDIS
def test_ids_on_another_node_are_checked_against_the_session_s_rooms(start_gchat, redis_server):
    a, b = node(start_gchat, redis_server), node(start_gchat, redis_server)
    bob, _ = in_ops(b, "bob")
    alice = a.named("alice")
    token = start_session(alice)
    alice.say("hi from the lobby")
    lobby_id = tagged(alice, "alice: hi from the lobby")
    alice.say("/join ops")
    alice.expect("You are now in #ops", skip=True)
    alice.expect(r"Also here \(1\): bob")
    bob.expect("alice has arrived", skip=True)
    said(bob, 2, "in ops")
    missed(alice, 2, "in ops")
    reset(alice)
    # An id of no room of the session's: refused, nothing taken over.
    stranger = b.client()
    resume(stranger, token, "deadbeef:12")
    stranger.expect("error: cannot resume: 'deadbeef:12' is not an id this session received")
    stranger.expect(r".*name\?")
    # An id of the room before its /join: from the join.
    back = b.client()
    resume(back, token, lobby_id)
    back.expect("resumed alice #ops 2")
    missed(back, 2, "in ops")
