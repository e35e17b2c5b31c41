"""A chat client of the cluster soak (cluster_soak.py): one named
connection to a node, read by a greenlet of its own.  It keeps the soak's
chat lines it receives as ids (Soak.intern) in arrival order, for the
checks (soak_checks.py), and accounts for its own lines: which came back,
how many were refused ("not sent").  With a room it joins it once named
(/join #ROOM) and counts only what comes after "You are now in #ROOM" and
the room's history.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from array import array
from typing import TYPE_CHECKING, Optional

import gevent
from gevent import socket as gsocket  # cooperative sockets, without monkey-patching
from gevent.event import Event

from gchat_bench.processes import HOST

if TYPE_CHECKING:
    from gchat_bench.cluster_soak import Soak

RECV_SIZE = 1 << 16
READ_PAUSE = 0.05  # a named client reads at most this often (the kernel buffers meanwhile)

HISTORY_OPEN = b"--- last "
NOW_IN = b"You are now in #"
HISTORY_CLOSE = b"--- end of history ---"
NOT_SENT = b"not sent"
SERVER_LOST = b"(server lost)"


class Client:
    """One named connection: reads everything, keeps the chat lines of this
    run as ids (Soak.intern) in arrival order, and accounts for its own."""

    def __init__(self, soak: Soak, name: str, node: int, stayer: bool, room: str = ""):
        self.soak = soak
        self.room = room  # "" : the lobby, where everyone is once named
        self.name = name
        self.nameb = name.encode()
        self.node = node
        self.stayer = stayer
        self.sock: Optional[gsocket.socket] = None
        self.reader: Optional[gevent.Greenlet] = None
        self.tail = b""
        self.state = 0  # 0 naming, 1 live, 2 in the history block, 3 joining the room
        self.named = Event()
        self.name_error: Optional[str] = None
        self.closed = False
        self.seen = array("l")
        self.max_seen: dict = {}  # sender -> highest seq (stayers only)
        self.sent = 0
        self.echoed: set = set()  # own lines that came back
        self.echo_max = -1
        self.refusals = 0  # "error: ... not sent"
        self.errors = 0
        self.server_lost = 0
        self.settled = False  # every line came back or was refused (set when it went)

    def connect(self, port: int):
        self.sock = gsocket.create_connection((HOST, port), timeout=5)
        self.sock.settimeout(None)
        self.sock.sendall(self.nameb + b"\n")
        self.reader = gevent.spawn(self._read)

    def _read(self):
        sock = self.sock
        dump = None
        if self.stayer and self.soak.a.dump:
            dump = open(os.path.join(self.soak.logdir, "%s.recv" % self.name), "wb")
        try:
            while True:
                data = sock.recv(RECV_SIZE)
                if not data:
                    break
                if dump is not None:
                    dump.write(b"%.3f %d\n" % (time.monotonic() - self.soak.began, len(data)))
                    dump.write(data)
                self.feed(data)
                if self.state == 1:
                    # Let lines gather: one read per READ_PAUSE, not one per line.
                    gevent.sleep(READ_PAUSE)
        except OSError:
            pass
        finally:
            self.closed = True
            self.named.set()
            if dump is not None:
                dump.close()

    def feed(self, data: bytes):
        if self.tail:
            data = self.tail + data
        lines = data.split(b"\n")
        self.tail = lines.pop()
        match = self.soak.chat_re.match
        intern = self.soak.intern
        seen = self.seen
        for line in lines:
            if self.state == 1:
                m = match(line)
                if m is None:
                    self._other(line)
                    continue
                sender, seq = m.group(1), int(m.group(2))
                seen.append(intern(sender, seq))
                if self.stayer and seq > self.max_seen.get(sender, -1):
                    self.max_seen[sender] = seq
                if sender == self.nameb:
                    self._echo(seq)
            elif self.state == 2:
                if line.rstrip(b"\r") == HISTORY_CLOSE:
                    self.state = 1
            elif self.state == 3:
                # The lobby's roster and arrivals, until the room says hello.
                line = line.rstrip(b"\r")
                if line == NOW_IN + self.room.encode():
                    self.state = 1
                    self.named.set()
                elif line.startswith(b"error: "):
                    self.name_error = line.decode("utf-8", "replace")
                    self.named.set()
            else:
                line = line.rstrip(b"\r")
                if line == b"You are " + self.nameb:
                    if self.room:
                        self.state = 3
                        self.sock.sendall(b"/join #%s\n" % self.room.encode())
                    else:
                        self.state = 1
                        self.named.set()
                elif line.startswith(b"error: "):
                    self.name_error = line.decode("utf-8", "replace")
                    self.named.set()

    def _other(self, line: bytes):
        if line.startswith(HISTORY_OPEN):
            self.state = 2  # comes after the roster, before any live line
        elif line.startswith(b"error: "):
            if NOT_SENT in line:
                self._refusal()
            else:
                self.errors += 1
                self.soak.error_lines.setdefault(line[:100].decode("utf-8", "replace"), 0)
                self.soak.error_lines[line[:100].decode("utf-8", "replace")] += 1
        elif SERVER_LOST in line:
            self.server_lost += line.count(SERVER_LOST)

    def _echo(self, seq: int):
        self.echoed.add(seq)
        if seq > self.echo_max:
            self.echo_max = seq

    def _refusal(self):
        self.refusals += 1

    @property
    def live(self) -> bool:
        """Named (and in its room, if it has one): its chat lines count."""
        return self.state in (1, 2)

    def accounted(self) -> bool:
        """Every line sent came back or was refused."""
        return len(self.echoed) + self.refusals >= self.sent

    def say(self):
        self.sock.sendall(b"~%d %d\n" % (self.soak.run, self.sent))
        self.sent += 1
        if self.stayer and self.soak.a.dump:
            self.soak.sendlog.write(
                b"%.3f %s %d\n" % (time.monotonic() - self.soak.began, self.nameb, self.sent - 1)
            )

    def close(self, how: int = 1):
        if self.reader is not None:
            self.reader.kill(block=False)
        if self.sock is None:
            return
        try:
            if how == 0:
                self.sock.sendall(b"/quit churn\n")
            elif how == 2:  # reset: RST, perhaps with unread input
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()
