"""Operators end to end (issue 19): /oper against a file made by
`gchat --hash-password`, a token's role, and /kick, /ban, /mute, their
undoing and /bans, over real sockets with the gchat console script."""

import re
import subprocess

from chat_client import gchat_executable
from test_e2e_auth import PROMPT, sign_in, token
from test_e2e_auth import secret_file as secret_file  # noqa: F401  (the fixture)
from test_e2e_auth import signed as signed  # noqa: F401  (the fixture)

PASSWORD = "correct horse battery staple"
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def hashed(tmp_path) -> str:
    result = subprocess.run(
        [gchat_executable(), "--hash-password"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    line = result.stdout.strip()
    assert line.startswith("scrypt$") and PASSWORD not in line
    path = tmp_path / "oper.pw"
    path.write_text(line + "\n")
    return str(path)


def test_an_operator_kicks_bans_and_mutes(start_gchat, tmp_path):
    server = start_gchat("--oper-password-file", hashed(tmp_path))
    op, bob, carol, dave = (server.named(n) for n in ("op", "bob", "carol", "dave"))
    bob.say("/kick carol")
    bob.expect("error: /kick is for operators", skip=True)
    op.say("/oper wrong")
    op.expect("error: wrong operator password", skip=True)
    op.say(f"/oper {PASSWORD}")
    op.expect("you are an operator now", skip=True)
    # /kick: the user is told and closed; its room is told why.
    op.say("/kick bob spamming")
    assert bob.closed_after(5)[-1] == "error: kicked by op (spamming)"
    carol.expect(r"bob has left \(kicked by op: spamming\)", skip=True)
    # /ban for a minute: kicked, and the name can be neither taken nor kept.
    op.say("/ban carol 1m")
    op.expect(f"carol is banned until {ISO}", skip=True)
    assert re.fullmatch("error: kicked by op \\(banned\\)", carol.closed_after(5)[-1])
    again = server.client()
    again.expect(r".*name\?")
    again.say("carol")
    again.expect(f"error: banned until {ISO}")
    op.say("/bans")
    op.expect(f"bans: carol \\(until {ISO}\\)", skip=True)
    op.say("/ban eve")  # not connected: banned all the same, until lifted
    op.expect("eve is banned until further notice", skip=True)
    op.say("/unban carol")
    op.expect("carol is no longer banned", skip=True)
    again.expect(r".*name\?")
    again.say("carol")
    again.expect("You are carol")
    # /mute: lines, /me and /msg to others are refused, saying until when.
    op.say("/mute dave 30s")
    op.expect(f"dave is muted until {ISO}", skip=True)
    dave.expect(f"error: you are muted until {ISO}", skip=True)
    for line in ("hello?", "/me waves", "/msg op let me talk"):
        dave.say(line)
        dave.expect(f"error: you are muted until {ISO}")
    op.say("/unmute dave")
    op.expect("dave is no longer muted", skip=True)
    dave.say("thanks")
    op.expect("dave: thanks", skip=True)


def test_an_operator_cannot_act_on_another_and_bad_uses_say_so(start_gchat, tmp_path):
    server = start_gchat("--oper-password-file", hashed(tmp_path))
    one, two = server.named("one"), server.named("two")
    for client in (one, two):
        client.say(f"/oper {PASSWORD}")
        client.expect("you are an operator now", skip=True)
    one.say("/kick two")
    one.expect("error: two is an operator; operators cannot be kicked, banned or muted", skip=True)
    one.say("/ban two 5 minutes")
    one.expect(r"error: usage: /ban NAME \[DURATION: 30s, 10m, 2h or 1d\]", skip=True)
    one.say("/mute nobody 7y")
    one.expect(r"error: usage: /mute NAME \[DURATION: 30s, 10m, 2h or 1d\], not '7y'", skip=True)
    one.say("/kick nobody")
    one.expect("error: no such user: nobody", skip=True)


def test_a_token_s_role_makes_an_operator_and_a_banned_sub_cannot_sign_in(signed):
    server = signed()
    op = sign_in(server, "boss", role="op")
    sign_in(server, "mallory")
    op.say("/ban mallory 1h")
    op.expect(f"mallory is banned until {ISO}", skip=True)
    late = server.client()
    late.expect(re.escape(PROMPT))
    late.say(f"/auth {token('mallory')}")
    assert re.fullmatch(f"error: banned until {ISO}", late.closed_after(5)[-1])
    op.say(f"/oper {PASSWORD}")  # with tokens, the token's role says who is one
    op.expect(r"error: with sign-in tokens, a token's role \(op\) makes an operator", skip=True)


def test_operators_act_across_a_cluster_and_bans_live_in_redis(start_gchat, redis_server, tmp_path):
    from test_e2e_cluster import FAST, until

    pw = hashed(tmp_path)
    a = start_gchat("--redis", redis_server.url, *FAST, "--oper-password-file", pw)
    b = start_gchat("--redis", redis_server.url, *FAST, "--oper-password-file", pw)
    op = a.named("op")
    op.say(f"/oper {PASSWORD}")
    op.expect("you are an operator now", skip=True)
    bob, carol = b.named("bob"), b.named("carol")
    op.say("/kick bob off you go")  # bob is on node b
    assert bob.closed_after(5)[-1] == "error: kicked by op (off you go)"
    carol.expect(r"bob has left \(kicked by op: off you go\)", skip=True)
    op.say("/mute carol 10m")
    op.expect(f"carol is muted until {ISO}", skip=True)

    def carol_muted():
        carol.say("anyone?")
        return re.fullmatch(f"error: you are muted until {ISO}", carol.line())

    until(carol_muted, what="carol muted on node b")  # within a heartbeat
    op.say("/ban bob 1h")
    op.expect(f"bob is banned until {ISO}", skip=True)

    def bob_refused():
        again = b.client()
        again.expect(r".*name\?")
        again.say("bob")
        line = again.line()
        again.close()
        return re.fullmatch(f"error: banned until {ISO}", line)

    until(bob_refused, what="the ban on node b")
    c = start_gchat("--redis", redis_server.url, *FAST)  # a node started since
    newcomer = c.client()

    def banned_on_c():
        newcomer.say("bob")
        line = newcomer.line()
        if line == "You are bob":
            raise AssertionError("a banned name was taken on a new node")
        newcomer.expect(r".*name\?")
        return re.fullmatch(f"error: banned until {ISO}", line)

    newcomer.expect(r".*name\?")
    until(banned_on_c, what="the ban read from Redis on node c")
    op.say("/bans")
    op.expect(f"bans: bob \\(until {ISO}\\)", skip=True)
