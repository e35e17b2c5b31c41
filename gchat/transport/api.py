"""The server API over HTTP (issue 19): the application's backend publishes
into rooms, disconnects users and reads rooms, on the --admin port, with
`Authorization: Bearer KEY` (--api-key-file).  Without the key file the API
is off: its paths are 404 like any other unknown one.

This is an adapter, as a transport is: api_rules.py checks the request
(400 before anything is looked up), and the hub's chat does the rest,
answered through a callable (events.API), as a name claim is answered.
The key is compared in constant time.  A body over API_MAX_BODY gets 413.
"""

import hmac
import json
from typing import Any

from gevent import Timeout
from gevent.event import AsyncResult

from gchat import api_rules
from gchat.events import API

# A request's body at most: a publish is one chat line (4 KiB at most)
# with its room and name; 64 KiB leaves room and refuses a flood.
API_MAX_BODY = 64 * 1024
# Seconds a request waits for the hub's answer: a cluster's answer waits
# for Redis (a name looked up, a room read), and longer means it is down.
ANSWER_TIMEOUT = 5.0


def read_key(path: str) -> bytes:
    """The API key in path (surrounding whitespace stripped); ValueError
    with one line saying what is wrong."""
    try:
        with open(path, encoding="utf-8") as file:
            key = file.read().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--api-key-file {path}: {err}") from None
    if len(key) < 16:
        raise ValueError(f"--api-key-file {path}: the key must be 16 characters at least")
    return key.encode()


class Api:
    """The API's requests, for one hub."""

    def __init__(self, hub: Any, key: bytes, config: Any) -> None:
        self.hub = hub
        self.key = key
        self.config = config

    def answer(self, method: str, path: str, headers: dict, body: bytes, too_large: bool):
        """(status, JSON-able body) for one request."""
        given = headers.get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            return 401, {"error": "missing or wrong API key (Authorization: Bearer KEY)"}
        if too_large:
            return 413, {"error": f"the body is over {API_MAX_BODY} bytes"}
        call = api_rules.parse(method, path, body, self.config.room_name_max, self.config.max_line)
        if isinstance(call, api_rules.Bad):
            return call.status, {"error": call.error}
        result = AsyncResult()
        self.hub.put(API, None, (call.op, call.args, result.set))
        try:
            return result.get(timeout=ANSWER_TIMEOUT)
        except Timeout:
            return 503, {"error": "the server did not answer in time"}


def encode(answer: Any) -> bytes:
    return json.dumps(answer, ensure_ascii=False).encode()
