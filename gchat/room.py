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

    def __init__(self, config, fanout: Optional[Fanout] = None, stats=None, clock=None):
        """stats: a callable returning the counters /stats shows (the hub's);
        clock: a callable returning the time (the event loop's, from the hub;
        the room never reads a clock of its own)."""
        self.config = config
        self._clock = clock or (lambda: 0.0)
        self._stats = stats or (lambda: dict(self.counts))
        self.compat = config.compat
        self.out = fanout if fanout is not None else Fanout()
        self.members = {}         # name_key -> conn, in order of arrival
        self.connected = set()    # every conn that arrived and has not departed
        self.silent = set()       # conns that have not sent a line yet
        self.departures = []      # (conn, Why) for the hub to close after flushing
        self._arriving = []       # newcomers whose arrival is not announced yet
        self._arriving_since = 0.0  # when the first of them arrived
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
                self._broadcast(p.render_chat(conn.name, text))
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
        key = p.name_key(conn.name) if conn.name is not None else None
        member = key is not None and self.members.get(key) is conn
        farewell = self._farewell(why, detail)
        unannounced = conn in self._arriving
        if unannounced:  # it came and went within one batch: nobody heard of it
            self._arriving.remove(conn)
        if member:
            del self.members[key]
            self.out.departed(conn, member=True)
            if why != Why.SHUTDOWN and not unannounced:
                reason = "" if self.compat else (detail if why == Why.QUIT else _LEFT_REASON[why])
                self._broadcast(p.render_left(conn.name, reason))
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
        and the roster (exercise 8.12); the others hear of its arrival.

        In a room of at least arrival_merge_threshold members (not in
        --compat), arrivals are held back for up to arrival_merge_window
        seconds, or until anything else is said: the members present then
        hear one line naming the whole run, and each newcomer's roster,
        sent then, counts everyone present then.  Nobody loses a name, and
        a storm of N arrivals costs one line per member per window instead
        of N.
        """
        conn.name = name
        self.out.send(conn, p.render_you_are(name), member=False)
        self.counts["arrivals"] += 1
        if not self.compat and len(self.members) >= self.config.arrival_merge_threshold:
            self.members[p.name_key(name)] = conn
            if not self._arriving:
                self._arriving_since = self._clock()
            self._arriving.append(conn)
            return
        self._announce_arrivals()
        if not self.compat:
            self.out.send(conn, self._roster_for_newcomer(exclude=None), member=False)
        self.out.broadcast(p.render_arrived(name))
        self.members[p.name_key(name)] = conn
        self.out.joined(conn)

    def _announce_arrivals(self):
        """Announce the run of arrivals held back by _register, if any."""
        if not self._arriving:
            return
        arriving, self._arriving = self._arriving, []
        if len(arriving) == 1:
            self.out.broadcast(p.render_arrived(arriving[0].name))
        else:
            limit = self.config.roster_limit
            names = [c.name for c in islice(arriving, limit)]
            self.out.broadcast(p.render_arrivals(names, len(arriving)))
        for conn in arriving:
            self.out.send(conn, self._roster_for_newcomer(exclude=conn), member=False)
            self.out.joined(conn)

    def _broadcast(self, line: str):
        self._announce_arrivals()
        self.out.broadcast(line)

    def end_batch(self, now: float):
        """The hub is about to flush: announce held-back arrivals whose
        merge window has passed (or all of them, if the room stopped
        being big)."""
        if self._arriving and now - self._arriving_since >= self.config.arrival_merge_window:
            self._announce_arrivals()

    def arrivals_due(self, now: float):
        """Seconds until held-back arrivals must be announced, or None."""
        if not self._arriving:
            return None
        return max(0.0, self._arriving_since + self.config.arrival_merge_window - now)

    def _roster_for_newcomer(self, exclude) -> str:
        """Everyone present but the newcomer (exclude, when it is already
        among the members), at most roster_limit names, the count exact."""
        limit = self.config.roster_limit
        others = (c.name for c in self.members.values() if c is not exclude)
        shown = list(islice(others, limit))
        total = len(self.members) - (exclude is not None)
        return p.render_roster(shown, total=total, newcomer=True)

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
        self._broadcast(p.render_chat(conn.name, command.text))

    def _me(self, conn, command):
        self._broadcast(p.render_me(conn.name, command.action))

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
        self._broadcast(p.render_nick(conn.name, new))
        del self.members[old_key]
        self.members[new_key] = conn
        conn.name = new

    def _msg(self, conn, command):
        target = self.members.get(p.name_key(command.target))
        if target is None:
            self._error(conn, f"no such user: {command.target}")
            return
        self._announce_arrivals()  # so that target hears of arrivals in order
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
