"""Name mode (the default): exercises 8.12 (roster) and 8.14 (names), and
every command, over real sockets against the gchat console script."""

import re

from gchat.protocol import HELP_LINES


def test_name_prompt_then_seed_lines_with_names(gchat):
    """The first line asks for a name; then "You are NAME", the roster, and
    the seed's lines with the name in place of the address."""
    a = gchat.client()
    assert "name" in a.line().lower()
    a.say("alice")
    a.expect("You are alice")
    a.expect("Nobody else is here.")
    b = gchat.client()
    b.line()
    b.send("bob\r\n")
    b.expect("You are bob")
    b.expect(r"Also here \(1\): alice")
    a.expect("bob has arrived")
    b.say("hello")
    a.expect("bob: hello")
    b.expect("bob: hello")
    b.close()
    a.expect("bob has left")
    assert a.quiet()


def test_roster_names_everyone_else(gchat):
    a = gchat.named("ann")
    b = gchat.named("ben")
    a.expect("ben has arrived")
    c = gchat.client()
    c.line()
    c.say("cid")
    c.expect("You are cid")
    roster = c.expect(r"Also here \(2\): .*")
    assert sorted(roster.split(": ", 1)[1].split(", ")) == ["ann", "ben"]
    b.expect("cid has arrived")


def test_invalid_names_get_a_reason_and_the_question_again(gchat):
    c = gchat.client()
    c.line()
    for bad in ["", "has space", "x" * 25, "semi;colon", "tab\there"]:
        c.say(bad)
        assert c.line().startswith("error: "), bad
        c.expect(r".*name\?")
    c.say("Ünïcödé_名前-1.2")  # letters of any script, digits, _ - .
    c.expect("You are Ünïcödé_名前-1.2")


def test_names_are_unique_regardless_of_case(gchat):
    alice = gchat.named("Alice")
    c = gchat.client()
    c.line()
    c.say("aLICE")
    c.expect("error: the name aLICE is taken")
    c.expect(r".*name\?")
    c.say("ａｌｉｃｅ")  # full-width look-alike: the same name after NFKC
    c.expect("error: .*taken")
    c.expect(r".*name\?")
    c.say("alice2")
    c.expect("You are alice2")
    alice.expect("alice2 has arrived")


def test_unnamed_client_hears_no_chat_and_is_not_announced(gchat):
    a = gchat.named("amy")
    lurker = gchat.client()
    lurker.line()
    a.say("secret")
    a.expect("amy: secret")
    lurker.close()
    assert a.quiet()  # no "has left" for someone who never arrived


def test_who_lists_everyone(gchat):
    a = gchat.named("a1")
    b = gchat.named("b1")
    a.expect("b1 has arrived")
    a.say("/who")
    line = a.expect(r"Here now \(2\): .*")
    assert sorted(line.split(": ", 1)[1].split(", ")) == ["a1", "b1"]
    assert b.quiet()  # /who answers the asker alone


def test_nick_is_announced_and_frees_the_old_name(gchat):
    a = gchat.named("old")
    b = gchat.named("other")
    a.expect("other has arrived")
    a.say("/nick new")
    a.expect("old is now known as new")
    b.expect("old is now known as new")
    a.say("hi")
    b.expect("new: hi")
    a.expect("new: hi")
    a.say("/nick OTHER")
    a.expect("error: the name OTHER is taken")
    a.say("/nick bad name")
    a.expect("error: usage: /nick NEW")
    c = gchat.named("old")  # the old name is free again
    c.say("/who")
    c.expect(r"Here now \(3\): .*", skip=True)  # after the lobby's history


def test_me_action(gchat):
    a = gchat.named("dan")
    b = gchat.named("eve")
    a.expect("eve has arrived")
    a.say("/me waves")
    a.expect(r"\* dan waves")
    b.expect(r"\* dan waves")


def test_private_message_reaches_only_its_recipient(gchat):
    a = gchat.named("fay")
    b = gchat.named("gus")
    c = gchat.named("hal")
    a.expect("gus has arrived")
    a.expect("hal has arrived")
    b.expect("hal has arrived")
    a.say("/msg GUS psst, hi")  # names match regardless of case
    b.expect(r"fay \(private\): psst, hi")
    a.expect(r"fay \(private to gus\): psst, hi")
    a.say("/msg nobody hi")
    a.expect("error: no such user: nobody")
    a.say("/msg gus")
    a.expect("error: usage: /msg NAME TEXT")
    a.say("public")  # a marker: hal must see this and nothing before it
    c.expect("fay: public")


def test_quit_with_reason(gchat):
    a = gchat.named("ivy")
    b = gchat.named("jay")
    a.expect("jay has arrived")
    b.say("/quit gotta go")
    assert b.closed_after() == ["Goodbye."]
    a.expect(r"jay has left \(gotta go\)")
    c = gchat.named("kim")
    a.expect("kim has arrived")
    c.say("/QUIT")
    assert c.closed_after() == ["Goodbye."]
    a.expect("kim has left")


def test_help_lists_every_command(gchat):
    a = gchat.named("lee")
    a.say("/help")
    text = "\n".join(a.lines(len(HELP_LINES)))
    for command in ["/who", "/nick", "/me", "/msg", "/quit", "/help", "/join", "/rooms"]:
        assert command in text


def test_unknown_command_errors_to_the_sender_alone(gchat):
    a = gchat.named("max")
    b = gchat.named("ned")
    a.expect("ned has arrived")
    a.say("/frobnicate now")
    a.expect(r"error: unknown command /frobnicate \(try /help\)")
    a.say("after")
    b.expect("max: after")  # the error line never reached ned


def test_double_slash_is_chat_with_one_slash_removed(gchat):
    a = gchat.named("oz")
    a.say("//who is there")
    a.expect("oz: /who is there")


def test_log_reports_arrivals_and_departures(gchat):
    a = gchat.named("pat")
    gchat.wait_for_log(r"INFO .*connection from 127\.0\.0\.1:\d+")
    gchat.wait_for_log(r"INFO .*127\.0\.0\.1:\d+ is pat")
    a.say("/quit")
    a.closed_after()
    gchat.wait_for_log(r"INFO .*pat left")
    assert re.search(r"listening on 127\.0\.0\.1:\d+", gchat.stderr_text())
