"""What an entry of a room's log means.  Pure: no Redis, no gevent.

Each room has a log of its own (room_log.py, room_stream.py); an entry is
one hub batch's operations of one node in one room, as JSON.  Its room is
the log's, so an operation does not name it.  Position and identity (the
epoch, the offset, the node and its sequence number) travel beside the
operations, not in them.

The operations (each a JSON list, its kind first):

  ["enter", NAME]                NAME came into the room
  ["leave", NAME, REASON]        NAME left the room: the server ("" or why),
                                 or for another room ("joined #den")
  ["say", LINE, KEEP]            LINE to everyone in the room; KEEP: into history
  ["nick", OLD, NEW]             OLD is now called NEW
  ["present", [NAME, ...]]       the publishing node's members in the room are
                                 exactly these (after Redis lost the room, or
                                 after the others took the node for lost)
  ["lost", NODE, REASON]         NODE is gone (no heartbeat, or stopped): its
                                 members leave the room with REASON, but for
                                 those with a session, which are away
  ["session", NAME]              the publishing node's member NAME has a
                                 session (sessions.py): it can be away
  ["away", NAME]                 the publishing node's member NAME, a session,
                                 is away (its node is stopping)
  ["move", NAME]                 NAME, a session wherever it was, resumed on
                                 the publishing node: silently its member now
  ["handover", NAME]             NAME signed in again on the publishing node
                                 (the same token's sub): silently its member now
  ["expire", NAME, NODE]         NAME, NODE's away session, never resumed: it
                                 leaves ("connection lost"), if it still is so

and, in a node's inbox (a log that only its node reads):

  ["msg", FROM, TO, TEXT]        a private line for TO
  ["kick", NAME, BY, REASON]     NAME is kicked by BY (an operator, or "api")
  ["hand-over", NAME, NODE]      NAME signed in again on NODE: let it go there
  ["handed", NAME, ROOM]         ... it went, from ROOM ("" if it was not here)

JSON because it is in the standard library and the operations are short
lists of strings; one json.dumps per room per batch and one json.loads per
entry is far below the cost of the Redis round trip it rides on.
"""

import json
from typing import Any

# A room entry's operations are prefixed with the format version, so that a
# node never applies what a node of another version meant differently.
FORMAT = 2

# The kinds and the types of their arguments: an entry whose operations do
# not match is skipped whole (it came from another program, or a bug).
OPERATIONS: dict[str, tuple[type, ...]] = {
    "enter": (str,),
    "leave": (str, str),
    "say": (str, bool),
    "nick": (str, str),
    "present": (list,),
    "lost": (str, str),
    "session": (str,),
    "away": (str,),
    "move": (str,),
    "handover": (str,),
    "expire": (str, str),
    "msg": (str, str, str),
    "kick": (str, str, str),
    "hand-over": (str, str),
    "handed": (str, str),
}

# The kinds that carry a chat or private line (the outage bound counts them).
LINES = frozenset({"say", "msg"})


class BadEntry(ValueError):
    """An entry that cannot be applied; the reader logs it and skips it."""


def dumps(ops: list[list[Any]]) -> str:
    """An entry's operations field."""
    return json.dumps([FORMAT, *ops], ensure_ascii=False, separators=(",", ":"))


def decode(raw: bytes, max_bytes: int) -> list[list[Any]]:
    """The operations of an entry whose field dumps() gave; raises BadEntry,
    saying why, if they are not ones this version can apply."""
    if len(raw) > max_bytes:
        raise BadEntry(f"{len(raw)} bytes, over the limit of {max_bytes}")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        # RecursionError: JSON nested deeper than the parser's stack.
        raise BadEntry(f"does not parse: {err}") from None
    if not isinstance(value, list) or not value:
        raise BadEntry("operations are not a list")
    if type(value[0]) is not int or value[0] != FORMAT:  # not 2.0, not true
        raise BadEntry(f"format version {str(value[0])[:20]}, this node reads {FORMAT}")
    ops = value[1:]
    for op in ops:
        _check(op)
    return ops


def _check(op: object) -> None:
    if not isinstance(op, list) or not op or not isinstance(op[0], str) or op[0] not in OPERATIONS:
        raise BadEntry(f"unknown operation {str(op)[:60]}")
    types = OPERATIONS[op[0]]
    args = op[1:]
    if len(args) != len(types) or not all(isinstance(a, t) for a, t in zip(args, types)):
        raise BadEntry(f"malformed {op[0]} operation")
    if op[0] == "present" and not all(isinstance(name, str) for name in op[1]):
        raise BadEntry("malformed present operation")
