"""The chat room's state and rules: who is here, under what name, and what
each line and command does.  Pure: no sockets, no gevent, no clock.

The hub (hub.py) owns one Room and is the only caller; that is what makes
the state safe without locks, as the seed's broadcaster goroutine is.  The
room speaks through a Fanout (fanout.py) and lists in `departures` the
connections the hub must close once the batch is delivered.

A connection, as the room sees it, is any object with a `who` attribute
(its address, HOST:PORT) and a writable `name` attribute (None until it has
one; the room alone sets it).
"""
from itertools import islice
from typing import Optional

from gchat import protocol as p
from gchat.fanout import Fanout


class Why:
    """Why a client leaves.  The hub passes one of these to Room.depart."""
    EOF = "eof"                    # the client closed the connection
    ERROR = "error"                # the connection failed (reset, ...)
    QUIT = "quit"                  # /quit
    IDLE = "idle"                  # --idle-timeout
    NAME_TIMEOUT = "name-timeout"  # --name-timeout
    SLOW = "slow"                  # --sendq exceeded under --slow-policy disconnect
    SHUTDOWN = "shutdown"          # the server is stopping
    FAULT = "fault"                # handling one of its events raised
    HTTP = "http"                  # its first line was an HTTP request


# What the others see after "NAME has left" (name mode only), and whether
# the server tries to flush the client's output before closing (pointless
# when the peer has gone away).
_LEFT_REASON = {Why.EOF: "", Why.ERROR: "connection lost", Why.QUIT: "",
                Why.IDLE: "idle timeout", Why.NAME_TIMEOUT: "", Why.SLOW: "send queue exceeded",
                Why.SHUTDOWN: "", Why.FAULT: "server error", Why.HTTP: "not a chat client"}
PEER_GONE = frozenset({Why.EOF, Why.ERROR})


class Room:
    """Members, names and commands.  See the module docstring."""

    def __init__(self, config, fanout: Optional[Fanout] = None, stats=None):
        """stats: a callable returning the counters /stats shows (the hub's)."""
        self.config = config
        self._stats = stats or (lambda: dict(self.counts))
        self.compat = config.compat
        self.out = fanout if fanout is not None else Fanout()
        self.members = {}         # name_key -> conn, in order of arrival
        self.connected = set()    # every conn that arrived and has not departed
        self.silent = set()       # conns that have not sent a line yet
        self.departures = []      # (conn, Why) for the hub to close after flushing
        self.counts = {"arrivals": 0, "departures": 0, "lines": 0, "too_long": 0, "errors": 0}
        self._commands = {
            p.Chat: self._chat, p.Me: self._me, p.Nick: self._nick, p.Msg: self._msg,
            p.Who: self._who, p.Quit: self._quit, p.Help: self._help, p.Stats: self._stats_command,
            p.Invalid: self._invalid,
        }

    # ------------------------------------------------------------------
    # Events from the hub

    def arrive(self, conn):
        """A connection was accepted."""
        self.connected.add(conn)
        self.silent.add(conn)
        if self.compat:
            self._register(conn, conn.who)
        else:
            self.out.send(conn, p.NAME_PROMPT, member=False)

    def lines(self, conn, lines):
        """Lines (bytes, or protocol.TOO_LONG) that conn sent, in order."""
        for line in lines:
            if conn not in self.connected:
                return  # it left in the middle of these lines (/quit)
            if line is p.TOO_LONG:
                self.counts["too_long"] += 1
                self._error(conn, f"line longer than {self.config.max_line} bytes discarded")
                continue
            self.counts["lines"] += 1
            text = p.decode(line)
            if conn in self.silent:
                self.silent.discard(conn)
                if p.looks_like_http(text):
                    self.depart(conn, Why.HTTP)
                    return
            if self.compat:
                self.out.broadcast(p.render_chat(conn.name, text))
            elif conn.name is None:
                self._choose_name(conn, text.strip())
            elif text.strip():  # blank lines say nothing; the seed's mode keeps them
                command = p.parse(text)
                self._commands[type(command)](conn, command)

    def depart(self, conn, why: str, detail: str = ""):
        """Remove conn: the one place where a client leaves, whatever ended it."""
        if conn not in self.connected:
            return  # already gone (e.g. kicked, then its reader saw the close)
        self.connected.discard(conn)
        self.silent.discard(conn)
        member = conn.name is not None and self.members.get(p.name_key(conn.name)) is conn
        farewell = self._farewell(why, detail)
        if member:
            del self.members[p.name_key(conn.name)]
            self.out.departed(conn, member=True)
            if why != Why.SHUTDOWN:
                reason = "" if self.compat else (detail if why == Why.QUIT else _LEFT_REASON[why])
                self.out.broadcast(p.render_left(conn.name, reason))
        if farewell and why not in PEER_GONE:
            self.out.send(conn, farewell, member=False)
        self.departures.append((conn, why))
        self.counts["departures"] += 1

    def shutdown(self):
        """Tell everyone the server is stopping, and let them all go."""
        for conn in list(self.connected):
            self.depart(conn, Why.SHUTDOWN)

    # ------------------------------------------------------------------

    def _farewell(self, why, detail) -> Optional[str]:
        if why == Why.SHUTDOWN:
            return p.SHUTDOWN
        if why == Why.SLOW:
            return p.SENDQ_EXCEEDED
        if why == Why.IDLE:
            return p.render_idle(self.config.effective_idle_timeout)
        if why == Why.NAME_TIMEOUT:
            return p.render_name_timeout(self.config.name_timeout)
        if why == Why.FAULT:
            return p.render_error("internal server error; disconnecting")
        if why == Why.QUIT:
            return "Goodbye."
        if why == Why.HTTP:
            return p.NOT_HTTP
        return None

    def names(self) -> list:
        return [conn.name for conn in self.members.values()]

    def _error(self, conn, reason: str):
        self.counts["errors"] += 1
        self.out.send(conn, p.render_error(reason), member=conn.name is not None)

    def _register(self, conn, name: str):
        """conn joins the room as name (exercise 8.14), after its greeting
        and the roster (exercise 8.12); the others hear of its arrival."""
        conn.name = name
        self.out.send(conn, p.render_you_are(name), member=False)
        if not self.compat:
            self.out.send(conn, self._roster_for_newcomer(), member=False)
        self.out.broadcast(p.render_arrived(name))
        self.members[p.name_key(name)] = conn
        self.out.joined(conn)
        self.counts["arrivals"] += 1

    def _roster_for_newcomer(self) -> str:
        limit = self.config.roster_limit
        shown = [c.name for c in islice(self.members.values(), limit)]
        line = p.render_roster(shown, total=len(self.members), newcomer=True)
        return line

    def _choose_name(self, conn, name: str):
        problem = p.validate_name(name)
        if problem is None and p.name_key(name) in self.members:
            problem = f"the name {name} is taken"
        if problem is not None:
            self._error(conn, problem)
            self.out.send(conn, p.NAME_PROMPT_AGAIN, member=False)
            return
        self._register(conn, name)

    # ------------------------------------------------------------------
    # Commands of named clients, one method each

    def _chat(self, conn, command):
        self.out.broadcast(p.render_chat(conn.name, command.text))

    def _me(self, conn, command):
        self.out.broadcast(p.render_me(conn.name, command.action))

    def _nick(self, conn, command):
        new = command.name
        problem = p.validate_name(new)
        old_key, new_key = p.name_key(conn.name), p.name_key(new)
        if problem is None and new_key != old_key and new_key in self.members:
            problem = f"the name {new} is taken"
        if problem is not None:
            self._error(conn, problem)
            return
        if new == conn.name:
            return
        # Everyone sees the change, the renamed client included: that is
        # its confirmation (IRC's NICK works the same way).
        self.out.broadcast(p.render_nick(conn.name, new))
        del self.members[old_key]
        self.members[new_key] = conn
        conn.name = new

    def _msg(self, conn, command):
        target = self.members.get(p.name_key(command.target))
        if target is None:
            self._error(conn, f"no such user: {command.target}")
            return
        self.out.send(target, p.render_private_to_recipient(conn.name, command.text))
        if target is not conn:
            self.out.send(conn, p.render_private_to_sender(conn.name, target.name, command.text))

    def _who(self, conn, command):
        self.out.send(conn, p.render_roster(self.names(), total=len(self.members), newcomer=False))

    def _quit(self, conn, command):
        self.depart(conn, Why.QUIT, command.reason)

    def _help(self, conn, command):
        for line in p.HELP_LINES:
            self.out.send(conn, line)

    def _stats_command(self, conn, command):
        self.out.send(conn, p.render_stats(self._stats()))

    def _invalid(self, conn, command):
        self._error(conn, command.error)
