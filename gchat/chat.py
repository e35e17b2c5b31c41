"""The chat's state and rules: who is connected, under what name, in which
room, and what each line and command does.  Pure: no sockets, no gevent,
no clock.

The hub (hub.py) owns one Chat and is the only caller; that is what makes
the state safe without locks, as the seed's broadcaster goroutine is.  The
Chat owns the names (unique across the server, whatever the room) and the
rooms (rooms.py), each of which speaks through its own Fanout; it lists in
`departures` the connections the hub must close once the batch is
delivered, and in `dirty` the rooms with output to flush.

A connection, as the chat sees it, is any object with a `who` attribute
(its address, HOST:PORT) and writable `name` and `room` attributes (None
until it has them; the chat alone sets them).  A client with no name yet
is in no room; what it is told goes through the lobby's Fanout.
(events.Member is that object's type.)
"""

import heapq
import itertools
import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from gchat import protocol as p
from gchat.auth import AuthKey, Claims, Refused, may_enter, verify
from gchat.config import Config
from gchat.events import PEER_GONE, Member, Why
from gchat.operators import Restrictions, parse_duration, password_matches, render_until
from gchat.room import Room
from gchat.rooms import RoomRegistry
from gchat.sessions import TOKEN_RE, Position, Session, Sessions, Throttle, parse_id, replay

log = logging.getLogger("gchat")

# A session's token: 24 bytes of the CSPRNG, 32 URL-safe characters.
TOKEN_BYTES = 24


class Chat:
    """Connections, names, rooms and commands.  See the module docstring.

    ClusterChat (cluster.py) is a Chat whose changes go through the bus; it
    overrides the hooks _accept_name, _rename, _speak, _leave_room and
    _taken, and SHUTDOWN_REASON, and shares every rule besides."""

    # What the others are told of a member that leaves because its server
    # stops: nothing here, since they all leave too.
    SHUTDOWN_REASON: Optional[str] = None

    def __init__(
        self,
        config: Config,
        stats: Optional[Callable[[], Mapping[str, object]]] = None,
        clock: Optional[Callable[[], float]] = None,
        auth: Optional[AuthKey] = None,
        wall: Optional[Callable[[], float]] = None,
    ) -> None:
        """stats: a callable returning the counters /stats shows (the hub's);
        clock: a callable returning the time (the event loop's, from the hub;
        the chat never reads a clock of its own); auth: the key tokens are
        verified with (--auth-key), None: no sign-in; wall: the time of day,
        in seconds since the epoch (a token's exp is one)."""
        self.config = config
        self._clock = clock or (lambda: 0.0)
        self._wall = wall or (lambda: 0.0)
        # Signing in (auth.py).  conn -> its token's claims; the times its
        # tokens expire (a heap of (loop time, order, conn, exp)); and the
        # clients whose token expired, in the order they must send a fresh
        # one, with the loop time by which they must.
        self.auth = auth
        self.signed: dict[Member, Claims] = {}
        self._expiries: list[tuple[float, int, Member, float]] = []
        self._order = itertools.count()
        self.refreshing: dict[Member, float] = {}
        self.auth_throttle = Throttle(config.auth_failures)
        # Operators (operators.py): those who sent the right /oper password
        # (a token's role says it of the others); the line of
        # --oper-password-file (the hub sets it); bans and mutes by name.
        self.operators: set[Member] = set()
        self.oper_hash: Optional[str] = None
        self.bans = Restrictions()
        self.mutes = Restrictions()
        self._stats = stats or (lambda: dict(self.counts))
        self.compat = config.compat
        self.connected: set[Member] = set()  # every conn that arrived and has not departed
        self.silent: set[Member] = set()  # conns that have not sent a line yet
        self.names: dict[str, Member] = {}  # name_key -> conn, every named client in any room
        # (conn, Why) for the hub to close after flushing
        self.departures: list[tuple[Member, str]] = []
        self.dirty: list[Room] = []  # rooms with output for the hub to flush
        self.holding: set[Room] = set()  # rooms holding back announcements (room.py)
        self.rooms = RoomRegistry(config, self.dirty, self.holding)
        self.lobby = self.rooms.lobby
        self.sessions = Sessions(
            lambda: secrets.token_urlsafe(TOKEN_BYTES),
            config.resume_backlog,
            config.resume_window,
            config.resume_failures,
        )
        self.session_of: dict[Member, Session] = {}  # conn -> its session, away ones too
        self._stopping = False  # shutdown() began
        self.counts: dict[str, int] = {
            "arrivals": 0,
            "departures": 0,
            "lines": 0,
            "too_long": 0,
            "errors": 0,
            "joins": 0,
            "bytes_out": 0,
        }
        self._commands: dict[type, Callable[[Member, Any], None]] = {
            p.Chat: self._chat,
            p.Me: self._me,
            p.Nick: self._nick,
            p.Msg: self._msg,
            p.Who: self._who,
            p.Quit: self._quit,
            p.Help: self._help,
            p.Stats: self._stats_command,
            p.Join: self._join,
            p.ListRooms: self._list_rooms,
            p.Session: self._session,
            p.Resume: self._resume_named,
            p.Auth: self._auth,
            p.Oper: self._oper,
            p.Moderate: self._moderate,
            p.Invalid: self._invalid,
        }

    # ------------------------------------------------------------------
    # Events from the hub

    def arrive(self, conn: Member) -> None:
        """A connection was accepted."""
        self.connected.add(conn)
        self.silent.add(conn)
        if self.compat:
            self._register(conn, conn.who)
        else:
            prompt = p.AUTH_PROMPT if self.auth is not None else p.NAME_PROMPT
            self.lobby.out.send(conn, prompt, member=False)

    def lines(self, conn: Member, lines: Sequence[p.Line]) -> None:
        """Lines (bytes, or protocol.TOO_LONG) that conn sent, in order."""
        for line in lines:
            if conn not in self.connected:
                return  # it left in the middle of these lines (/quit)
            if line is p.TOO_LONG:
                self.counts["too_long"] += 1
                self._error(conn, p.render_line_too_long(self.config.max_line))
                continue
            self.counts["lines"] += 1
            text = p.decode(line)
            if conn in self.silent:
                self.silent.discard(conn)
                if p.looks_like_http(text):
                    self.depart(conn, Why.HTTP)
                    return
            if self.compat:
                self._speak(conn, p.render_chat(conn.name, text), keep=False)
            elif conn.name is None:
                if text.startswith("/resume") and text[7:8] in ("", " "):
                    self._resume(conn, p.parse(text.strip()))
                elif self.auth is not None:
                    self._sign_in(conn, p.parse(text.strip()))
                else:
                    self._choose_name(conn, text.strip())
            elif text.strip():  # blank lines say nothing; the seed's mode keeps them
                command = p.parse(text)
                if conn in self.refreshing and not isinstance(command, p.Auth):
                    # Its token expired: nothing but a fresh one is taken.
                    left = self.refreshing[conn] - self._clock()
                    self._error(conn, p.render_token_expired(left)[len("error: ") :])
                    continue
                self._commands[type(command)](conn, command)

    def depart(self, conn: Member, why: str, detail: str = "") -> None:
        """Remove conn: the one place where a client leaves, whatever ended it."""
        if conn not in self.connected:
            return  # already gone (e.g. kicked, then its reader saw the close)
        self.connected.discard(conn)
        self.silent.discard(conn)
        self.refreshing.pop(conn, None)
        self.operators.discard(conn)
        session = self.session_of.get(conn)
        if (
            session is not None
            and why in PEER_GONE
            and self.config.resume_window > 0
            and not self._stopping  # a stopping process keeps nobody away
        ):
            # Its connection dropped: it keeps its name and place, away,
            # until it resumes or its window ends (_expire).
            self.sessions.went_away(session, self._clock())
            conn.room.go_away(conn)
            self.departures.append((conn, why))
            self.counts["departures"] += 1
            return
        self.signed.pop(conn, None)
        if session is not None:
            self._end_session(conn, session)
        if conn.room is not None:
            self._leave_room(conn, why, detail)
        farewell = self._farewell(why, detail)
        if why == Why.SHUTDOWN and session is not None:
            farewell = p.SESSION_SHUTDOWN
        if farewell and why not in PEER_GONE:
            self._tell(conn, farewell)
        self.departures.append((conn, why))
        self.counts["departures"] += 1

    def _leave_room(self, conn: Member, why: str, detail: str) -> None:
        """conn, which has a name and a room, leaves them (cluster.py
        publishes the departure instead)."""
        room = conn.room
        key = p.name_key(conn.name)
        if self.names.get(key) is conn:
            del self.names[key]
        room.leave(conn, self._leave_reason(why, detail), moving=False, now=self._clock())
        self.rooms.vacated(room)

    def _leave_reason(self, why: str, detail: str) -> Optional[str]:
        """What the others see after "NAME has left", None for nothing."""
        if why == Why.SHUTDOWN:
            return self.SHUTDOWN_REASON
        if why == Why.KICKED:
            by, _, reason = detail.partition("\n")
            return p.render_kicked_reason(by, reason)
        return detail if why == Why.QUIT else p.LEFT_REASON[why]

    def shutdown(self) -> None:
        """Tell everyone the server is stopping, and let them all go."""
        self._stopping = True
        for conn in list(self.connected):
            self.depart(conn, Why.SHUTDOWN)

    # ------------------------------------------------------------------
    # The hub's batch

    def end_batch(self, now: float) -> None:
        """The hub is about to flush: make the held announcements whose
        merge window has passed."""
        if self.holding:
            window = self.config.arrival_merge_window
            for room in [room for room in self.holding if now - room.held_since >= window]:
                room.announce()
        if self.sessions.away:
            for session in self.sessions.expired(now):
                self._expire(session, now)
        if self._expiries or self.refreshing:
            self._tokens_due(now)

    def due(self, now: float) -> Optional[float]:
        """Seconds until some room's held announcements are due, or an away
        session's window ends, or None."""
        waits = [wait for wait in (room.due(now) for room in self.holding) if wait is not None]
        if self.sessions.away:
            wait = self.sessions.due(now)
            if wait is not None:
                waits.append(wait)
        if self._expiries:
            waits.append(max(0.0, self._expiries[0][0] - now))
        if self.refreshing:
            waits.append(max(0.0, next(iter(self.refreshing.values())) - now))
        return min(waits) if waits else None

    def flush(self, deliver: Callable[[Member, bytes], object]) -> int:
        """Deliver every room's batch (deliver(conn, data) for each client
        with output); returns the deliveries (lines x recipients)."""
        dirty = self.dirty
        rooms = dirty[:]
        dirty.clear()
        deliveries = 0
        for room in rooms:
            out = room.out
            before = out.sent_bytes
            deliveries += out.flush(room.members, deliver)
            self.counts["bytes_out"] += out.sent_bytes - before
        return deliveries

    def named_here(self) -> int:
        """Clients of this process that have a name (in a cluster `names`
        also holds the other nodes' members)."""
        return len(self.names)

    @property
    def pending(self) -> bool:
        return bool(self.dirty)

    # ------------------------------------------------------------------

    def _farewell(self, why: str, detail: str) -> Optional[str]:
        if why == Why.SHUTDOWN:
            return p.SHUTDOWN
        if why == Why.SLOW:
            return p.SENDQ_EXCEEDED
        if why == Why.IDLE:
            return p.render_idle(self.config.effective_idle_timeout)
        if why == Why.NAME_TIMEOUT:
            return p.render_name_timeout(self.config.name_timeout)
        if why == Why.FAULT:
            return p.INTERNAL_ERROR
        if why == Why.QUIT:
            return p.GOODBYE
        if why == Why.HTTP:
            return p.NOT_HTTP
        if why == Why.THROTTLED:
            return p.RESUME_THROTTLED
        if why == Why.AUTH_FAILED:
            return detail  # the line that says why
        if why == Why.TOKEN_EXPIRED:
            return p.render_error(p.TOKEN_EXPIRED_REASON + "; disconnecting")
        if why == Why.KICKED:
            by, _, reason = detail.partition("\n")
            return p.render_kicked(by, reason)
        return None

    def _tell(self, conn: Member, line: str) -> None:
        """One line to conn alone, in order with what its room says."""
        room = conn.room or self.lobby
        room.out.send(conn, line, member=room.receiving(conn))

    def _error(self, conn: Member, reason: str) -> None:
        self.counts["errors"] += 1
        self._tell(conn, p.render_error(reason))

    def _register(self, conn: Member, name: str) -> None:
        """conn takes name (exercise 8.14) and enters the lobby, after its
        greeting; the lobby's roster (exercise 8.12) and history follow."""
        conn.name = name
        self.names[p.name_key(name)] = conn
        conn.room = self.lobby
        self.counts["arrivals"] += 1
        self.lobby.enter(conn, [p.render_you_are(name)], b"", self._clock())

    def _taken(self, key: str) -> bool:
        """Whether the name whose name_key is key belongs to someone."""
        return key in self.names

    def _choose_name(self, conn: Member, name: str) -> None:
        problem = p.validate_name(name)
        if problem is None and self._taken(p.name_key(name)):
            problem = p.render_name_taken(name)
        if problem is None and self.bans.active(p.name_key(name), self._wall()):
            problem = self._banned_line(name)[len("error: ") :]
        if problem is not None:
            self._error(conn, problem)
            self.lobby.out.send(conn, p.NAME_PROMPT_AGAIN, member=False)
            return
        self._accept_name(conn, name)

    def _accept_name(self, conn: Member, name: str) -> None:
        """conn may have name, a free and valid one."""
        self._register(conn, name)

    # ------------------------------------------------------------------
    # Commands of named clients, one method each

    def _speak(self, conn: Member, line: str, keep: bool) -> None:
        """line from conn to its room (cluster.py publishes it instead)."""
        conn.room.say(line, keep=keep)

    def _chat(self, conn: Member, command: p.Chat) -> None:
        if not self._muted(conn):
            self._speak(conn, p.render_chat(conn.name, command.text), keep=True)

    def _me(self, conn: Member, command: p.Me) -> None:
        if not self._muted(conn):
            self._speak(conn, p.render_me(conn.name, command.action), keep=True)

    def _nick(self, conn: Member, command: p.Nick) -> None:
        new = command.name
        problem = p.validate_name(new)
        old_key, new_key = p.name_key(conn.name), p.name_key(new)
        if problem is None and new_key != old_key and self._taken(new_key):
            problem = p.render_name_taken(new)
        if problem is None and new_key != old_key and self.bans.active(new_key, self._wall()):
            problem = self._banned_line(new)[len("error: ") :]
        if problem is not None:
            self._error(conn, problem)
            return
        if new != conn.name:
            self._rename(conn, new, old_key, new_key)

    def _rename(self, conn: Member, new: str, old_key: str, new_key: str) -> None:
        """conn takes the name new, a free and valid one."""
        # The room sees the change, the renamed client included: that is
        # its confirmation (IRC's NICK works the same way).
        conn.room.say(p.render_nick(conn.name, new), keep=False)
        del self.names[old_key]
        self.names[new_key] = conn
        conn.name = new

    def _msg(self, conn: Member, command: p.Msg) -> None:
        own = p.name_key(command.target) == p.name_key(conn.name)
        if not own and self._muted(conn):
            return
        target = self.names.get(p.name_key(command.target))
        if target is None:
            self._error(conn, p.render_no_such_user(command.target))
            return
        line = p.render_private_to_recipient(conn.name, command.text)
        session = self.session_of.get(target)
        if session is not None and session.away:
            if session.kept_away >= self.config.resume_backlog:
                self._error(conn, p.render_away_full(target.name, session.kept_away))
                return
            session.keep_private(target.room.out.seq, (line + "\n").encode())
        else:
            if target in target.room.arriving:
                # Its roster and history first: it is told of the room before
                # it is told anything in it.
                target.room.announce()
            if session is not None:
                room = target.room
                data = session.keep_private(room.out.seq, (line + "\n").encode())
                room.out.send_bytes(target, data, member=room.receiving(target))
            else:
                self._tell(target, line)
        if target is not conn:
            self._tell(conn, p.render_private_to_sender(conn.name, target.name, command.text))

    def _join_target(self, conn: Member, command: p.Join) -> Optional[str]:
        """The name of the room /join asks for, as it is (or will be)
        spelt, or None when conn has been told why not."""
        name = command.room[1:] if command.room.startswith("#") else command.room
        problem = p.validate_room_name(name, self.config.room_name_max)
        if problem is not None:
            self._error(conn, problem)
            return None
        key = p.name_key(name)
        if key == conn.room.key:
            self._error(conn, p.render_already_in(conn.room.name))
            return None
        if not self._may_enter(conn, name):
            self._error(conn, p.render_room_not_allowed(name))
            return None
        room = self.rooms.get(key)
        if room is None and not self.rooms.can_create():
            self._error(conn, p.render_too_many_rooms(len(self.rooms)))
            return None
        return name if room is None else room.name

    def _join(self, conn: Member, command: p.Join) -> None:
        name = self._join_target(conn, command)
        if name is None:
            return
        old = conn.room
        room = self.rooms.get(p.name_key(name)) or self.rooms.create(name)
        assert room is not None  # _join_target found room for it (RoomRegistry.can_create)
        now = self._clock()
        session = self.session_of.get(conn)
        carried = old.leave(conn, p.render_joined_reason(room.name), moving=True, now=now)
        old.out.untag(conn)
        self.rooms.vacated(old)
        conn.room = room
        self.rooms.occupied(room)
        if session is not None:
            room.out.track(self.config.resume_backlog)
            room.out.tag(conn, member=False)
        room.enter(conn, [p.render_now_in(room.name)], carried, now)
        if session is not None:
            session.enter(room.out.epoch, room.key, room.out.seq)
        self.counts["joins"] += 1

    def _list_rooms(self, conn: Member, command: p.ListRooms) -> None:
        visible = None
        if self.config.rooms_policy == "claims":
            visible = lambda name: self._may_enter(conn, name)  # noqa: E731
        self._tell(conn, self.rooms.listing(conn.room, self.config.roster_limit, visible))

    def _who(self, conn: Member, command: p.Who) -> None:
        room = conn.room
        self._tell(conn, p.render_roster(room.names(), total=room.size, newcomer=False))

    def _quit(self, conn: Member, command: p.Quit) -> None:
        self.depart(conn, Why.QUIT, command.reason)

    def _help(self, conn: Member, command: p.Help) -> None:
        for line in p.HELP_LINES:
            self._tell(conn, line)

    def _stats_command(self, conn: Member, command: p.Stats) -> None:
        self._tell(conn, p.render_stats(self._stats()))

    def _invalid(self, conn: Member, command: p.Invalid) -> None:
        self._error(conn, command.error)

    # ------------------------------------------------------------------
    # Signing in (auth.py): /auth TOKEN first, fresh tokens, rooms by claim

    def _sign_in(self, conn: Member, command: p.Command) -> None:
        """The first line of a client under --auth-key: /auth TOKEN."""
        if not isinstance(command, p.Auth):
            # Not a failure: the prompt stands.
            problem = command.error if isinstance(command, p.Invalid) else p.AUTH_FIRST
            self._error(conn, problem)
            return
        now = self._clock()
        address = conn.who.rpartition(":")[0] or conn.who
        if self.auth_throttle.throttled(address, now):
            log.info("sign-in from %s refused: too many failures", address)
            self.depart(conn, Why.AUTH_FAILED, p.AUTH_THROTTLED)
            return
        assert self.auth is not None
        try:
            claims = verify(self.auth, command.token, self._wall(), self.config.auth_leeway)
        except Refused as err:
            # The address and the reason, never the token.
            log.info("sign-in from %s refused: %s", address, err.reason)
            self.auth_throttle.failed(address, now)
            self.counts["errors"] += 1
            self.depart(conn, Why.AUTH_FAILED, p.render_auth_failed(err.reason))
            return
        if self.bans.active(p.name_key(claims.name), self._wall()):
            self.depart(conn, Why.AUTH_FAILED, self._banned_line(claims.name))
            return
        self.signed[conn] = claims
        self._expires(conn, claims)
        holder = self.names.get(p.name_key(claims.name))
        if holder is not None and holder is not conn and self._signed_here(holder):
            self._sign_over(holder, conn)
        else:
            self._accept_name(conn, claims.name)

    def _signed_here(self, holder: Member) -> bool:
        """Whether holder, who has the name a client signs in as, is a
        client of this process's (the same sub, since every name is one)."""
        return holder in self.signed

    def _sign_over(self, old: Member, new: Member) -> None:
        """The same sub signs in again: new takes old's name and place; old
        (if still open) is told and closed; the room sees nothing."""
        room, name = old.room, old.name
        if old in self.connected:
            self._tell(old, p.SIGNED_IN_ELSEWHERE)
            self.connected.discard(old)
            self.silent.discard(old)
            self.departures.append((old, Why.SIGNED_IN_ELSEWHERE))
            self.counts["departures"] += 1
        self.refreshing.pop(old, None)
        self.signed.pop(old, None)
        session = self.session_of.pop(old, None)
        if session is not None:  # the session is the sub's: it goes along
            session.conn = new
            self.session_of[new] = session
            self.sessions.came_back(session)
        carried = self.lobby.out.detach(new, member=False)
        new.name, new.room = name, room
        self.names[p.name_key(name)] = new
        self.silent.discard(new)
        if old in room.arriving:
            room.announce()
        # The roster as old saw it: everyone but itself.
        welcome = room.welcome_block(exclude=old, tagged=session is not None)
        if old in room.members:
            room.out.departed(old, member=True)
            del room.members[old]
        room.away.pop(old, None)
        room.out.untag(old)
        if session is not None:
            room.out.tag(new, member=False)
        greeting = (p.render_you_are(name) + "\n").encode()
        room.out.send_bytes(new, carried + greeting + welcome, member=False)
        room.members[new] = None
        room.out.joined(new)

    def _expires(self, conn: Member, claims: Claims) -> None:
        """conn's token expires (with the leeway) at a time of the loop's."""
        left = claims.expires + self.config.auth_leeway - self._wall()
        entry = (self._clock() + left, next(self._order), conn, claims.expires)
        heapq.heappush(self._expiries, entry)

    def _tokens_due(self, now: float) -> None:
        """Tokens that expired: their clients must send a fresh one within
        auth_refresh seconds; those that did not are let go."""
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, _, conn, exp = heapq.heappop(expiries)
            claims = self.signed.get(conn)
            if claims is None or claims.expires != exp or conn not in self.connected:
                continue  # renewed, or gone
            if conn.name is None:
                # Still being named (a cluster's claim is out): a second later.
                heapq.heappush(expiries, (now + 1.0, next(self._order), conn, exp))
                continue
            self.refreshing[conn] = now + self.config.auth_refresh
            self._tell(conn, p.render_token_expired(self.config.auth_refresh))
        while self.refreshing:
            conn, deadline = next(iter(self.refreshing.items()))
            if deadline > now:
                break
            del self.refreshing[conn]
            self.depart(conn, Why.TOKEN_EXPIRED)

    def _auth(self, conn: Member, command: p.Auth) -> None:
        """/auth TOKEN from a signed-in client: a fresh token for its name."""
        if self.auth is None:
            self._error(conn, p.AUTH_OFF)
            return
        try:
            claims = verify(self.auth, command.token, self._wall(), self.config.auth_leeway)
        except Refused as err:
            self._error(conn, p.render_auth_failed(err.reason)[len("error: ") :])
            return
        if p.name_key(claims.name) != p.name_key(conn.name):
            self._error(conn, p.render_not_your_token(conn.name))
            return
        self.signed[conn] = claims
        self.refreshing.pop(conn, None)
        self._expires(conn, claims)
        self._tell(conn, p.TOKEN_ACCEPTED)

    def _may_enter(self, conn: Member, room: str) -> bool:
        """Whether conn may go into the room called room (--rooms-policy)."""
        if self.config.rooms_policy != "claims" or p.name_key(room) == self.lobby.key:
            return True
        claims = self.signed.get(conn)
        return claims is not None and may_enter(claims.rooms, room)

    # ------------------------------------------------------------------
    # The server API (transport/api.py, api_rules.py): answer((status, body))
    # once, now or (in a cluster, where Redis is asked) later.

    def api(self, op: str, args: dict[str, Any], answer: Callable[[Any], object]) -> None:
        if op == "rooms":
            answer((200, {"rooms": self._api_rooms()}))
        elif op == "room":
            room = self.rooms.get(p.name_key(args["room"]))
            if room is None or (not room.size and not room.history and room is not self.lobby):
                self._api_no_room(args["room"], answer)
                return
            answer((200, self._api_room(room)))
        elif op == "publish":
            self._api_publish(args["room"], p.render_chat(args["as"], args["text"]), answer)
        elif op == "disconnect":
            target = self.names.get(p.name_key(args["name"]))
            if not self._kick(target, "api", args["reason"]):
                answer((404, {"error": p.render_no_such_user(args["name"])}))
                return
            assert target is not None
            answer((200, {"name": target.name, "disconnected": True}))

    def _api_rooms(self) -> list[dict[str, Any]]:
        rooms = self.rooms.rooms.values()
        return [
            {"room": f"#{r.name}", "members": r.size} for r in rooms if r.size or r is self.lobby
        ]

    def _api_room(self, room: Room) -> dict[str, Any]:
        history = [line.decode().rstrip("\n") for line in room.history or ()]
        return {"room": f"#{room.name}", "members": room.names(), "history": history}

    def _api_no_room(self, name: str, answer: Callable[[Any], object]) -> None:
        answer((404, {"error": f"no such room: #{name}"}))

    def _api_publish(self, name: str, line: str, answer: Callable[[Any], object]) -> None:
        """line into the room called name, as a member's (history too)."""
        room = self.rooms.get(p.name_key(name))
        if room is None:
            self._api_no_room(name, answer)
            return
        room.say(line, keep=True)
        answer((200, {"room": f"#{room.name}", "members": room.size}))

    # ------------------------------------------------------------------
    # Operators (operators.py): /oper, /kick, /ban, /mute and their undoing

    def _is_operator(self, conn: Member) -> bool:
        claims = self.signed.get(conn)
        return conn in self.operators or (claims is not None and claims.operator)

    def _oper(self, conn: Member, command: p.Oper) -> None:
        if self.auth is not None or self.oper_hash is None:
            self._error(conn, p.OPER_BY_TOKEN if self.auth is not None else p.OPER_OFF)
            return
        now = self._clock()
        address = conn.who.rpartition(":")[0] or conn.who
        if self.auth_throttle.throttled(address, now):
            self._error(conn, p.OPER_THROTTLED)
            return
        if not password_matches(command.password, self.oper_hash):
            log.info("/oper from %s (%s) refused: wrong password", address, conn.name)
            self.auth_throttle.failed(address, now)
            self._error(conn, p.OPER_REFUSED)
            return
        log.info("%s (%s) is an operator", conn.name, address)
        self.operators.add(conn)
        self._tell(conn, p.OPER_GRANTED)

    def _moderate(self, conn: Member, command: p.Moderate) -> None:
        if not self._is_operator(conn):
            self._error(conn, p.render_for_operators(command.command))
            return
        now = self._wall()
        if command.command == "bans":
            bans = sorted(self.bans.current(now).items())
            if not bans:
                self._tell(conn, p.NO_BANS)
            else:
                self._tell(conn, p.render_bans([(k, render_until(u)) for k, u in bans]))
            return
        key = p.name_key(command.target)
        if command.command in ("unban", "unmute"):
            table, what = (
                (self.bans, "banned") if command.command == "unban" else (self.mutes, "muted")
            )
            self._restricted_elsewhere(what, key, None, lifted=True)
            self._tell(conn, p.render_lifted(command.target, what, table.lift(key)))
            return
        target = self.names.get(key)
        if target is not None and self._is_operator(target):
            self._error(conn, p.render_not_an_operator_target(target.name))
            return
        if command.command == "kick":
            if not self._kick(target, conn.name, command.rest):
                self._kick_elsewhere(conn, command.target, command.rest, tell=True)
            return
        until: Optional[float] = None
        if command.rest:
            seconds = parse_duration(command.rest)
            if seconds is None:
                self._error(conn, p.render_bad_duration(command.command, command.rest))
                return
            until = now + seconds
        name = target.name if target is not None else command.target
        if command.command == "ban":
            self.bans.add(key, until)
            self._restricted_elsewhere("banned", key, until, lifted=False)
            if not self._kick(target, conn.name, "banned"):
                self._kick_elsewhere(conn, command.target, "banned", tell=False)
            self._tell(conn, p.render_restricted(name, "banned", render_until(until)))
        else:
            self.mutes.add(key, until)
            self._restricted_elsewhere("muted", key, until, lifted=False)
            self._tell(conn, p.render_restricted(name, "muted", render_until(until)))
            if target is not None and target is not conn and target in self.connected:
                self._error(target, p.render_muted(render_until(until)))

    def _kick(self, target: Optional[Member], by: str, reason: str) -> bool:
        """target leaves, kicked by by (an operator's name, or "api");
        False if there is nobody of that name to kick."""
        if target is None or target not in self.connected:
            return False
        self.depart(target, Why.KICKED, f"{by}\n{reason}")
        return True

    def _restricted_elsewhere(
        self, what: str, key: str, until: Optional[float], lifted: bool
    ) -> None:
        """A ban or mute is the whole cluster's (cluster.py keeps them in
        Redis); one process has no elsewhere."""

    def _kick_elsewhere(self, op: Member, name: str, reason: str, tell: bool) -> None:
        """A kick of a name nobody here has: one process has no elsewhere
        (a cluster asks Redis which node has it, cluster.py)."""
        if tell:
            self._error(op, p.render_no_such_user(name))

    def _banned_line(self, name: str) -> str:
        return p.render_banned(render_until(self.bans.until.get(p.name_key(name))))

    def _muted(self, conn: Member) -> bool:
        """Whether conn is muted now; if so it is told."""
        key = p.name_key(conn.name)
        if not self.mutes.active(key, self._wall()):
            return False
        self._error(conn, p.render_muted(render_until(self.mutes.until.get(key))))
        return True

    # ------------------------------------------------------------------
    # Sessions (sessions.py): /session, /resume, away and back

    def _session(self, conn: Member, command: p.Session) -> None:
        session = self.session_of.get(conn)
        if session is not None:
            self._tell(conn, p.render_session(session.token))
            return
        session = self.session_of[conn] = self.sessions.open(conn)
        room = conn.room
        self._tell(conn, p.render_session(session.token))  # the last line without an id
        room.out.track(self.config.resume_backlog)
        room.out.tag(conn, member=room.receiving(conn))
        session.enter(room.out.epoch, room.key, room.out.seq)

    def _end_session(self, conn: Member, session: Session) -> None:
        """conn leaves for good: its session ends with it."""
        self.sessions.close(session)
        del self.session_of[conn]
        if conn.room is not None:
            conn.room.out.untag(conn)

    def _expire(self, session: Session, now: float) -> None:
        """An away session's window ended: it leaves, as anyone whose
        connection was lost."""
        conn = session.conn
        self.sessions.close(session)
        self.session_of.pop(conn, None)
        room = conn.room
        key = p.name_key(conn.name)
        if self.names.get(key) is conn:
            del self.names[key]
        room.leave_away(conn, p.SESSION_LOST, now)
        self.rooms.vacated(room)

    def _resume_named(self, conn: Member, command: p.Resume) -> None:
        self._error(conn, p.RESUME_NAMED)

    def _resume(self, conn: Member, command: p.Command) -> None:
        """/resume TOKEN ID from a connection with no name yet."""
        now = self._clock()
        address = conn.who.rpartition(":")[0] or conn.who
        if self.sessions.throttled(address, now):
            self.depart(conn, Why.THROTTLED)
            return
        if not isinstance(command, p.Resume):
            error = command.error if isinstance(command, p.Invalid) else "bad /resume"
            self._resume_failed(conn, address, now, p.render_error(error))
            return
        if not TOKEN_RE.fullmatch(command.token):
            self._resume_failed(conn, address, now, p.RESUME_UNKNOWN)
            return
        session = self.sessions.find(command.token)
        if session is None:
            self._resume_elsewhere(conn, address, now, command)
            return
        try:
            start = self._resume_point(session, command.last)
        except ValueError:
            self._resume_failed(
                conn, address, now, p.render_error(p.render_bad_resume_id(command.last))
            )
            return
        self._take_over(conn, session, start)

    def _resume_point(self, session: Session, last: str) -> Optional[Position]:
        """Where a resume from the id last starts, None for the session's
        start; ValueError when last is no id the session received."""
        if last == "-":
            return None
        parsed = parse_id(last)
        if parsed is None or parsed.k > session.k:
            raise ValueError(last)
        start = session.position(parsed)
        if start is None:
            raise ValueError(last)
        if start.stint == session.current and parsed.seq > session.conn.room.out.seq:
            raise ValueError(last)  # an id the room has not given yet
        return start

    def _resume_elsewhere(self, conn: Member, address: str, now: float, command: p.Resume) -> None:
        """A token this process does not hold: one process has no other
        place to look (a cluster asks Redis, cluster.py)."""
        self._resume_failed(conn, address, now, p.RESUME_UNKNOWN)

    def _resume_failed(self, conn: Member, address: str, now: float, line: str) -> None:
        self.sessions.failed(address, now)
        self.counts["errors"] += 1
        self.lobby.out.send(conn, line, member=False)
        prompt = p.AUTH_PROMPT if self.auth is not None else p.NAME_PROMPT_AGAIN
        self.lobby.out.send(conn, prompt, member=False)

    def _take_over(self, conn: Member, session: Session, start: Optional[Position]) -> None:
        """conn takes session's place: its name, its room, and the lines it
        missed; the session's old connection, if still open, is closed."""
        old = session.conn
        room = old.room
        name = old.name
        out = room.out
        plan = replay(
            session, start, out.log or (), out.seq, self.config.resume_backlog, out.log_base
        )
        if not plan.gap:
            head = p.render_resumed(name, room.name, len(plan.lines))
            block = b"".join([(head + "\n").encode(), *plan.lines])
        else:
            head = p.render_resumed(name, room.name, None)
            welcome = room.welcome_block(exclude=old, tagged=True)
            block = b"".join([(head + "\n").encode(), welcome, *plan.lines])
        if not session.away:
            # A half-open connection (a network change): the resume wins.
            self._tell(old, p.RESUMED_ELSEWHERE)
            self.connected.discard(old)
            self.silent.discard(old)
            self.departures.append((old, Why.RESUMED))
            self.counts["departures"] += 1
        carried = b"" if room is self.lobby else self.lobby.out.detach(conn, member=False)
        conn.name = name
        conn.room = room
        self.names[p.name_key(name)] = conn
        self.silent.discard(conn)
        room.come_back(old, conn, carried + block)
        del self.session_of[old]
        self.session_of[conn] = session
        session.conn = conn
        self.sessions.came_back(session)
        claims = self.signed.pop(old, None)
        if claims is not None:  # signed in: the token's claims come along
            self.signed[conn] = claims
            self._expires(conn, claims)
