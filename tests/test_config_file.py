"""--config FILE, --print-config and --log-format, on the gchat console
script as a process: a file's options take effect in a running server, the
command line overrides them, a bad file is an error naming its key and
line, --print-config's output reads back to the same configuration, and
--log-format json writes one parseable record per line."""

import json
import re
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from chat_client import gchat_executable

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def gchat(*args, cwd=None):
    """gchat run to completion (--print-config, or an error): its result."""
    return subprocess.run(
        [gchat_executable(), *args], capture_output=True, text=True, timeout=30, cwd=cwd
    )


def write(tmp_path, text, name="gchat.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def printed(*args):
    result = gchat(*args, "--print-config")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_help_documents_the_new_options():
    out = gchat("--help").stdout
    for option in ("--config", "--print-config", "--log-format"):
        assert option in out
    assert "json" in out


def test_print_config_shows_the_file_and_the_defaults(tmp_path):
    path = write(
        tmp_path,
        "# a deployment\n"
        "idle-timeout = 120\n"
        'http = "127.0.0.1:8080"\n'
        'allow-origin = ["https://a.example", "https://b.example"]\n'
        "compat = true\n"
        'sendq = "2M"\n',
    )
    result = gchat("--config", path, "--print-config")
    assert result.returncode == 0, result.stderr
    # Printing is all it does: no server, so no log.
    assert "listening" not in result.stderr
    values = tomllib.loads(result.stdout)
    assert values["idle-timeout"] == 120.0
    assert values["http"] == "127.0.0.1:8080"
    assert values["allow-origin"] == ["https://a.example", "https://b.example"]
    assert values["compat"] is True
    assert values["sendq"] == 2 * 1024 * 1024  # through --sendq's own parsing
    # Every other option too, with its default ...
    assert values["history"] == 20 and values["port"] == 8000
    assert values["log-format"] == "text"
    # ... and the unset ones as comments, since TOML has no null.
    assert re.search(r"^# max-clients = ", result.stdout, re.MULTILINE)
    assert "max-clients" not in values
    assert "config" not in values and "print-config" not in values


def test_file_options_take_effect_in_the_server(tmp_path, start_gchat):
    path = write(tmp_path, "max-line = 10\nidle-timeout = 1\n")
    server = start_gchat("--config", path)
    alice = server.named("alice")
    alice.say("x" * 11)
    alice.expect("error: line longer than 10 bytes discarded")
    alice.say("x" * 10)
    alice.expect("alice: x{10}")
    # Then silence: the file's idle timeout, not the default 300 s.
    alice.expect(r"error: idle for 1 s; disconnecting", timeout=10)


def test_command_line_overrides_the_file(tmp_path, start_gchat):
    path = write(tmp_path, 'max-line = 10\nhistory = 5\nallow-origin = ["https://a.example"]\n')
    values = tomllib.loads(
        printed("--config", path, "--max-line", "20", "--allow-origin", "https://b.example")
    )
    assert values["max-line"] == 20
    assert values["history"] == 5  # what the command line does not give stays the file's
    # A repeatable option given on the command line replaces the file's list.
    assert values["allow-origin"] == ["https://b.example"]

    server = start_gchat("--config", path, "--max-line", "20")
    alice = server.named("alice")
    alice.say("y" * 15)
    alice.expect("alice: y{15}")


def refused(tmp_path, text):
    result = gchat("--config", write(tmp_path, text))
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


def test_unknown_key_is_an_error_naming_key_and_line(tmp_path):
    err = refused(tmp_path, "# tuned for the big room\nhistory = 5\n\nidle-timout = 3\n")
    assert "gchat.toml, line 4: unknown option 'idle-timout'" in err
    assert "did you mean idle-timeout?" in err


@pytest.mark.parametrize(
    "text, line, key",
    [
        ('history = 5\nmax-line = "lots"\n', 2, "max-line"),
        ('\ncompat = "yes"\n', 2, "compat"),
        ("history = true\n", 1, "history"),
        ('slow-policy = "sometimes"\n', 1, "slow-policy"),
        ('allow-origin = "https://a.example"\n', 1, "allow-origin"),
        ("port = 1.5\n", 1, "port"),
        ('http = "localhost:http"\n', 1, "http"),
        # Passes the option's type, fails Config's own check: still located.
        ('host = "h"\nhistory = -1\n', 2, "history"),
    ],
)
def test_wrong_value_is_an_error_naming_key_and_line(tmp_path, text, line, key):
    err = refused(tmp_path, text)
    assert re.search(rf"gchat\.toml, line {line}: {re.escape(key)} = ", err), err


def test_the_same_checks_as_the_command_line(tmp_path):
    # The file's value goes through --max-line's own type: the same words.
    file_err = refused(tmp_path, 'max-line = "lots"\n')
    argv_err = gchat("--max-line", "lots").stderr
    assert "not a size in bytes: 'lots'" in file_err
    assert "not a size in bytes: 'lots'" in argv_err


def test_toml_syntax_error_says_where(tmp_path):
    err = refused(tmp_path, "history = 5\n\nidle-timeout = 12 0\n")
    assert "gchat.toml: invalid TOML" in err
    assert "line 3, column" in err


def test_missing_file_is_a_clear_error(tmp_path):
    result = gchat("--config", str(tmp_path / "nowhere.toml"))
    assert result.returncode == 2
    assert "cannot read config file" in result.stderr and "nowhere.toml" in result.stderr


def test_print_config_round_trip_of_the_defaults(tmp_path):
    first = printed()
    second = printed("--config", write(tmp_path, first))
    assert second == first


def test_print_config_round_trip_of_every_kind_of_value(tmp_path):
    # One of each kind: flags, repeatable, (host, port) pairs with IPv6,
    # networks, sizes, floats, choices, and text that needs escaping.
    path = write(
        tmp_path,
        "\n".join(
            [
                "compat = true",
                "proxy-protocol = true",
                'proxy-from = "10.0.0.0/8, fd00::/8"',
                'http = "[::1]:8080"',
                'admin = "9100"',
                'allow-origin = ["https://a.example", "https://b.example"]',
                'sendq = "64K"',
                "arrival-merge-window = 0.1",
                "flood-rate = 2.5",
                'slow-policy = "drop"',
                'log-level = "DEBUG"',
                'log-format = "json"',
                'tls-cert = "C:\\\\certs\\\\\\"odd\\" \u00e9.pem"',
                'tls-key = "key.pem"',
                "",
            ]
        ),
    )
    first = printed("--config", path, "--history", "7")
    values = tomllib.loads(first)
    assert values["history"] == 7
    assert values["proxy-from"] == "10.0.0.0/8, fd00::/8"
    assert values["http"] == "[::1]:8080" and values["admin"] == "9100"
    assert values["sendq"] == 65536 and values["arrival-merge-window"] == 0.1
    assert values["tls-cert"] == 'C:\\certs\\"odd" \u00e9.pem'
    again = write(tmp_path, first, name="printed.toml")
    second = printed("--config", again)
    assert second == first


def test_log_format_json(start_gchat):
    server = start_gchat("--log-format", "json")
    alice = server.named("alice")
    address = alice.address
    alice.say("/quit lunch")
    assert alice.closed_after()[-1] == "Goodbye."
    server.wait_for_log(r'"reason": "quit"')
    records = [json.loads(line) for line in server.stderr_lines]  # every line is JSON
    now = datetime.now(timezone.utc)
    for record in records:
        assert {"time", "level", "logger", "event"} <= set(record)
        stamp = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
        assert stamp.utcoffset() == timedelta(0)
        assert abs(now - stamp) < timedelta(minutes=5)
    listening = next(r for r in records if "listening on" in r["event"])
    assert listening["addr"] == f"127.0.0.1:{server.port}"
    named = next(r for r in records if r["event"] == f"{address} is alice")
    assert named["name"] == "alice" and named["addr"] == address and named["room"] == "#lobby"
    departure = next(r for r in records if r.get("reason") == "quit")
    assert departure["level"] == "INFO" and departure["logger"] == "gchat"
    assert departure["name"] == "alice"
    assert departure["addr"] == address
    assert departure["event"] == f"alice left ({address}, quit)"


def test_text_format_is_unchanged(start_gchat):
    server = start_gchat()
    alice = server.named("alice")
    address = alice.address
    alice.say("/quit")
    alice.closed_after()
    line = server.wait_for_log(r"alice left")
    assert re.fullmatch(rf"\S+ \S+ INFO gchat: alice left \({re.escape(address)}, quit\)\n", line)


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_listening_line_brackets_ipv6(start_gchat):
    server = start_gchat("--host", "::1")
    assert re.search(rf"listening on \[::1\]:{server.port}\b", server.stderr_text())
    # The port in the line is the real one: a client gets the greeting there.
    with socket.create_connection(("::1", server.port), timeout=10) as sock:
        assert sock.makefile("rb").readline().startswith(b"Welcome to gchat.")
