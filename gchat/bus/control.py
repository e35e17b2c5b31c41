"""What a cluster shares besides the rooms' logs (issue 17), groundwork: the
server does not use it yet.  Every call touches keys that a Redis Cluster
can serve: one slot per call, or a pipeline that the cluster's client
splits by master.

- Names, one key each, so that they spread over the masters with the
  clients: C:n:{KEY} holds the node id that has the name.  A node's names
  are also listed in {C:node:ID}:names (the node's own slot), so that a
  survivor can free them when the node is lost.  A claim lists the name
  first and takes it second: a node that dies between the two leaves a
  name listed that it does not hold, which freeing skips, never a name
  held that nobody lists.
- Liveness: {C:ctl}:hb:ID, renewed with a TTL; a node whose key expired is
  lost.  {C:ctl}:lost:ID is set once, by whichever survivor frees the lost
  node's names first, so that its members leave once.
- The room directory, for /rooms: {C:ctl}:dir:ID maps each room with
  members on node ID to how many; the cluster's rooms are the sum over the
  live nodes.  It grows with the rooms a node hosts and changes with
  arrivals, not with lines.

The control keys share the slot of {C:ctl}: a small space, a handful of
keys per node.
"""

from typing import Any, Optional

from gchat.bus.pipelines import execute as execute_pipeline

# KEYS: the name's key.  ARGV: the node.  Deletes the name if the node has it.
RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and (held == ARGV[1] or string.sub(held, 1, #ARGV[1] + 1) == ARGV[1] .. ' ') then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: the name's key, its session marker.  ARGV: the node, milliseconds.
# A name of a node that stops or is lost: freed, unless a session holds it
# (sessions.py), which keeps it for its resume window (both keys expire
# then, unless a resume on another node takes them first).  Returns 1
# (freed), 0 (the node no longer holds it) or the session's token.
LET_GO = """
local held = redis.call('GET', KEYS[1])
if not held or (held ~= ARGV[1] and string.sub(held, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ') then
  return 0
end
local token = redis.call('GET', KEYS[2])
if token then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return token
end
return redis.call('DEL', KEYS[1])
"""

# KEYS: the name's key, its session marker.  ARGV: the session's token, the
# name's new value ("NODE NAME").  A resume takes the name over for good,
# from whichever node had it, if the session still holds it: a token whose
# session ended (its marker deleted) or expired (its keys with it) takes
# nothing, not even a name that someone took since.  Returns 1 or 0.
TAKE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PERSIST', KEYS[2])
return 1
"""

RESTRICTION_KINDS = ("bans", "mutes")


class Control:
    """One cluster's names, liveness and directory, over a redis-py client
    (redis.Redis or redis.cluster.RedisCluster)."""

    def __init__(self, client: Any, cluster: str) -> None:
        self.client = client
        self.cluster = cluster
        self._release = client.register_script(RELEASE)
        self._let_go = client.register_script(LET_GO)
        self._take = client.register_script(TAKE)

    # Keys ---------------------------------------------------------------

    def name_key(self, key: str) -> str:
        return f"{self.cluster}:n:{{{key}}}"

    def session_marker(self, key: str) -> str:
        """The token of the session that holds the name (its key's slot)."""
        return f"{self.cluster}:ns:{{{key}}}"

    def session_record(self, token: str) -> str:
        """A session's name and room, by its token (sessions across nodes)."""
        return f"{self.cluster}:s:{{{token}}}"

    def node_names(self, node: str) -> str:
        return f"{{{self.cluster}:node:{node}}}:names"

    def heartbeat(self, node: str) -> str:
        return f"{{{self.cluster}:ctl}}:hb:{node}"

    def lost_marker(self, node: str) -> str:
        return f"{{{self.cluster}:ctl}}:lost:{node}"

    def directory_key(self, node: str) -> str:
        return f"{{{self.cluster}:ctl}}:dir:{node}"

    def epoch_key(self) -> str:
        return f"{{{self.cluster}:ctl}}:epoch"

    def nodes_key(self) -> str:
        return f"{{{self.cluster}:ctl}}:nodes"

    def restrictions_key(self, kind: str) -> str:
        """The cluster's bans or mutes (kind): name key -> when it ends
        (seconds since the epoch, or "-" for until lifted)."""
        return f"{{{self.cluster}:ctl}}:{kind}"

    def gone_key(self) -> str:
        return f"{{{self.cluster}:ctl}}:gone"

    # The cluster's life -------------------------------------------------

    def epoch(self, new: str) -> str:
        """The cluster's epoch, set to new if Redis has none: a value that
        changes means that Redis lost the control space (restarted empty)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.epoch_key(), new, nx=True)
        pipe.get(self.epoch_key())
        return pipe.execute()[1].decode()

    def nodes(self) -> list[str]:
        """The nodes that said they are in the cluster and did not leave."""
        return sorted(node.decode() for node in self.client.smembers(self.nodes_key()))

    def leave(self, node: str) -> None:
        """node stops: out of the nodes' list, its heartbeat and directory
        gone, and marked lost so that no survivor frees it again."""
        pipe = self.client.pipeline(transaction=False)
        pipe.srem(self.nodes_key(), node)
        pipe.delete(self.heartbeat(node))  # one key per delete: a cluster's pipeline
        pipe.delete(self.directory_key(node))
        pipe.execute()

    def gone(self, node: str, now: float, keep: float) -> None:
        """node was lost: out of the nodes' list, into the list of lost
        nodes (kept keep seconds), where every survivor finds it."""
        pipe = self.client.pipeline(transaction=False)
        pipe.srem(self.nodes_key(), node)
        pipe.zadd(self.gone_key(), {node: now})
        pipe.zremrangebyscore(self.gone_key(), "-inf", now - keep)
        pipe.execute()

    def lost_nodes(self) -> list[str]:
        """The nodes lost lately (gone())."""
        return [node.decode() for node in self.client.zrange(self.gone_key(), 0, -1)]

    def directory_of(self, node: str) -> dict[str, int]:
        """{room name: members} of one node."""
        rooms = self.client.hgetall(self.directory_key(node))
        return {room.decode(): int(count) for room, count in rooms.items()}

    def unmark_lost(self, node: str) -> None:
        """node was declared lost while alive (stalled): a later real loss
        is to be handled again."""
        self.client.delete(self.lost_marker(node))
        self.client.zrem(self.gone_key(), node)

    # Names --------------------------------------------------------------

    def claim(self, key: str, node: str, name: str = "") -> bool:
        """Take the name whose name_key is key for node: True if node has
        it now (taken, or had it already), False if another node has it.
        The key holds "NODE NAME": name is its spelling (for a /msg's
        sender, which is told how the recipient spells it)."""
        self.client.sadd(self.node_names(node), key)
        value = f"{node} {name}" if name else node
        if self.client.set(self.name_key(key), value, nx=True):
            return True
        if self.holder(key) == node:
            return True
        self.client.srem(self.node_names(node), key)
        return False

    def take(self, key: str, node: str, name: str) -> None:
        """node has the name now, whoever had it (the same sub signed in
        again there: the node that had it handed it over)."""
        self.client.sadd(self.node_names(node), key)
        self.client.set(self.name_key(key), f"{node} {name}")

    def release(self, key: str, node: str) -> None:
        self._release(keys=[self.name_key(key)], args=[node])
        self.client.srem(self.node_names(node), key)

    def release_all(self, keys: list[str], node: str, keep_ms: int = 0) -> None:
        """release() of many names, in one pipeline (a node that stops);
        keep_ms: a name that a session holds is kept that long instead."""
        self.let_go(keys, node, keep_ms)
        if keys:
            self.client.delete(self.node_names(node))

    def let_go(self, keys: list[str], node: str, keep_ms: int) -> list[str]:
        """The names of keys that node holds are freed, but for those that a
        session holds, kept keep_ms milliseconds with the session's record
        (its resume window); returns the keys freed."""

        def fill(pipe: Any) -> None:
            for key in keys:
                pipe.evalsha(
                    self._let_go.sha,
                    2,
                    self.name_key(key),
                    self.session_marker(key),
                    node,
                    max(1, keep_ms),
                )

        replies = execute_pipeline(self.client, fill, (LET_GO,)) if keys else []
        freed = []
        tokens = []
        for key, reply in zip(keys, replies):
            if isinstance(reply, bytes):
                tokens.append(reply.decode())
            elif reply:
                freed.append(key)
        if tokens:
            pipe = self.client.pipeline(transaction=False)
            for token in tokens:
                pipe.pexpire(self.session_record(token), max(1, keep_ms))
            pipe.execute()
        return freed

    # Sessions -----------------------------------------------------------

    # Each write below fills a pipeline (the claimer sends one per round,
    # however many sessions it carries: a storm of resumes after a node
    # died is thousands of them).

    def open_session(
        self, pipe: Any, token: str, key: str, name: str, room: str, start: str, earlier: str
    ) -> None:
        """token's session is name's (its name key: key), in room since the
        id start, and before in the rooms whose epochs earlier lists (","
        between them, "-" for none): any node can resume it.  Also after a
        /join or a /nick (the record follows)."""
        pipe.set(self.session_record(token), f"{name} {room} {start} {earlier}")
        pipe.set(self.session_marker(key), token)

    def end_session(self, pipe: Any, token: str, key: str) -> None:
        pipe.delete(self.session_record(token))
        pipe.delete(self.session_marker(key))

    def forget_session(self, key: str, owner: str) -> None:
        """The away session that holds the name key left (its window
        ended): its record and marker go, and its name, if owner (its
        node) holds it still."""
        token = self.client.get(self.session_marker(key))

        def fill(pipe: Any) -> None:
            pipe.delete(self.session_marker(key))
            if token is not None:
                pipe.delete(self.session_record(token.decode()))
            pipe.evalsha(self._release.sha, 1, self.name_key(key), owner)

        execute_pipeline(self.client, fill, (RELEASE,))

    def find_sessions(self, tokens: list[str]) -> list[Optional[tuple[str, ...]]]:
        """(name, room, the id its stint in the room started at, the epochs
        of its earlier rooms) of each token's session, None for one unknown
        or expired; one round trip."""
        if not tokens:
            return []
        pipe = self.client.pipeline(transaction=False)
        for token in tokens:
            pipe.get(self.session_record(token))
        found: list[Optional[tuple[str, ...]]] = []
        for value in pipe.execute():
            parts = value.decode().split(" ") if value is not None else []
            found.append(tuple(parts) if len(parts) == 4 else None)
        return found

    def take_sessions(self, takes: list[tuple[str, str, str]], node: str) -> list[bool]:
        """Resumes on node take their sessions' names over (TAKE), each of
        takes (token, name key, name); whether each did.  One round trip
        per step, whatever their number."""
        if not takes:
            return []

        def fill(pipe: Any) -> None:
            for token, key, name in takes:
                marker = self.session_marker(key)
                pipe.evalsha(self._take.sha, 2, self.name_key(key), marker, token, f"{node} {name}")

        taken = [bool(ok) for ok in execute_pipeline(self.client, fill, (TAKE,))]
        pipe = self.client.pipeline(transaction=False)
        for (token, key, _), ok in zip(takes, taken):
            if ok:
                pipe.sadd(self.node_names(node), key)
                pipe.persist(self.session_record(token))
        if len(pipe):
            pipe.execute()
        return taken

    def holder(self, key: str) -> Optional[str]:
        """The node that has the name, or None."""
        found = self.holder_and_name(key)
        return found[0] if found is not None else None

    def holder_and_name(self, key: str) -> Optional[tuple[str, str]]:
        """(node, how it spells the name) of the name, or None."""
        value = self.client.get(self.name_key(key))
        if value is None:
            return None
        node, _, name = value.decode().partition(" ")
        return node, name

    # Liveness -----------------------------------------------------------

    def beat(self, node: str, ttl_ms: int) -> None:
        """node is alive for ttl_ms more, and listed (again, after Redis
        lost its data) among the cluster's nodes."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.heartbeat(node), "1", px=ttl_ms)
        pipe.sadd(self.nodes_key(), node)
        pipe.execute()

    def alive(self, nodes: list[str]) -> dict[str, bool]:
        """{node: whether its heartbeat is there}, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for node in nodes:
            pipe.exists(self.heartbeat(node))
        return {node: bool(found) for node, found in zip(nodes, pipe.execute())}

    def free_lost(self, node: str, marker_ttl_s: int, keep_ms: int = 0) -> Optional[list[str]]:
        """node is lost: free its names (a session's is kept keep_ms, its
        resume window).  None if another survivor has done it (or is doing
        it) already; else the name keys freed, the ones node still held."""
        if not self.client.set(self.lost_marker(node), "1", nx=True, ex=marker_ttl_s):
            return None
        keys = sorted(k.decode() for k in self.client.smembers(self.node_names(node)))
        freed = self.let_go(keys, node, keep_ms)
        self.client.delete(self.node_names(node))
        self.client.delete(self.directory_key(node))
        return freed

    # Bans and mutes (operators.py) ---------------------------------------

    def restrict(self, kind: str, key: str, until: Optional[float]) -> None:
        self.client.hset(self.restrictions_key(kind), key, "-" if until is None else repr(until))

    def lift(self, kind: str, key: str) -> None:
        self.client.hdel(self.restrictions_key(kind), key)

    def restrictions(self, now: float) -> dict[str, dict[str, Optional[float]]]:
        """{"bans": {name key: until}, "mutes": {...}}, the ended ones
        dropped (from Redis too)."""
        pipe = self.client.pipeline(transaction=False)
        for kind in RESTRICTION_KINDS:
            pipe.hgetall(self.restrictions_key(kind))
        out: dict[str, dict[str, Optional[float]]] = {}
        for kind, table in zip(RESTRICTION_KINDS, pipe.execute()):
            current: dict[str, Optional[float]] = {}
            ended = []
            for raw_key, raw in table.items():
                key, value = raw_key.decode(), raw.decode()
                until = None if value == "-" else float(value)
                if until is not None and until <= now:
                    ended.append(key)
                else:
                    current[key] = until
            if ended:
                self.client.hdel(self.restrictions_key(kind), *ended)
            out[kind] = current
        return out

    # The room directory -------------------------------------------------

    def publish_directory(self, node: str, counts: dict[str, int]) -> None:
        """node's rooms as they are now: {room name: members on node}; a
        room at 0 leaves the directory."""
        key = self.directory_key(node)
        gone = [room for room, count in counts.items() if count <= 0]
        here = {room: count for room, count in counts.items() if count > 0}
        pipe = self.client.pipeline(transaction=False)
        if gone:
            pipe.hdel(key, *gone)
        if here:
            pipe.hset(key, mapping=here)
        pipe.execute()

    def directory(self, nodes: list[str]) -> dict[str, int]:
        """{room name: members} over the given (live) nodes."""
        pipe = self.client.pipeline(transaction=False)
        for node in nodes:
            pipe.hgetall(self.directory_key(node))
        total: dict[str, int] = {}
        for rooms in pipe.execute():
            for room, count in rooms.items():
                name = room.decode()
                total[name] = total.get(name, 0) + int(count)
        return total
