"""Sessions in one process (gchat/sessions.py, chat.py; issue 18), driven
without sockets (chat_harness): /session and its ids, a dropped client
away and back with exactly what it missed, the window's end, takeovers,
private lines kept, gaps, bad input and throttling."""

import re

from chat_harness import Harness, named
from hypothesis import given, settings
from hypothesis import strategies as st

from gchat.events import Why
from gchat.sessions import format_id, parse_id

TOKEN = re.compile(r"session ([A-Za-z0-9_-]{22,})")
TAGGED = re.compile(r"@(\S+) (.*)")


def open_session(h, conn) -> str:
    h.take(conn)  # what came before
    h.say(conn, "/session")
    lines = h.take(conn)
    assert len(lines) == 1, lines
    match = TOKEN.fullmatch(lines[0])
    assert match, lines
    return match.group(1)


def split(line):
    """(id, text) of a tagged line, (None, line) of another."""
    match = TAGGED.fullmatch(line)
    return (match.group(1), match.group(2)) if match else (None, line)


def drop(h, conn):
    h.chat.depart(conn, Why.EOF)
    return h.flush()


def resume(h, token, last, who="back-addr"):
    conn = h.connect(who)
    h.take(conn)  # the name prompt
    h.say(conn, f"/resume {token} {last}")
    return conn, h.take(conn)


def test_session_tags_the_rooms_lines_and_nothing_else():
    h = Harness()
    alice, bob = named(h, "alice"), named(h, "bob")
    token = open_session(h, alice)
    assert open_session(h, alice) == token  # a second /session: the same token
    h.say(bob, "hello")
    h.say(alice, "/who")
    lines = h.take(alice)
    first_id, text = split(lines[0])
    assert text == "bob: hello" and " " not in first_id
    assert lines[1] == "Here now (2): alice, bob"  # a reply: no id
    h.say(alice, "/me waves")
    h.say(bob, "/nick bobby")
    ids, texts = zip(*map(split, h.take(alice)))
    assert texts == ("* alice waves", "bob is now known as bobby")
    assert len(set(ids + (first_id,))) == 3 and None not in ids
    assert h.take(bob) == ["bob: hello", "* alice waves", "bob is now known as bobby"]


def test_a_line_said_in_the_same_batch_as_session_has_its_id():
    h = Harness()
    alice, bob = named(h, "alice"), named(h, "bob")
    h.take(alice)
    h.say(bob, "before")
    h.say(alice, "/session")
    h.say(bob, "after")
    lines = h.take(alice)
    assert lines[0] == "bob: before"
    assert TOKEN.fullmatch(lines[1])
    assert split(lines[2])[0] is not None and split(lines[2])[1] == "bob: after"


def test_a_dropped_session_is_away_then_resumes_with_what_it_missed():
    h = Harness()
    alice, bob = named(h, "alice"), named(h, "bob")
    token = open_session(h, alice)
    h.say(bob, "one")
    last = split(h.take(alice)[0])[0]
    h.take(bob)
    drop(h, alice)
    h.say(bob, "two")
    h.say(bob, "/me waits")
    h.say(bob, "/who")
    assert h.take(bob) == ["bob: two", "* bob waits", "Here now (2): bob, alice"]
    taker = h.connect("taker-addr")
    h.say(taker, "alice")  # the name stays reserved
    assert "error: the name alice is taken" in h.take(taker)
    back, lines = resume(h, token, last)
    assert lines[0] == "resumed alice #lobby 2"
    assert [split(line)[1] for line in lines[1:]] == ["bob: two", "* bob waits"]
    h.say(bob, "three")
    assert [split(line)[1] for line in h.take(back)] == ["bob: three"]
    assert h.take(bob) == ["bob: three"]  # no departure, no arrival
    h.say(back, "I am back")
    assert h.take(bob) == ["alice: I am back"]


def test_resume_with_dash_replays_everything_since_session():
    h = Harness()
    alice, bob = named(h, "alice"), named(h, "bob")
    h.say(bob, "before the session")
    h.take(alice)
    token = open_session(h, alice)
    for i in range(3):
        h.say(bob, f"line {i}")
    h.flush()
    drop(h, alice)
    _, lines = resume(h, token, "-")
    assert lines[0] == "resumed alice #lobby 3"
    assert [split(line)[1] for line in lines[1:]] == ["bob: line 0", "bob: line 1", "bob: line 2"]


def test_the_window_ends_with_a_departure_and_the_token_is_gone():
    h = Harness(resume_window=30)
    alice, bob = named(h, "alice"), named(h, "bob")
    token = open_session(h, alice)
    drop(h, alice)
    h.now += 29
    assert h.take(bob) == []
    assert 0 < h.chat.due(h.now) <= 1
    h.now += 1
    assert h.take(bob) == ["alice has left (connection lost)"]
    conn, lines = resume(h, token, "-")
    assert lines == ["error: cannot resume: unknown or expired session", "What is your name?"]
    h.say(conn, "alice")  # the name is free again
    assert h.take(conn)[0] == "You are alice"


def test_without_session_a_client_leaves_at_once():
    h = Harness()
    alice, bob = named(h, "alice"), named(h, "bob")
    drop(h, alice)
    assert h.take(bob) == ["alice has left"]


def test_resume_while_the_old_connection_is_open_takes_it_over():
    h = Harness()
    alice, bob = named(h, "alice"), named(h, "bob")
    token = open_session(h, alice)
    h.say(bob, "hi")
    last = split(h.take(alice)[0])[0]
    h.take(bob)
    h.say(bob, "missed")
    back = h.connect("back-addr")
    h.take(back)
    h.say(back, f"/resume {token} {last}")
    departed = h.flush()
    assert (alice, Why.RESUMED) in departed
    old = h.received.pop(alice, b"").decode().splitlines()
    assert old[-1] == "error: resumed elsewhere"
    lines = h.received.pop(back, b"").decode().splitlines()
    assert lines[0] == "resumed alice #lobby 1" and split(lines[1])[1] == "bob: missed"
    assert h.take(bob) == ["bob: missed"]  # and nothing of alice
    h.say(bob, "/who")
    assert h.take(bob) == ["Here now (2): bob, alice"]


def test_private_lines_carry_ids_and_are_kept_while_away():
    h = Harness()
    alice, bob = named(h, "alice"), named(h, "bob")
    token = open_session(h, alice)
    h.say(bob, "/msg alice psst")
    line = h.take(alice)[0]
    private_id, text = split(line)
    assert text == "bob (private): psst" and parse_id(private_id).k == 1
    h.take(bob)
    drop(h, alice)
    h.say(bob, "room line")
    h.say(bob, "/msg alice while you were away")
    assert h.take(bob) == [
        "bob: room line",
        "bob (private to alice): while you were away",
    ]
    _, lines = resume(h, token, private_id)
    assert lines[0] == "resumed alice #lobby 2"
    assert [split(x)[1] for x in lines[1:]] == [
        "bob: room line",
        "bob (private): while you were away",
    ]


def test_private_lines_to_an_away_session_past_the_bound_are_refused_to_the_sender():
    h = Harness(resume_backlog=3)
    alice, bob = named(h, "alice"), named(h, "bob")
    open_session(h, alice)
    drop(h, alice)
    for i in range(3):
        h.say(bob, f"/msg alice {i}")
    h.take(bob)
    h.say(bob, "/msg alice one too many")
    assert h.take(bob) == [
        "error: alice is away and already has 3 private lines waiting; yours was not kept"
    ]


def test_more_missed_than_the_backlog_is_a_gap_with_roster_history_and_private_lines():
    h = Harness(resume_backlog=5, history=3)
    alice, bob = named(h, "alice"), named(h, "bob")
    token = open_session(h, alice)
    drop(h, alice)
    h.say(bob, "/msg alice kept")
    for i in range(6):
        h.say(bob, f"line {i}")
    h.flush()
    _, lines = resume(h, token, "-")
    assert lines[0] == "resumed alice #lobby gap"
    assert lines[1] == "Also here (1): bob"
    assert lines[2] == "--- last 3 lines of #lobby ---"
    assert [split(x)[1] for x in lines[3:6]] == ["bob: line 3", "bob: line 4", "bob: line 5"]
    assert all(split(x)[0] for x in lines[3:6])
    assert lines[6] == "--- end of history ---"
    assert split(lines[7])[1] == "bob (private): kept"


def test_an_id_from_the_room_before_the_join_replays_from_the_join():
    h = Harness()
    alice, bob = named(h, "alice"), named(h, "bob")
    token = open_session(h, alice)
    h.say(bob, "in the lobby")
    lobby_id = split(h.take(alice)[0])[0]
    h.say(bob, "said after alice's last id")
    h.say(alice, "/join den")
    h.flush()
    h.say(bob, "/join den")
    h.flush()
    h.say(bob, "in the den")
    h.flush()
    drop(h, alice)
    _, lines = resume(h, token, lobby_id)
    assert lines[0] == "resumed alice #den 2"
    assert [split(x)[1] for x in lines[1:]] == ["bob has arrived", "bob: in the den"]


def test_history_lines_carry_their_ids_for_a_session_client():
    h = Harness(history=5)
    alice, bob = named(h, "alice"), named(h, "bob")
    open_session(h, alice)
    h.say(bob, "/join den")
    h.say(bob, "kept line")
    h.take(alice)
    h.say(alice, "/join den")
    lines = h.take(alice)
    assert lines[0] == "You are now in #den"
    assert lines[2] == "--- last 1 line of #den ---"
    said_id, text = split(lines[3])
    assert text == "bob: kept line" and said_id
    h.say(bob, "next")
    next_id = split(h.take(alice)[0])[0]
    # Between them, the room's order holds alice's own arrival, which the
    # others heard and she did not.
    assert parse_id(next_id).seq == parse_id(said_id).seq + 2


def test_bad_resumes_get_errors_and_twenty_failures_are_throttled():
    h = Harness(resume_failures=20)
    alice = named(h, "alice")
    token = open_session(h, alice)
    cases = {
        "/resume": "error: usage: /resume TOKEN ID (ID: the last id you received, or -)",
        f"/resume {token}": "error: usage: /resume TOKEN ID (ID: the last id you received, or -)",
        f"/resume {token} gibberish": "error: cannot resume: 'gibberish' is not an id this "
        "session received",
        f"/resume {token} {format_id('nosuchroom', 1)}": "error: cannot resume: "
        "'nosuchroom:1' is not an id this session received",
        "/resume AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA -": "error: cannot resume: unknown or "
        "expired session",
    }
    failures = 0
    for line, error in cases.items():
        conn = h.connect("10.0.0.9:%d" % failures)
        h.take(conn)
        h.say(conn, line)
        assert h.take(conn) == [error, "What is your name?"], line
        failures += 1
    while failures < 20:
        conn = h.connect("10.0.0.9:%d" % failures)
        h.say(conn, "/resume x -")
        h.take(conn)
        failures += 1
    conn = h.connect("10.0.0.9:999")
    h.take(conn)
    h.say(conn, f"/resume {token} -")
    departed = h.flush()
    assert h.received.pop(conn).decode() == "error: too many failed resumes; try later\n"
    assert (conn, Why.THROTTLED) in departed
    other = h.connect("10.0.0.10:1")  # another address is not throttled
    h.take(other)
    h.say(other, f"/resume {token} -")
    assert h.take(other)[0].startswith("resumed alice")
    h.now += 60  # the minute ends
    late = h.connect("10.0.0.9:1000")
    h.take(late)
    h.say(late, "/resume x -")
    assert h.take(late)[0] == "error: cannot resume: unknown or expired session"


def test_resume_after_a_name_is_an_error_and_shutdown_says_resume_elsewhere():
    h = Harness()
    alice = named(h, "alice")
    open_session(h, alice)
    h.say(alice, "/resume abc -")
    assert h.take(alice) == [
        "error: /resume is the first line of a new connection, instead of a name"
    ]
    h.chat.shutdown()
    h.flush()
    assert h.received.pop(alice).decode().splitlines()[-1] == "server stopping; resume elsewhere"


@settings(max_examples=80, deadline=None)
@given(
    plan=st.lists(
        st.tuples(
            st.sampled_from(["say", "say", "msg", "drop", "join"]),
            st.integers(min_value=0, max_value=5),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_resumes_at_random_points_see_every_line_once_in_order(plan):
    """A session client that drops at random points, having read only part
    of what it was sent, and resumes from the last id it read, gets every
    line it had not read exactly once, in order; but for the lines of a
    room it had left before its last id (a resume from there starts at the
    join, as the issue says), whose private lines still come."""
    h = Harness(resume_backlog=1000, history=0)  # history's ids: tested above
    alice, bob = named(h, "alice"), named(h, "bob")
    token = open_session(h, alice)
    conn = alice
    stint = 0
    room = "lobby"
    pending: list = []  # (stint, private?, text) sent to alice, not read yet
    read: list = []  # (id, text) alice read
    model: list = []  # the texts alice must read
    for count, (step, number) in enumerate(plan):
        if step == "say":
            h.say(bob, f"line {count}")
            pending.append((stint, False, f"bob: line {count}"))
        elif step == "msg":
            h.say(bob, f"/msg alice private {count}")
            pending.append((stint, True, f"bob (private): private {count}"))
        elif step == "join":
            room = "den" if room == "lobby" else "lobby"
            h.say(conn, f"/join {room}")
            h.say(bob, f"/join {room}")
            stint += 1
            pending.append((stint, False, "bob has arrived"))
        else:
            tagged = [split(x) for x in h.take(conn) if split(x)[0]]
            assert [text for _, text in tagged] == [text for _, _, text in pending]
            got = min(number, len(tagged))  # the rest was in flight
            read.extend(tagged[:got])
            model.extend(text for _, _, text in pending[:got])
            last_stint = pending[got - 1][0] if got else None
            unread = pending[got:]
            if last_stint != stint:  # resumes from an older room, or from "-"
                unread = [item for item in unread if item[0] == stint or item[1]]
            unread.sort(key=lambda item: item[0] == stint)  # older rooms' private lines first
            model.extend(text for _, _, text in unread)
            pending = []
            h.chat.depart(conn, Why.EOF)
            h.flush()
            last = read[-1][0] if read else "-"
            conn, lines = resume(h, token, last, who=f"back-{count}")
            assert lines[0] == f"resumed alice #{room} {len(unread)}", lines
            read.extend(split(x) for x in lines[1:])
    tagged = [split(x) for x in h.take(conn) if split(x)[0]]
    read.extend(tagged)
    model.extend(text for _, _, text in pending)
    assert [text for _, text in read] == model
    ids = [i for i, _ in read]
    assert len(ids) == len(set(ids))


def test_away_sessions_expire_in_the_order_they_went_and_a_resumed_one_never():
    h = Harness(resume_window=30)
    watcher = named(h, "watcher")
    tokens = {}
    for name in ("ann", "ben", "cat"):
        conn = named(h, name)
        tokens[name] = open_session(h, conn)
        drop(h, conn)
        h.now += 10
    # ann went at 100, ben at 110, cat at 120; it is 130 now: ann's window
    # has ended, and the next flush ends her session.
    assert h.chat.due(h.now) == 0
    seen = h.take(watcher)
    assert seen[-1] == "ann has left (connection lost)"
    assert not [line for line in seen if "ben has left" in line or "cat has left" in line]
    resume(h, tokens["ben"], "-")
    assert h.chat.due(h.now) == 20  # cat's window ends at 150; ben is back
    h.now += 20
    assert h.take(watcher) == ["cat has left (connection lost)"]
    assert h.chat.due(h.now) is None
    assert len(h.chat.sessions) == 1  # ben's


def test_a_zero_window_lets_a_dropped_session_leave_at_once():
    h = Harness(resume_window=0)
    alice, bob = named(h, "alice"), named(h, "bob")
    token = open_session(h, alice)
    h.take(bob)
    drop(h, alice)
    assert h.take(bob) == ["alice has left"]
    _, lines = resume(h, token, "-")
    assert lines[0] == "error: cannot resume: unknown or expired session"


def test_a_resume_on_another_node_starts_where_the_record_says():
    from gchat.sessions import resume_from

    start = "ep2:100"  # its stint in the current room began there
    assert resume_from("-", start, ["-"]) == start
    assert resume_from("ep2:150", start, ["-"]) == "ep2:150"
    assert resume_from("ep2:150:3", start, ["-"]) == "ep2:150:3"
    assert resume_from("ep2:40", start, ["-"]) == start  # a history line: from the join
    assert resume_from("ep1:7", start, ["ep0", "ep1"]) == start  # the room before the /join
    for bad in ("ep9:7", "x", "ep2", "ep2:-1", "ep2:1:2:3"):
        try:
            resume_from(bad, start, ["ep0", "ep1"])
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was taken for an id of the session's")
