"""Line ids in the Fanout (gchat/fanout.py, issue 18), without a room or a
chat: plain members get the plain batch, tagged ones the same lines with
their ids, a member tagged mid-batch gets the rest tagged, and a tagged
member that moves to another room mid-batch carries its share tagged."""

from gchat.fanout import Fanout


def flush(out, members):
    got = {}
    out.flush(members, lambda conn, data: got.__setitem__(conn, data))
    return got


def test_plain_and_tagged_members_get_the_same_lines_rendered_once_each():
    out = Fanout()
    out.epoch = "ep"
    out.track(keep=3)
    out.tag("t", member=True)
    for text in ("a", "b", "c", "d"):
        out.broadcast(text)
    got = flush(out, ["p", "t"])
    assert got["p"] == b"a\nb\nc\nd\n"
    assert got["t"] == b"@ep:1 a\n@ep:2 b\n@ep:3 c\n@ep:4 d\n"
    assert list(out.log) == [(2, b"@ep:2 b\n"), (3, b"@ep:3 c\n"), (4, b"@ep:4 d\n")]
    assert out.seq == 4


def test_an_untracked_fanout_counts_lines_and_renders_nothing_more():
    out = Fanout()
    out.broadcast("a")
    out.broadcast("b")
    assert out.seq == 2 and out.log is None
    assert flush(out, ["p"]) == {"p": b"a\nb\n"}


def test_tagging_mid_batch_leaves_the_share_so_far_plain():
    out = Fanout()
    out.epoch = "ep"
    out.broadcast("before")
    out.track(keep=10)  # the first session client of the room, mid-batch
    out.send("t", "session TOKEN", member=True)
    out.tag("t", member=True)
    out.broadcast("after")
    got = flush(out, ["p", "t"])
    assert got["p"] == b"before\nafter\n"
    assert got["t"] == b"before\nsession TOKEN\n@ep:2 after\n"


def test_a_tagged_member_moving_mid_batch_carries_its_share_tagged():
    out = Fanout()
    out.epoch = "ep"
    out.track(keep=10)
    out.tag("t", member=True)
    out.broadcast("one")
    out.send("t", "private", member=True)
    out.broadcast("two")
    carried = out.detach("t", member=True)
    out.untag("t")
    out.broadcast("three")
    assert carried == b"@ep:1 one\nprivate\n@ep:2 two\n"
    assert flush(out, ["p"]) == {"p": b"one\ntwo\nthree\n"}


def test_a_newcomer_tagged_before_it_joins_gets_only_what_follows_tagged():
    out = Fanout()
    out.epoch = "ep"
    out.track(keep=10)
    out.broadcast("old")
    out.tag("n", member=False)
    out.send_bytes("n", b"resumed n #room 0\n", member=False)
    out.joined("n")
    out.broadcast("new")
    assert flush(out, ["p", "n"]) == {"p": b"old\nnew\n", "n": b"resumed n #room 0\n@ep:2 new\n"}
