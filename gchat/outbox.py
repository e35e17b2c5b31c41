"""A client's output: bounded in bytes, never blocking the broadcaster.

The hub offers bytes; the outbox first tries to hand them straight to the
kernel with a non-blocking send.  Whatever the kernel refuses is parked, in
order, and the connection's writer (a write watcher) is started to send
it when the socket drains (ergo's sendq and Redis's output buffer work the same way).
If parked bytes would pass `limit`, the slow-client policy decides
(exercise 8.15):

* "disconnect": offer() returns False and the caller removes the client;
* "drop": the offer is skipped whole (never part of a line, so order and
  framing hold), its lines are counted, and once there is room again the
  client is told how many it missed, in order, before anything newer.

Pure: the non-blocking send and the wake-up are callables given by the
connection, so that tests drive the outbox without sockets.
"""

from typing import Callable

from gchat import protocol as p


class Outbox:
    lines_dropped = 0  # every outbox's skipped lines, for the metrics
    __slots__ = (
        "limit",
        "drop_policy",
        "_send",
        "_wake",
        "_parked",
        "parked_bytes",
        "missed",
        "dropped",
        "broken",
    )

    def __init__(
        self, limit: int, policy: str, send: Callable[[bytes], int], wake: Callable[[], object]
    ) -> None:
        """send(data) -> bytes accepted, raising BlockingIOError when none
        (a non-blocking socket send); wake() starts the writer."""
        self.limit = limit
        self.drop_policy = policy == "drop"
        self._send = send
        self._wake = wake
        self._parked: list[bytes] = []
        self.parked_bytes = 0
        self.missed = 0  # lines skipped since the client was last told
        self.dropped = 0  # lines skipped in all, for the stats
        self.broken = False  # the connection failed; output is discarded

    def offer(self, data: bytes, force: bool = False) -> bool:
        """Queue data for the client.  False: over the limit under the
        disconnect policy (the data was not queued).  force: queue it even
        over the limit (a departing client's last lines)."""
        if self.broken:
            return True
        if self._parked:
            return self._queue(data, force)
        try:
            sent = self._send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # The peer is gone; its reader will see that and report it.
            self.broken = True
            return True
        if sent < len(data):
            self._park(data[sent:])
            self._wake()
        return True

    def _queue(self, data: bytes, force: bool) -> bool:
        """data behind what is parked already: within the limit (or
        forced), after the notice of what was missed, if any."""
        if self.parked_bytes + len(data) > self.limit and not force:
            return self._over_limit(data)
        if self.missed:
            self._park(self._notice(p.render_missed(self.missed)))
            self.missed = 0
        self._park(self._seal(data))
        return True

    def _seal(self, data: bytes) -> bytes:
        """data, offered, as it is parked (TLS encrypts it here, in order
        after the notice)."""
        return data

    def _over_limit(self, data: bytes) -> bool:
        if not self.drop_policy:
            return False
        lines = self._lines_in(data)
        self.missed += lines
        self.dropped += lines
        Outbox.lines_dropped += lines
        return True

    def _lines_in(self, data: bytes) -> int:
        """Lines in data as offered (a framing transport overrides this)."""
        return data.count(b"\n")

    def _wire(self, payload: bytes) -> bytes:
        """payload as it goes on the wire (framing and TLS transports
        override this, each calling the next: frame, then encrypt)."""
        return payload

    def _notice(self, line: str) -> bytes:
        """A line of the server's own, as it goes on the wire."""
        return self._wire(line.encode() + b"\n")

    def _park(self, data: bytes) -> None:
        self._parked.append(data)
        self.parked_bytes += len(data)

    # The writer's side -------------------------------------------------

    def pending(self) -> bytes:
        """Everything parked, as one bytes object (b"" when nothing is)."""
        parked = self._parked
        if not parked:
            return b""
        if len(parked) > 1:
            parked[:] = [b"".join(parked)]
        return parked[0]

    def sent(self, count: int) -> None:
        """The writer sent count bytes of pending()."""
        parked = self._parked
        head = parked[0]
        self.parked_bytes -= count
        if count < len(head):
            parked[0] = head[count:]
            return
        # The hub may have parked more while this was being sent: keep it.
        del parked[0]
        if not parked and self.missed:  # caught up: now say what was skipped
            self._park(self._notice(p.render_missed(self.missed)))
            self.missed = 0

    def abandon(self) -> None:
        """The connection failed: forget what is parked."""
        self.broken = True
        self._parked.clear()
        self.parked_bytes = 0
