"""Operators' rules (gchat/operators.py) and the server API's requests
(gchat/api_rules.py), pure."""

import json

import pytest

from gchat.api_rules import Bad, Call, parse
from gchat.operators import (
    Restrictions,
    check_hash_line,
    hash_password,
    parse_duration,
    password_matches,
    render_until,
)


def test_a_password_line_matches_its_password_alone():
    line = hash_password("s3cret", b"0123456789abcdef")
    check_hash_line(line)
    assert password_matches("s3cret", line)
    assert not password_matches("s3cret ", line) and not password_matches("", line)
    assert hash_password("s3cret", b"fedcba9876543210") != line  # salted
    for bad in ("", "s3cret", "scrypt$1$8$1$AA$AA", "bcrypt$16384$8$1$AA$AA", "scrypt$x$8$1$A$A"):
        with pytest.raises(ValueError):
            check_hash_line(bad)


def test_durations_and_when_they_end():
    assert [parse_duration(t) for t in ("30s", "10m", "2h", "1d")] == [30, 600, 7200, 86400]
    for bad in ("", "0s", "10", "1w", "-5m", "1.5h", " 1h", "1000000s"):
        assert parse_duration(bad) is None, bad
    assert render_until(None) == "further notice"
    assert render_until(0) == "1970-01-01T00:00:00Z"


def test_restrictions_end_by_themselves_or_when_lifted():
    table = Restrictions()
    table.add("bob", 100.0)
    table.add("eve", None)
    assert table.active("bob", 99.0) and table.active("eve", 1e12)
    assert table.current(50.0) == {"bob": 100.0, "eve": None}
    assert not table.active("bob", 100.0)  # ended: forgotten
    assert table.current(101.0) == {"eve": None}
    assert table.lift("eve") and not table.lift("eve")


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_api_requests_are_checked_before_anything_is_looked_up():
    ok = parse("POST", "/api/publish", body(room="#ops", text="hi", **{"as": "bot"}), 32, 4096)
    assert ok == Call("publish", {"room": "ops", "text": "hi", "as": "bot"})
    assert parse("POST", "/api/disconnect", body(name="mallory"), 32, 4096) == Call(
        "disconnect", {"name": "mallory", "reason": ""}
    )
    assert parse("GET", "/api/rooms", b"", 32, 4096) == Call("rooms", {})
    assert parse("GET", "/api/rooms/team%2Da", b"", 32, 4096) == Call("room", {"room": "team-a"})
    cases = [
        ("POST", "/api/publish", b"[1]", 400),
        ("POST", "/api/publish", b"\xff\xfe", 400),
        ("POST", "/api/publish", body(room="ops", text="hi"), 400),
        ("POST", "/api/publish", body(room="ops", text="  ", **{"as": "bot"}), 400),
        ("POST", "/api/publish", body(room="ops", text="x" * 5000, **{"as": "bot"}), 400),
        ("POST", "/api/publish", body(room=["ops"], text="hi", **{"as": "bot"}), 400),
        ("POST", "/api/disconnect", body(name="x", reason="a\nb"), 400),
        ("GET", "/api/rooms/" + "r" * 40, b"", 400),
        ("DELETE", "/api/rooms", b"", 405),
        ("GET", "/api/disconnect", b"", 405),
        ("GET", "/api/", b"", 404),
    ]
    for method, path, raw, status in cases:
        got = parse(method, path, raw, 32, 4096)
        assert isinstance(got, Bad) and got.status == status and got.error, (path, raw, got)
