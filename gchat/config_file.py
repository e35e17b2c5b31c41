"""--config FILE and --print-config: the command-line options, in TOML.

The file's keys are the long options without their dashes, flat:

    idle-timeout = 120
    http = "127.0.0.1:8080"
    allow-origin = ["https://a.example", "https://b.example"]
    compat = true

Everything here is derived from the argparse parser itself (its actions,
their `type`, `choices` and flags), so that there is no second list of
options to keep in step with cli.py, and a value in the file goes through
exactly the validation the same value gets on the command line.  The file
becomes the parser's defaults, so the command line overrides it.

tomllib (tomli before Python 3.11) parses the file but reports no positions
for the values it returns; errors about a key name its line by finding the
key in the text.
"""

import argparse
import difflib
import re
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, as a package (setup.py requires it there)
    import tomli as tomllib

# Options that make no sense inside a file: they act instead of configuring.
NOT_SETTABLE = frozenset({"help", "version", "config", "print_config"})


def settable_actions(parser) -> dict:
    """key -> action, for every long option a file may set (aliases too)."""
    keys = {}
    for action in parser._actions:  # argparse keeps no public list of them
        if action.dest in NOT_SETTABLE:
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                keys[option[2:]] = action
    return keys


def canonical_key(action) -> str:
    """The name --print-config writes: the option's first long spelling."""
    return next(option[2:] for option in action.option_strings if option.startswith("--"))


def _is_flag(action) -> bool:
    # store_true / store_false: no argument, a boolean constant.
    return action.nargs == 0 and isinstance(action.const, bool)


def _is_repeatable(action) -> bool:
    return isinstance(action, argparse._AppendAction)


class ConfigFileError(Exception):
    """A bad config file; the message names the file and, when it can, the line."""


class ConfigFile:
    """One loaded file: the parser defaults it sets, and where each key is."""

    def __init__(self, path: str, text: str, data: dict, parser):
        self.path = path
        self.text = text
        self.values: dict = {}  # dest -> value, converted as the command line would
        self.keys: dict = {}  # dest -> the key the file spelt it with
        self.raw: dict = {}  # dest -> the value as the file wrote it
        actions = settable_actions(parser)
        for key, raw in data.items():
            action = actions.get(key)
            if action is None:
                raise ConfigFileError(self._where(key) + self._unknown(key, actions))
            if action.dest in self.keys:
                raise ConfigFileError(
                    f"{self._where(key)}{key} sets the same option as {self.keys[action.dest]}"
                    f" ({self._where(self.keys[action.dest]).rstrip(': ')})"
                )
            try:
                self.values[action.dest] = convert(action, raw)
                self.raw[action.dest] = raw
            except ValueError as err:
                raise ConfigFileError(
                    f"{self._where(key)}{key} = {_render_raw(raw)}: {err}"
                ) from None
            self.keys[action.dest] = key

    def line_of(self, key: str):
        """The 1-based line where key is set (or its [key] table opens), or None."""
        name = re.escape(key)
        for pattern in (
            rf"^[ \t]*(?:{name}|\"{name}\"|'{name}')[ \t]*=",
            rf"^[ \t]*\[+[ \t]*(?:{name}|\"{name}\"|'{name}')[ \t]*[\].]",
        ):
            match = re.search(pattern, self.text, re.MULTILINE)
            if match:
                return self.text.count("\n", 0, match.start()) + 1
        return None

    def _where(self, key: str) -> str:
        line = self.line_of(key)
        return f"{self.path}, line {line}: " if line else f"{self.path}: "

    @staticmethod
    def _unknown(key: str, actions: dict) -> str:
        if key in {"help", "version", "config", "print-config"}:
            return f"{key} cannot be set in a config file"
        close = difflib.get_close_matches(key, actions, n=1)
        hint = (
            f" (did you mean {close[0]}?)"
            if close
            else " (the keys are the long options without '--', e.g. idle-timeout = 120)"
        )
        return f"unknown option {key!r}{hint}"

    def explain(self, message: str, args) -> str:
        """message (a Config error) with the file's line when a key of the
        file, not overridden on the command line, is the one it names."""
        for dest, key in self.keys.items():
            if (
                re.search(rf"\b{re.escape(dest)}\b", message)
                and getattr(args, dest) == self.values[dest]
            ):
                return f"{self._where(key)}{key} = {_render_raw(self.raw[dest])}: {message}"
        return message


def convert(action, raw):
    """raw (a TOML value) as the option's value, through the same type and
    choices checks as the command line; ValueError says what is wrong."""
    if _is_flag(action):
        if not isinstance(raw, bool):
            raise ValueError("must be true or false")
        return action.const if raw else not action.const
    if _is_repeatable(action):
        if not isinstance(raw, list):
            raise ValueError('must be an array, e.g. ["a", "b"] (the option is repeatable)')
        return [_convert_one(action, item) for item in raw]
    return _convert_one(action, raw)


def _convert_one(action, raw):
    # A boolean is a TOML type of its own: true for a number or a name is a
    # mistake, not the text "True".  Arrays and tables are for other keys.
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ValueError(
            f"must be a {'string or number' if action.type else 'string'}, not {_toml_type(raw)}"
        )
    text = raw if isinstance(raw, str) else repr(raw)
    kind = action.type or str
    try:
        value = kind(text)
    except argparse.ArgumentTypeError as err:
        raise ValueError(str(err)) from None
    except (TypeError, ValueError):
        raise ValueError(f"invalid {getattr(kind, '__name__', 'value')} value: {text!r}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError("must be one of " + ", ".join(_render_raw(c) for c in action.choices))
    return value


def _toml_type(raw) -> str:
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, list):
        return "an array"
    if isinstance(raw, dict):
        return "a table"
    return f"a {type(raw).__name__}"


def load(parser, path: str) -> ConfigFile:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        raise ConfigFileError(f"cannot read config file: {err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigFileError(f"{path}: not UTF-8 text ({err})") from None
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        # Its message ends "(at line L, column C)".
        raise ConfigFileError(f"{path}: invalid TOML: {err}") from None
    return ConfigFile(path, text, parsed, parser)


def parse_args(parser, argv=None):
    """(args, ConfigFile or None): argv parsed once to find --config, then
    again over the file's values as defaults, so the command line wins.
    A bad file is a parser.error (exit 2)."""
    args = parser.parse_args(argv)
    if args.config is None:
        return args, None
    try:
        source = load(parser, args.config)
    except ConfigFileError as err:
        parser.error(str(err))
    actions = settable_actions(parser)
    repeated: dict = {}
    defaults: dict = {}
    for dest, value in source.values.items():
        if _is_repeatable(actions[source.keys[dest]]):
            # argparse appends to the default list: the command line's
            # --allow-origin would add to the file's.  None as the default
            # tells whether the command line gave any, and it then replaces
            # the file's list, as every other option does.
            repeated[dest] = value
            defaults[dest] = None
        else:
            defaults[dest] = value
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    for dest, value in repeated.items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)
    return args, source


def dump(parser, args, header: str = "") -> str:
    """The options in args as a TOML file that parse_args reads back to the
    same values: every settable option, once, by its first long name.  An
    unset option (None) is a comment, as TOML has no null."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    seen = set()
    for action in parser._actions:
        if action.dest in NOT_SETTABLE or action.dest in seen or not action.option_strings:
            continue
        seen.add(action.dest)
        key = canonical_key(action)
        value = getattr(args, action.dest)
        if value is None:
            lines.append(f"# {key} = (not set: gchat --help says what that means)")
        elif _is_flag(action):
            lines.append(f"{key} = {'true' if value == action.const else 'false'}")
        elif _is_repeatable(action):
            lines.append(f"{key} = [{', '.join(_render_value(action, v) for v in value)}]")
        else:
            lines.append(f"{key} = {_render_value(action, value)}")
    return "\n".join(lines) + "\n"


def _render_value(action, value) -> str:
    # A type whose value is not a plain number or text (a (host, port)
    # pair, a tuple of networks) says how to write it back as its argument.
    unparse = getattr(action.type, "unparse", None)
    if unparse is not None:
        value = unparse(value)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return _render_raw(value)
    raise TypeError(
        f"--print-config cannot write {canonical_key(action)} = {value!r}; "
        "give its type an unparse function"
    )


def _render_raw(value) -> str:
    """value as TOML: a number as is, text as a basic string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # repr round-trips; inf and nan are TOML too
    if isinstance(value, str):
        return '"' + "".join(_escape(c) for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_render_raw(v) for v in value) + "]"
    return repr(value)


def _escape(char: str) -> str:
    # TOML basic strings forbid raw control characters (DEL included).
    if char in '"\\':
        return "\\" + char
    if char < " " or char == "\x7f":
        return f"\\u{ord(char):04x}"
    return char
