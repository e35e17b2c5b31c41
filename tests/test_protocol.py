"""Pure protocol pieces: command parsing, name rules, text safety, rendering."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gchat import protocol as p


@pytest.mark.parametrize(
    "line, command",
    [
        ("hello", p.Chat("hello")),
        ("", p.Chat("")),
        ("//who", p.Chat("/who")),
        ("// spaced", p.Chat("/ spaced")),
        ("/who", p.Who()),
        ("/WHO", p.Who()),
        ("/help", p.Help()),
        ("/quit", p.Quit("")),
        ("/quit  see you  ", p.Quit("see you")),
        ("/me waves hello", p.Me("waves hello")),
        ("/nick bob", p.Nick("bob")),
        ("/nick  bob ", p.Nick("bob")),
        ("/msg bob hi there", p.Msg("bob", "hi there")),
    ],
)
def test_parse_commands(line, command):
    assert p.parse(line) == command


@pytest.mark.parametrize(
    "line, error",
    [
        ("/me", "usage: /me ACTION"),
        ("/nick", "usage: /nick NEW"),
        ("/nick two words", "usage: /nick NEW"),
        ("/msg", "usage: /msg NAME TEXT"),
        ("/msg bob", "usage: /msg NAME TEXT"),
        ("/msg bob   ", "usage: /msg NAME TEXT"),
        ("/bogus", "unknown command /bogus (try /help)"),
        ("/", "unknown command / (try /help)"),
    ],
)
def test_parse_errors(line, error):
    assert p.parse(line) == p.Invalid(error)


def test_unknown_command_name_is_shortened_in_the_error():
    error = p.parse("/" + "z" * 500).error
    assert len(error) < 80


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_parse_never_raises(line):
    assert p.parse(line) is not None


@pytest.mark.parametrize(
    "name", ["a", "Bob", "x" * 24, "名前", "Ünïcödé", "a_b-c.d", "R2D2", "नमस्ते"]
)
def test_valid_names(name):
    assert p.validate_name(name) is None


@pytest.mark.parametrize(
    "name, why",
    [
        ("", "at least one"),
        ("x" * 25, "at most 24"),
        ("a b", "not allowed"),
        ("a;b", "not allowed"),
        ("tab\t", "U+0009"),
        ("\u0301a", "not allowed"),  # a name cannot start with a combining mark
    ],
)
def test_invalid_names_say_why(name, why):
    assert why in p.validate_name(name)


def test_name_key_folds_case_and_compatibility_forms():
    assert p.name_key("Alice") == p.name_key("ALICE") == p.name_key("ａｌｉｃｅ")
    assert p.name_key("Straße") == p.name_key("STRASSE")
    assert p.name_key("alice") != p.name_key("alice2")


def test_decode_replaces_invalid_utf8_and_controls():
    assert p.decode(b"caf\xc3\xa9") == "café"
    assert p.decode(b"bad \xff byte") == "bad \ufffd byte"
    assert p.decode(b"\x1b[31mred\x07") == "\ufffd[31mred\ufffd"
    assert p.decode("c1 \u009b x".encode()) == "c1 \ufffd x"
    assert p.decode(b"tab\tkept") == "tab\tkept"
    assert p.decode(b"nul\x00del\x7f") == "nul\ufffddel\ufffd"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoded_text_never_carries_a_control_but_tab(data):
    text = p.decode(data)
    assert not any((ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) < 0xA0 for c in text)


def test_roster_lines():
    assert p.render_roster([], 0, newcomer=True) == "Nobody else is here."
    assert p.render_roster(["a", "b"], 2, newcomer=True) == "Also here (2): a, b"
    assert p.render_roster(["a"], 1, newcomer=False) == "Here now (1): a"
    assert (
        p.render_roster(["a", "b"], 5, newcomer=True)
        == "Also here (5): a, b, and 3 more (/who lists all)"
    )


def test_addresses_are_written_as_go_writes_them():
    assert p.format_address("127.0.0.1", 8000) == "127.0.0.1:8000"
    assert p.format_address("::1", 8000) == "[::1]:8000"
