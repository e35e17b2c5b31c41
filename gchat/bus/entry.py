"""What an entry on the cluster's bus means.  Pure: no Redis, no gevent.

One entry is one hub batch of one node: a list of operations, in the order
the hub made them.  Every entry carries the node's id and a per-node
sequence number, so that a reader applies each entry once however often it
is read (a retried publish, or a republish after Redis lost its data; see
redis_bus.py), and the format version, so that a node never applies what a
node of another version meant differently.

In the stream an entry is four fields: v (FORMAT), n (the node id), s (the
sequence number) and o (the operations as JSON).  JSON because it is in
the standard library and the operations are short lists of strings; one
json.dumps per batch and one json.loads per entry is far below the cost of
the Redis round trip it rides on.

The operations (each a JSON list, its kind first):

  ["enter", NAME, ROOM]          NAME came in and entered ROOM
  ["join", NAME, ROOM]           NAME moved to ROOM (from wherever it is)
  ["leave", NAME, REASON]        NAME left the server ("" or why)
  ["say", ROOM, LINE, KEEP]      LINE to everyone in ROOM; KEEP: into history
  ["nick", OLD, NEW]             OLD is now called NEW
  ["msg", FROM, TO, TEXT]        a private line for TO, wherever it is
  ["hello"]                      a node started: the others tell it who they hold
  ["present", FIRST, [[NAME, ROOM], ...]]
                                 the members this node holds (FIRST: the first
                                 part of the list; it replaces what was known)
  ["lost", NODE, REASON]         NODE is gone (its heartbeat expired, or it
                                 stopped): its members leave with REASON
"""

import json
from collections.abc import Mapping
from typing import Any, NamedTuple, Union

FORMAT = b"1"

# The kinds and the types of their arguments: an entry whose operations do
# not match is skipped whole (it came from another program, or a bug).
OPERATIONS: dict[str, tuple[type, ...]] = {
    "enter": (str, str),
    "join": (str, str),
    "leave": (str, str),
    "say": (str, str, bool),
    "nick": (str, str),
    "msg": (str, str, str),
    "hello": (),
    "present": (bool, list),
    "lost": (str, str),
}


class BadEntry(ValueError):
    """An entry that cannot be applied; the reader logs it and skips it."""


class Entry(NamedTuple):
    node: str
    seq: int
    ops: list[list[Any]]


def dumps(ops: list[list[Any]]) -> str:
    """The operations field of an entry."""
    return json.dumps(ops, ensure_ascii=False, separators=(",", ":"))


def fields(node: str, seq: int, text: str) -> dict[str, Union[bytes, str, int]]:
    """The stream fields of one entry whose operations dumps() gave text."""
    return {"v": FORMAT, "n": node, "s": seq, "o": text}


def encode(node: str, seq: int, ops: list[list[Any]]) -> dict[str, Union[bytes, str, int]]:
    """The stream fields of one entry."""
    return fields(node, seq, dumps(ops))


def decode(fields: Mapping[bytes, bytes], max_bytes: int) -> Entry:
    """An Entry from the fields of a stream entry (bytes keys and values,
    as redis-py returns them); raises BadEntry, saying why, if it is not one
    this version can apply."""
    version = fields.get(b"v")
    if version != FORMAT:
        raise BadEntry(f"format version {version!r}, this node reads {FORMAT!r}")
    raw = fields.get(b"o")
    if raw is None:
        raise BadEntry("no operations field")
    if len(raw) > max_bytes:
        raise BadEntry(f"{len(raw)} bytes, over the limit of {max_bytes}")
    try:
        node = fields[b"n"].decode("ascii")
        seq = int(fields[b"s"])
        ops = json.loads(raw)
    except (KeyError, ValueError, UnicodeDecodeError, RecursionError) as err:
        # RecursionError: JSON nested deeper than the parser's stack.
        raise BadEntry(f"does not parse: {err}") from None
    if not node or seq < 1:
        raise BadEntry("no node id or sequence number")
    if not isinstance(ops, list):
        raise BadEntry("operations are not a list")
    for op in ops:
        _check(op)
    return Entry(node, seq, ops)


def _check(op: object) -> None:
    if not isinstance(op, list) or not op or not isinstance(op[0], str) or op[0] not in OPERATIONS:
        raise BadEntry(f"unknown operation {str(op)[:60]}")
    types = OPERATIONS[op[0]]
    args = op[1:]
    if len(args) != len(types) or not all(isinstance(a, t) for a, t in zip(args, types)):
        raise BadEntry(f"malformed {op[0]} operation")
    if op[0] == "present":
        for pair in op[2]:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not all(isinstance(x, str) for x in pair)
            ):
                raise BadEntry("malformed present operation")


class Deduper:
    """Which entries were applied already: the last sequence number applied
    per node.  A node publishes its entries in sequence order and the stream
    keeps that order, so anything at or below the last one applied is a copy
    (a retried publish, or a republish after Redis came back empty)."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}  # node id -> last sequence number applied

    def fresh(self, entry: Entry) -> bool:
        """Whether entry is new; if so it counts as applied from now on."""
        if entry.seq <= self.last.get(entry.node, 0):
            return False
        self.last[entry.node] = entry.seq
        return True
