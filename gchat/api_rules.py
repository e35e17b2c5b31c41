"""The server API's requests (issue 19): what each one must carry, checked
before anything is looked up.  Pure: a method, a path and a body in; the
operation and its arguments, or a status and an error, out.

    POST /api/publish      {"room": "#ops", "text": "deploy finished", "as": "deploybot"}
    POST /api/disconnect   {"name": "mallory", "reason": "spam"}
    GET  /api/rooms
    GET  /api/rooms/ROOM   (ROOM without "#")

transport/api.py is the HTTP side (the key, the body's size, the answer);
the chat (chat.py, cluster.py) looks the room or name up and acts.
"""

import json
from typing import Any, NamedTuple, Union
from urllib.parse import unquote

from gchat import protocol as p

PREFIX = "/api/"


class Call(NamedTuple):
    """A request that is well formed: what to do, with what."""

    op: str  # publish | disconnect | rooms | room
    args: dict[str, Any]


class Bad(NamedTuple):
    """A request answered without the chat: its status and error."""

    status: int
    error: str


def parse(
    method: str, path: str, body: bytes, room_name_max: int, max_line: int
) -> Union[Call, Bad]:
    """The call that method and path (under /api/) with body ask for (the
    limits: Config.room_name_max and Config.max_line)."""
    route = path[len(PREFIX) :]
    if route in ("publish", "disconnect"):
        if method != "POST":
            return Bad(405, f"{path} takes POST")
        fields = _json_object(body)
        if isinstance(fields, Bad):
            return fields
        if route == "publish":
            return _publish(fields, room_name_max, max_line)
        return _disconnect(fields)
    if route == "rooms":
        return Call("rooms", {}) if method == "GET" else Bad(405, f"{path} takes GET")
    if route.startswith("rooms/"):
        if method != "GET":
            return Bad(405, f"{path} takes GET")
        name = unquote(route[len("rooms/") :])
        problem = p.validate_room_name(name, room_name_max)
        if problem is not None:
            return Bad(400, problem)
        return Call("room", {"room": name})
    return Bad(404, f"no such endpoint: {path}")


def _json_object(body: bytes) -> Union[dict, Bad]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Bad(400, "the body is not JSON")
    if not isinstance(value, dict):
        return Bad(400, "the body is not a JSON object")
    return value


def _text(fields: dict, key: str, required: bool = True) -> Union[str, Bad, None]:
    value = fields.get(key)
    if value is None:
        return Bad(400, f"missing field {key!r}") if required else None
    if not isinstance(value, str):
        return Bad(400, f"field {key!r} is not a string")
    if "\n" in value or "\r" in value:
        return Bad(400, f"field {key!r} holds a line break")
    return value


def _publish(fields: dict, room_name_max: int, max_line: int) -> Union[Call, Bad]:
    room, text, name = (_text(fields, key) for key in ("room", "text", "as"))
    for value in (room, text, name):
        if isinstance(value, Bad):
            return value
    assert isinstance(room, str) and isinstance(text, str) and isinstance(name, str)
    room = room[1:] if room.startswith("#") else room
    problem = p.validate_room_name(room, room_name_max)
    if problem is None:
        problem = p.validate_name(name)
    if problem is None and not text.strip():
        problem = "field 'text' is empty"
    if problem is None and len(p.render_chat(name, text).encode()) > max_line:
        problem = f"the line is longer than {max_line} bytes"
    if problem is not None:
        return Bad(400, problem)
    return Call("publish", {"room": room, "text": text, "as": name})


def _disconnect(fields: dict) -> Union[Call, Bad]:
    name = _text(fields, "name")
    reason = _text(fields, "reason", required=False)
    for value in (name, reason):
        if isinstance(value, Bad):
            return value
    assert isinstance(name, str)
    problem = p.validate_name(name)
    if problem is not None:
        return Bad(400, problem)
    return Call("disconnect", {"name": name, "reason": reason or ""})
