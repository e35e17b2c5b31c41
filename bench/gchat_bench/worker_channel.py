"""The command channel between a generator worker (worker.py) and its
parent (runner.py): one JSON object per line, commands on the worker's
stdin, replies and events on its stdout.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import Any, Callable

import gevent

# While a command runs, the worker reports its progress this often.
PROGRESS_INTERVAL = 0.5


def emit(obj: dict) -> None:
    """Write one JSON line to the parent (blocking: the parent always reads)."""
    data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    while data:
        n = os.write(1, data)
        data = data[n:]


def parent_input():
    """stdin as a gevent file: reading a command waits without blocking
    the clients' loop."""
    from gevent.fileobject import FileObjectPosix

    return FileObjectPosix(sys.stdin.fileno(), "rb", close=False)


def read_config(fin) -> dict:
    """The parent's first line: the worker's configuration (runner.py)."""
    return json.loads(fin.readline())


class CommandChannel:
    """Runs the parent's commands on a handler, one at a time.

    {"cmd": NAME, ...} calls handler.cmd_NAME(msg); its reply goes back
    with "ev": NAME, or {"ev": "error", ...} if it raised (the parent
    decides).  "quit" or the end of input ends serve().  While a command
    runs, progress() goes out as {"ev": "progress", ...} twice a second.
    """

    def __init__(self, handler: Any, progress: Callable[[], dict]):
        self.handler = handler
        self.progress = progress
        self.busy = False  # a command is running: emit progress
        gevent.spawn(self._progress_loop)

    def _progress_loop(self) -> None:
        while True:
            gevent.sleep(PROGRESS_INTERVAL)
            if self.busy:
                emit({"ev": "progress", **self.progress()})

    def serve(self, fin: Iterable[bytes]) -> None:
        """Run commands from the parent until "quit" or end of input."""
        for raw in fin:
            msg = json.loads(raw)
            cmd = msg["cmd"]
            if cmd == "quit":
                break
            self.busy = True
            try:
                reply = getattr(self.handler, "cmd_" + cmd)(msg)
                reply["ev"] = cmd
            except Exception as e:  # report, let the parent decide
                reply = {"ev": "error", "cmd": cmd, "error": "%s: %s" % (type(e).__name__, e)}
            self.busy = False
            emit(reply)
