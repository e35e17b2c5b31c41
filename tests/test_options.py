"""Every option declared once: Config's fields carry their flag, help and
checks (config.option), and the parser, config_from_args, the checks in
Config.__post_init__ and docs/options.md are derived from them."""

import argparse
import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
from chat_client import gchat_executable

from gchat import cli, config
from gchat.config import (
    FLOOD_RATE,
    GROUP_KEYS,
    GROUPS,
    IDLE_TIMEOUT,
    Config,
    flag_options,
    help_text,
    options,
)
from gchat.options_doc import render_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs" / "options.md"


def actions(parser: argparse.ArgumentParser) -> dict:
    """dest -> action, for every option but -h and --version."""
    return {a.dest: a for a in parser._actions if a.dest not in ("help", "version")}


# The parser, from the fields ---------------------------------------------------


def test_every_field_with_a_flag_is_in_the_parser_with_its_default():
    parser_actions = actions(cli.build_parser())
    for name, opt in flag_options().items():
        action = parser_actions[name]  # the dest is the field's name
        assert tuple(action.option_strings) == opt.flags
        default = Config.__dataclass_fields__[name].default
        if opt.flag_unset:
            assert action.default is None
        elif opt.repeatable:
            assert action.default == list(default) and isinstance(action, argparse._AppendAction)
        else:
            assert action.default == default, name
        if opt.choices is not None:
            assert tuple(action.choices) == opt.choices


def test_every_option_of_the_parser_is_declared_once():
    declared = cli.all_options()
    assert set(actions(cli.build_parser())) == set(declared)
    # A CLI-only option is not a Config field too.
    assert not set(cli.CLI_OPTIONS) & {f.name for f in dataclasses.fields(Config)}
    spellings = [flag for opt in declared.values() for flag in opt.flags]
    assert len(spellings) == len(set(spellings))


def test_the_flags_that_do_not_follow_the_field_name():
    parser_actions = actions(cli.build_parser())
    assert parser_actions["shutdown_flush_timeout"].option_strings == ["--shutdown-timeout"]
    assert parser_actions["handshake_timeout"].option_strings == [
        "--tls-handshake-timeout",
        "--handshake-timeout",
    ]
    for spelling in ("--tls-handshake-timeout", "--handshake-timeout"):
        args = cli.build_parser().parse_args([spelling, "4"])
        assert cli.config_from_args(args).handshake_timeout == 4.0
    args = cli.build_parser().parse_args(["--shutdown-timeout", "7"])
    assert cli.config_from_args(args).shutdown_flush_timeout == 7.0


def test_every_option_is_in_exactly_one_group_of_the_help():
    parser = cli.build_parser()
    titles = [title for _, title, _ in GROUPS]
    groups = {g.title: g for g in parser._action_groups if g.title in titles}
    assert list(groups) == titles
    seen = [a.dest for g in groups.values() for a in g._group_actions]
    assert sorted(seen) == sorted(cli.all_options())
    for opt in cli.all_options().values():
        assert opt.group in GROUP_KEYS


def test_every_field_is_declared_with_option():
    for field in dataclasses.fields(Config):
        assert isinstance(field.metadata.get(config.OPTION), config.Option), field.name
        assert field.metadata[config.OPTION].help, field.name


def test_the_defaults_come_from_config():
    args = cli.build_parser().parse_args([])
    made = cli.config_from_args(args)
    defaults = Config()
    for field in dataclasses.fields(Config):
        if field.name != "max_clients":  # the CLI works it out from the file limit
            assert getattr(made, field.name) == getattr(defaults, field.name), field.name
    assert made.max_clients >= 1


def test_config_from_args_converts_each_kind_of_value():
    args = cli.build_parser().parse_args(
        [
            "--host",
            "0.0.0.0",
            "--sndbuf",
            "4k",
            "--http",
            "8080",
            "--admin",
            "[::1]:9100",
            "--allow-origin",
            "https://a",
            "--allow-origin",
            "https://b",
            "--proxy-from",
            "10.0.0.0/8",
            "--compat",
            "--max-clients",
            "9",
        ]
    )
    made = cli.config_from_args(args)
    assert made.sndbuf == 4096
    assert made.http == ("0.0.0.0", 8080) and made.admin == ("::1", 9100)
    assert made.allow_origin == ("https://a", "https://b")
    assert made.proxy_from == ("10.0.0.0/8",)
    assert made.compat and made.max_clients == 9


# Help that states the default -------------------------------------------------


def test_help_states_each_default_from_the_field():
    assert help_text(options()["history"]).endswith("(default 20)")
    assert help_text(options()["sendq"]).endswith("(default 1 MiB)")
    assert help_text(options()["name_timeout"]).endswith("(default 60)")
    assert help_text(options()["proxy_from"]).endswith("(default 127.0.0.0/8, ::1/128)")
    assert help_text(options()["sndbuf"]).endswith("(default: the kernel's autotuning)")
    headroom = Config.__dataclass_fields__["fd_headroom"].default
    assert help_text(options()["max_clients"]).endswith(
        f"(default: the open-file limit less {headroom})"
    )


@pytest.mark.parametrize(
    "name, mode_default", [("idle_timeout", IDLE_TIMEOUT), ("flood_rate", FLOOD_RATE)]
)
def test_a_none_default_states_the_mode_default_the_config_applies(name, mode_default):
    assert getattr(Config(), name) is None
    text = help_text(options()[name])
    assert f"(default {mode_default:g}; off in --compat unless given)" in text
    # The same number Config applies.
    assert getattr(Config(), f"effective_{name}") == mode_default
    assert getattr(Config(compat=True), f"effective_{name}") == 0


def test_no_help_hard_codes_a_default():
    for opt in cli.all_options().values():
        assert not re.search(r"\bdefault\b", opt.help), opt.flags


# The checks, from the fields ---------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"sendq": 0}, "sendq must be positive"),
        ({"inbox_size": 0}, "inbox_size must be positive"),
        ({"bus_stream_max": -1}, "bus_stream_max must be positive"),
        ({"name_timeout": -1}, "name_timeout must not be negative"),
        ({"shutdown_flush_timeout": -1}, "shutdown_flush_timeout must not be negative"),
        ({"idle_timeout": -1}, "idle_timeout must not be negative"),
        ({"flood_rate": -1}, "flood_rate must not be negative"),
        ({"flood_burst": 0}, "flood_burst must be at least 1"),
        ({"max_clients": 0}, "max_clients must be positive"),
        ({"max_per_ip": -1}, "max_per_ip must not be negative"),
        ({"history": -1}, "history must not be negative"),
        ({"port": 65536}, "port must be 0..65535"),
        ({"slow_policy": "x"}, "slow_policy must be one of ('disconnect', 'drop'), not 'x'"),
        ({"tls_cert": "c"}, "tls_cert and tls_key go together"),
        ({"tls_client_ca": "ca"}, "tls_client_ca needs tls_cert and tls_key"),
    ],
)
def test_config_checks(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Config(**values)


def test_none_means_the_default_and_passes_the_checks():
    Config(idle_timeout=None, flood_rate=None, max_clients=None)
    Config(port=0, history=0, sndbuf=0, max_per_ip=0, idle_timeout=0, flood_rate=0)


# docs/options.md ---------------------------------------------------------------


def test_docs_page_is_the_generated_one():
    assert DOCS.read_text(encoding="utf-8") == render_markdown(), (
        "docs/options.md is stale: run `python -m gchat.options_doc > docs/options.md`"
    )


def test_every_option_of_the_help_is_on_the_docs_page():
    out = subprocess.run(
        [gchat_executable(), "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", out))
    assert len(flags) > 40
    page = DOCS.read_text(encoding="utf-8")
    missing = sorted(flag for flag in flags if f"`{flag}" not in page)
    assert not missing


def test_limits_without_a_flag_are_on_the_docs_page_with_their_reason():
    page = DOCS.read_text(encoding="utf-8")
    section = page.split("## Limits without a flag", 1)[1]
    for name, opt in options().items():
        if not opt.flags:
            assert f"| `{name}` |" in section and opt.help in section
    assert "`inbox_size`" in section and "`bus_stream_max`" in section
