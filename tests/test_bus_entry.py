"""Entries of the cluster's bus (gchat/bus/entry.py): encode and decode as
Redis hands the fields back, every way an entry can be unusable, and the
Deduper."""

import json

import pytest
from cluster_harness import as_redis
from hypothesis import given, settings
from hypothesis import strategies as st

from gchat.bus.entry import FORMAT, OPERATIONS, BadEntry, Deduper, Entry, decode, encode

BIG = 1 << 20

EVERY_KIND = [
    ["enter", "ann", "lobby"],
    ["join", "ann", "den"],
    ["leave", "ann", "connection lost"],
    ["say", "den", 'ann: héllo \u2603 "quoted" \\ back', True],
    ["say", "den", "ann: not kept", False],
    ["nick", "ann", "Änne"],
    ["msg", "ann", "bob", "psst"],
    ["hello"],
    ["present", True, [["ann", "den"], ["bob", "lobby"]]],
    ["present", False, []],
    ["lost", "n1", "server lost"],
]


def fields(ops, node="n1", seq=7, **override):
    """An entry's fields as Redis returns them, with raw overrides (bytes)."""
    out = as_redis(encode(node, seq, ops))
    for key, value in override.items():
        if value is None:
            del out[key.encode()]
        else:
            out[key.encode()] = value
    return out


def bad(fields_, max_bytes=BIG) -> str:
    with pytest.raises(BadEntry) as err:
        decode(fields_, max_bytes)
    return str(err.value)


def test_every_kind_of_operation_round_trips_through_redis():
    raw = encode("n1", 42, EVERY_KIND)
    assert set(raw) == {"v", "n", "s", "o"} and raw["v"] == FORMAT
    entry = decode(as_redis(raw), BIG)
    assert entry == Entry("n1", 42, EVERY_KIND)
    assert entry.ops[3][3] is True and entry.ops[4][3] is False
    assert sorted(OPERATIONS) == sorted({op[0] for op in EVERY_KIND})


def test_the_operations_are_compact_utf8_json():
    raw = encode("n1", 1, [["say", "r", "\u2603", True]])
    assert raw["o"] == '[["say","r","\u2603",true]]'
    assert as_redis(raw)[b"o"] == '[["say","r","\u2603",true]]'.encode()


def test_an_empty_list_of_operations_is_an_entry():
    assert decode(fields([]), BIG) == Entry("n1", 7, [])


@pytest.mark.parametrize("version", [b"2", b"0", b"", b"1.0", None])
def test_another_format_version_is_refused(version):
    assert "format version" in bad(fields([["hello"]], v=version))


def test_missing_fields_are_refused():
    assert bad(fields([["hello"]], o=None)) == "no operations field"
    assert bad(fields([["hello"]], n=None)).startswith("does not parse")
    assert bad(fields([["hello"]], s=None)).startswith("does not parse")


@pytest.mark.parametrize("seq", [b"0", b"-3", b"x", b"1.5", b"", b"\xff"])
def test_a_bad_sequence_number_is_refused(seq):
    bad(fields([["hello"]], s=seq))


@pytest.mark.parametrize("node", [b"", b"n\xff"])
def test_a_bad_node_id_is_refused(node):
    bad(fields([["hello"]], n=node))


@pytest.mark.parametrize("raw", [b"", b"[", b"not json", b'["hello"', b"\xff\xfe", b"[]]"])
def test_operations_that_are_not_json_are_refused(raw):
    assert bad(fields([], o=raw)).startswith("does not parse")


@pytest.mark.parametrize("ops", [{}, "hello", 3, None, True, {"say": 1}])
def test_operations_that_are_not_a_list_are_refused(ops):
    assert bad(fields([], o=json.dumps(ops).encode())) == "operations are not a list"


@pytest.mark.parametrize(
    "op",
    [
        [],
        ["shout", "x"],
        ["SAY", "r", "l", True],
        "hello",
        1,
        None,
        {"k": "say"},
        [1],
        [None],
        [True, "x"],
    ],
)
def test_an_unknown_operation_is_refused(op):
    assert bad(fields([["hello"], op])).startswith("unknown operation")


@pytest.mark.parametrize(
    "op",
    [
        ["enter", "ann"],
        ["enter", "ann", "lobby", "extra"],
        ["enter", 1, "lobby"],
        ["join", "ann", None],
        ["leave", "ann"],
        ["say", "r", "line"],
        ["say", "r", "line", "true"],
        ["say", "r", "line", 1],
        ["say", "r", 5, True],
        ["nick", "a", ["b"]],
        ["msg", "a", "b"],
        ["msg", "a", "b", 3],
        ["hello", "x"],
        ["present", True],
        ["present", 1, []],
        ["present", True, "ann"],
        ["present", True, {}],
        ["lost", "n2"],
        ["lost", "n2", None],
    ],
)
def test_operations_of_the_wrong_arity_or_types_are_refused(op):
    assert bad(fields([op])) == f"malformed {op[0]} operation"


@pytest.mark.parametrize(
    "pairs",
    [
        [["ann"]],
        [["ann", "lobby", "x"]],
        [["ann", 1]],
        [[None, "lobby"]],
        ["ann"],
        [("ann", "lobby"), 3],
        [[]],
        [{"ann": "lobby"}],
    ],
)
def test_present_pairs_must_be_two_strings(pairs):
    ops = [["present", True, pairs]]
    assert bad(fields([], o=json.dumps(ops).encode())) == "malformed present operation"


def test_one_bad_operation_refuses_the_whole_entry():
    bad(fields([["say", "r", "fine", True], ["say", "r", "bad"], ["hello"]]))


def test_an_entry_over_the_size_limit_is_refused_before_it_is_parsed():
    ops = [["say", "r", "x" * 100, True]]
    size = len(encode("n1", 1, ops)["o"].encode())
    assert decode(fields(ops), size).ops == ops
    assert bad(fields(ops), size - 1) == f"{size} bytes, over the limit of {size - 1}"
    # Not even parsed: over the limit, garbage is refused for its size.
    assert "over the limit" in bad(fields([], o=b"{" * 100), 99)


# ----------------------------------------------------------------------
# Anything at all: only BadEntry


def decodes_or_bad_entry(fields_):
    try:
        entry = decode(fields_, 4096)
    except BadEntry:
        return None
    assert isinstance(entry, Entry) and isinstance(entry.ops, list)
    for op in entry.ops:
        assert op[0] in OPERATIONS and len(op) == 1 + len(OPERATIONS[op[0]])
    return entry


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(sorted(OPERATIONS)),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([b"v", b"n", b"s", b"o", b"x"]), st.binary(max_size=64), max_size=5
    )
)
def test_random_fields_never_raise_anything_but_bad_entry(raw):
    decodes_or_bad_entry(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_operation_bytes_never_raise_anything_but_bad_entry(raw):
    decodes_or_bad_entry(fields([], o=raw))


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_random_json_operations_never_raise_anything_but_bad_entry(ops):
    decodes_or_bad_entry(fields([], o=json.dumps(ops).encode()))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(EVERY_KIND), max_size=6),
    st.integers(1, 2**62),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12),
)
def test_valid_entries_round_trip(ops, seq, node):
    assert decode(as_redis(encode(node, seq, ops)), BIG) == Entry(node, seq, ops)


@pytest.mark.parametrize("ops", [[[["say"]]], [[{}]], [[[], "x"]]])
def test_an_operation_whose_kind_is_a_list_or_an_object_is_a_bad_entry(ops):
    bad(fields([], o=json.dumps(ops).encode()))


def test_deeply_nested_json_is_a_bad_entry():
    depth = 100_000
    bad(fields([], o=b"[" * depth + b"]" * depth), max_bytes=8 << 20)


# ----------------------------------------------------------------------
# Deduper


def test_deduper_takes_each_entry_of_each_node_once():
    dedupe = Deduper()
    e = lambda node, seq: Entry(node, seq, [])  # noqa: E731
    assert dedupe.fresh(e("a", 1))
    assert not dedupe.fresh(e("a", 1))  # a retried publish
    assert dedupe.fresh(e("b", 1))  # another node counts apart
    assert dedupe.fresh(e("a", 2))
    assert dedupe.fresh(e("a", 5))  # a gap (entries the stream trimmed) is fine
    assert not dedupe.fresh(e("a", 3))  # below the last applied: a copy
    assert not dedupe.fresh(e("a", 5))
    assert not dedupe.fresh(e("b", 1))
    assert dedupe.fresh(e("~a", 1))  # a lost entry is a node of its own
    assert not dedupe.fresh(e("~a", 1))  # published by a second survivor
    assert dedupe.last == {"a": 5, "b": 1, "~a": 1}


def test_deduper_drops_a_whole_republished_stream():
    dedupe = Deduper()
    stream = [Entry(node, seq, []) for seq in range(1, 6) for node in ("a", "b")]
    assert all(dedupe.fresh(entry) for entry in stream)
    assert not any(dedupe.fresh(entry) for entry in stream)
    assert dedupe.fresh(Entry("a", 6, []))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 20)), max_size=60))
def test_deduper_fresh_is_a_strictly_increasing_sequence_per_node(entries):
    dedupe = Deduper()
    last = {}
    for node, seq in entries:
        assert dedupe.fresh(Entry(node, seq, [])) == (seq > last.get(node, 0))
        last[node] = max(seq, last.get(node, 0))
