"""A room entry's operations (gchat/bus/entry.py): dumps and decode as
Redis hands the field back (bytes), every way an entry can be unusable
(each a BadEntry that says why), and nothing else raised whatever comes."""

import json
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gchat.bus.entry import FORMAT, LINES, OPERATIONS, BadEntry, decode, dumps

BIG = 1 << 20

EVERY_KIND = [
    ["enter", "ann"],
    ["leave", "ann", "connection lost"],
    ["leave", "ann", ""],
    ["say", 'ann: héllo \u2603 "quoted" \\ back\ttab', True],
    ["say", "ann: not kept", False],
    ["nick", "ann", "Änne"],
    ["present", ["ann", "bob"]],
    ["present", []],
    ["lost", "n1", "server lost"],
    ["session", "ann"],
    ["away", "ann"],
    ["move", "ann"],
    ["expire", "ann", "n1"],
    ["msg", "ann", "bob", "psst"],
    ["kick", "ann", "op", "spam"],
    ["hand-over", "ann", "n2"],
    ["handed", "ann", "ops"],
    ["handover", "ann"],
]


def raw(ops) -> bytes:
    """The operations field as Redis returns it."""
    return dumps(ops).encode()


def bad(data: bytes, max_bytes=BIG) -> str:
    with pytest.raises(BadEntry) as err:
        decode(data, max_bytes)
    return str(err.value)


def versioned(*ops) -> bytes:
    """Raw JSON operations behind this version's number."""
    return json.dumps([FORMAT, *ops]).encode()


# ----------------------------------------------------------------------
# Round trips


def test_every_kind_of_operation_round_trips():
    assert decode(raw(EVERY_KIND), BIG) == EVERY_KIND
    assert sorted(OPERATIONS) == sorted({op[0] for op in EVERY_KIND})


@pytest.mark.parametrize("op", EVERY_KIND, ids=lambda op: op[0])
def test_each_kind_round_trips_alone_with_its_types(op):
    (back,) = decode(raw([op]), BIG)
    assert back == op
    assert [type(arg) for arg in back[1:]] == [type(arg) for arg in op[1:]]


def test_the_field_is_compact_utf8_json_behind_the_format_version():
    assert dumps([["say", "\u2603", True]]) == '[2,["say","\u2603",true]]'
    assert raw([["say", "\u2603", True]]) == '[2,["say","\u2603",true]]'.encode()
    assert FORMAT == 2


def test_the_kinds_that_carry_a_line_are_say_and_msg():
    assert LINES == {"say", "msg"}
    assert LINES <= set(OPERATIONS)


def test_an_entry_without_operations_is_an_entry():
    assert dumps([]) == "[2]"
    assert decode(b"[2]", BIG) == []


# ----------------------------------------------------------------------
# Every way of being bad, each saying why


@pytest.mark.parametrize(
    "version", [1, 3, 0, -2, "2", None, True, False, [2], {"v": 2}, 2.5, 2.0, "NaN"]
)
def test_another_format_version_is_refused(version):
    data = json.dumps([version, ["enter", "ann"]]).encode().replace(b'"NaN"', b"NaN")
    assert bad(data) == f"format version {str(json.loads(data)[0])[:20]}, this node reads 2"


def test_the_refused_version_is_shown_short():
    reason = bad(json.dumps(["x" * 500]).encode())
    assert reason == f"format version {'x' * 20}, this node reads 2"


@pytest.mark.parametrize("data", [b"", b"[", b"not json", b'[2,["enter"', b"\xff\xfe", b"[2]]"])
def test_operations_that_are_not_json_are_refused(data):
    assert bad(data).startswith("does not parse: ")


def test_a_number_too_long_to_convert_does_not_parse():
    assert bad(b"[" + b"9" * 5000 + b"]").startswith("does not parse: ")


def test_json_nested_deeper_than_the_parser_goes_does_not_parse():
    depth = sys.getrecursionlimit() * 20
    assert bad(b"[2," + b"[" * depth + b"]" * depth + b"]", 8 << 20).startswith("does not parse: ")


@pytest.mark.parametrize("value", [{}, "hello", 3, None, True, [], {"say": 1}])
def test_operations_that_are_not_a_non_empty_list_are_refused(value):
    assert bad(json.dumps(value).encode()) == "operations are not a list"


@pytest.mark.parametrize(
    "op",
    [
        [],
        ["shout", "x"],
        ["SAY", "line", True],
        ["hello"],
        ["join", "ann", "den"],
        "enter",
        1,
        None,
        True,
        {"k": "say"},
        [1],
        [None],
        [True, "x"],
        [["say"], "x", True],
        [{}, "x"],
    ],
)
def test_an_unknown_operation_is_refused(op):
    assert bad(versioned(["enter", "ann"], op)).startswith("unknown operation ")


def test_an_unknown_operation_is_shown_short():
    assert (
        bad(versioned(["shout", "x" * 500]))
        == "unknown operation " + str(["shout", "x" * 500])[:60]
    )


@pytest.mark.parametrize(
    "op",
    [
        ["enter"],
        ["enter", "ann", "lobby"],
        ["enter", 1],
        ["enter", None],
        ["enter", True],
        ["leave", "ann"],
        ["leave", "ann", None],
        ["leave", "ann", "", "extra"],
        ["say", "line"],
        ["say", "line", "true"],
        ["say", "line", 1],
        ["say", "line", None],
        ["say", 5, True],
        ["say", "line", True, "extra"],
        ["nick", "a"],
        ["nick", "a", ["b"]],
        ["present"],
        ["present", "ann"],
        ["present", {"ann": 1}],
        ["present", [], []],
        ["lost", "n2"],
        ["lost", "n2", None],
        ["lost", 7, "server lost"],
        ["msg", "a", "b"],
        ["msg", "a", "b", 3],
        ["msg", "a", "b", "c", "d"],
    ],
)
def test_operations_of_the_wrong_arity_or_types_are_refused(op):
    assert bad(versioned(op)) == f"malformed {op[0]} operation"


@pytest.mark.parametrize(
    "names", [[1], ["ann", None], [["ann"]], [{"ann": 1}], ["ann", True], [1.5]]
)
def test_present_names_must_all_be_strings(names):
    assert bad(versioned(["present", names])) == "malformed present operation"


def test_one_bad_operation_refuses_the_whole_entry():
    reason = bad(versioned(["say", "fine", True], ["say", "bad"], ["enter", "ann"]))
    assert reason == "malformed say operation"


def test_an_entry_over_the_size_limit_is_refused_before_it_is_parsed():
    ops = [["say", "x" * 100, True]]
    size = len(raw(ops))
    assert decode(raw(ops), size) == ops
    assert bad(raw(ops), size - 1) == f"{size} bytes, over the limit of {size - 1}"
    # Not even parsed: over the limit, garbage is refused for its size.
    assert bad(b"{" * 100, 99) == "100 bytes, over the limit of 99"


def test_the_size_limit_counts_bytes_not_characters():
    ops = [["say", "\u2603" * 10, True]]  # 30 bytes of UTF-8 for 10 characters
    data = raw(ops)
    assert len(data) == len(dumps(ops)) + 20
    assert decode(data, len(data)) == ops
    assert "over the limit" in bad(data, len(data) - 1)


# ----------------------------------------------------------------------
# Anything at all: operations, or only BadEntry


def decodes_or_bad_entry(data, max_bytes=4096):
    try:
        ops = decode(data, max_bytes)
    except BadEntry as err:
        assert str(err)  # it says why
        return None
    assert isinstance(ops, list)
    for op in ops:
        assert op[0] in OPERATIONS and len(op) == 1 + len(OPERATIONS[op[0]])
    return ops


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.sampled_from(sorted(OPERATIONS)),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=128))
def test_random_bytes_never_raise_anything_but_bad_entry(data):
    decodes_or_bad_entry(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_after_a_valid_start_never_raise_anything_but_bad_entry(data):
    decodes_or_bad_entry(b'[2,["say","x",true],' + data)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_random_json_never_raises_anything_but_bad_entry(value):
    decodes_or_bad_entry(json.dumps(value).encode())
    decodes_or_bad_entry(json.dumps([FORMAT, value]).encode())
    if isinstance(value, list):
        decodes_or_bad_entry(json.dumps([FORMAT, *value]).encode())


# Text as a chat line can hold it (protocol.decode leaves no lone surrogate).
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
operations = st.one_of(
    st.tuples(st.just("enter"), text),
    st.tuples(st.just("leave"), text, text),
    st.tuples(st.just("say"), text, st.booleans()),
    st.tuples(st.just("nick"), text, text),
    st.tuples(st.just("present"), st.lists(text, max_size=4)),
    st.tuples(st.just("lost"), text, text),
    st.tuples(st.just("msg"), text, text, text),
).map(list)


@settings(max_examples=300, deadline=None)
@given(st.lists(operations, max_size=6))
def test_valid_operations_round_trip(ops):
    assert decode(raw(ops), BIG) == ops
