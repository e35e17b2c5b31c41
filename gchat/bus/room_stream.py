"""One room's log in Redis: the I/O of the bus routed by interest (issue
17), groundwork: the server does not use it yet.  What positions mean is
room_log.py's (pure); this module is the Redis side of it.

Every key of a room shares one hash tag, {CLUSTER:r:ROOM}, so that they sit
in one slot, on one master of a Redis Cluster (or on the one Redis), and a
script may touch them all at once:

    {C:r:ROOM}:o   the offset: how many entries the room's log has had
    {C:r:ROOM}:e   the epoch: a random word set by the first publish; a Redis
                   that lost the room's keys starts a new one
    {C:r:ROOM}:s   the stream: entry 0-OFFSET holds n (node), s (seq), o (ops)
    {C:r:ROOM}:n   the chains: node id -> the last seq of its entries here
    {C:r:ROOM}:h   the history: the room's last lines, for whoever comes
    {C:r:ROOM}:c   the sharded pub/sub channel (SPUBLISH/SSUBSCRIBE)
    {C:r:ROOM}:m   the members: name key -> "NODE NAME" (see MEMBER_CHANGES)
    {C:r:ROOM}:t   the room's name as its first host spelt it

A publish is one script (centrifuge's broker does the same: offset, stream,
publish in one step): check the node's chain, bump the offset, append to
the stream (MAXLEN ~), push history lines, and SPUBLISH the entry with its
epoch and offset to the nodes that host the room.  The chain check is what
survives a failover: Redis Cluster replicates asynchronously, so the new
master may lack the last entries that the old one acknowledged; the script
then refuses the node's next entry and says where its chain ends, and the
node publishes again what the room lacks (room_log.RoomWriter.after).
"""

from typing import Any, NamedTuple, Optional

from gchat.bus.direct_calls import DirectCalls
from gchat.bus.pipelines import execute as execute_pipeline
from gchat.bus.room_log import RoomEntry

# KEYS: offset, epoch, stream, chains, history, members.  ARGV: node, seq,
# ops (JSON), stream max length, channel, a new epoch (used if the room has
# none), history max length, force ("1": accept a seq past the chain's
# next, when the node no longer has what lies between), how many history
# again (when the entry was first published, if this publishes it again
# after Redis lost it; "0" if not), how many history lines follow, the
# history lines, then the entry's changes to the room's members (see
# MEMBER_CHANGES).
# Returns {1, offset} when published, {0, last} for a copy the room has
# (seq <= last), {-1, last} when the room lacks the node's entries after
# last.
PUBLISH = """
local last = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
local seq = tonumber(ARGV[2])
if seq <= last then return {0, last} end
if seq > last + 1 and ARGV[8] ~= '1' then return {-1, last} end
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', KEYS[2], epoch)
end
local offset = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[4], ARGV[1], seq)
local seqtext = ARGV[2]
if ARGV[9] ~= '0' then seqtext = ARGV[2] .. '@' .. ARGV[9] end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '0-' .. offset,
           'n', ARGV[1], 's', seqtext, 'o', ARGV[3])
local lines = tonumber(ARGV[10])
if lines > 0 then
  for i = 11, 10 + lines do redis.call('RPUSH', KEYS[5], ARGV[i]) end
  redis.call('LTRIM', KEYS[5], -tonumber(ARGV[7]), -1)
end
local mine = ARGV[1] .. ' '
for i = 11 + lines, #ARGV do
  local change = ARGV[i]
  local kind = string.sub(change, 1, 1)
  if kind == '+' then
    local space = string.find(change, ' ', 2, true)
    local key, name = string.sub(change, 2, space - 1), string.sub(change, space + 1)
    redis.call('HSET', KEYS[6], key, mine .. name)
  elseif kind == '-' then
    local key = string.sub(change, 2)
    local holder = redis.call('HGET', KEYS[6], key)
    if holder and string.sub(holder, 1, #mine) == mine then redis.call('HDEL', KEYS[6], key) end
  else
    local whose = mine
    if kind == '!' then whose = string.sub(change, 2) .. ' ' end
    local all = redis.call('HGETALL', KEYS[6])
    for j = 1, #all, 2 do
      if string.sub(all[j + 1], 1, #whose) == whose then redis.call('HDEL', KEYS[6], all[j]) end
    end
  end
end
redis.call('SPUBLISH', ARGV[5], epoch .. ' ' .. offset .. ' ' .. ARGV[1] .. ' ' .. seqtext
           .. ' ' .. ARGV[3])
return {1, offset}
"""
# How an entry changes a room's members (the hash {C:r:ROOM}:m, name key ->
# "NODE NAME"), so that a node that starts to host the room reads who is in
# it with its position, in one step:
#   "+KEY NAME"  the publishing node's member NAME is in the room
#   "-KEY"       it is not (only if the publishing node holds it)
#   "="          none of the publishing node's members are (before a list)
#   "!NODE"      none of NODE's members are (NODE is lost)
MEMBER_CHANGES = "+-=!"
# KEYS: epoch, stream.  ARGV: the first offset wanted.  Returns the epoch
# (false if none) and the stream's entries from that offset on, in one
# atomic step, so that the entries belong to that epoch.
READ = """
return {redis.call('GET', KEYS[1]), redis.call('XRANGE', KEYS[2], '0-' .. ARGV[1], '+')}
"""
# KEYS: epoch, offset, history, members, chains, name.  ARGV: the room's
# name as this node spells it.  What a node that starts to host the room
# needs before it subscribes, as of one position: the epoch and offset, the
# history, the members, every node's chain (what counts as applied) and the
# room's name as its first host spelt it (set here if it has none).
SNAPSHOT = """
redis.call('SET', KEYS[6], ARGV[1], 'NX')
return {redis.call('GET', KEYS[1]), tonumber(redis.call('GET', KEYS[2]) or '0'),
        redis.call('LRANGE', KEYS[3], 0, -1), redis.call('HGETALL', KEYS[4]),
        redis.call('HGETALL', KEYS[5]), redis.call('GET', KEYS[6])}
"""


class Snapshot(NamedTuple):
    """A room as of one position of its log (RoomStream.snapshot)."""

    epoch: Optional[str]
    offset: int
    history: list[bytes]
    members: list[tuple[str, str]]  # (node, name), in no order
    chains: dict[str, int]  # node -> the last seq of its entries in the room
    name: str
    sessions: frozenset = frozenset()  # name keys of the members with a session


class RoomKeys(NamedTuple):
    offset: str
    epoch: str
    stream: str
    chains: str
    history: str
    channel: str
    members: str
    name: str


def room_keys(cluster: str, room_key: str) -> RoomKeys:
    """The keys of one room (room_key: protocol.name_key of its name)."""
    tag = "{%s:r:%s}" % (cluster, room_key)
    return RoomKeys(*(f"{tag}:{suffix}" for suffix in ("o", "e", "s", "n", "h", "c", "m", "t")))


class Published(NamedTuple):
    """A publish's outcome: status 1 (published at value, its offset), 0 (a
    copy: the room has the node's entries up to value) or -1 (the room
    lacks the node's entries after value)."""

    status: int
    value: int


def parse_message(data: bytes) -> RoomEntry:
    """A room channel's message: "EPOCH OFFSET NODE SEQ OPS"; raises
    ValueError if it is not one."""
    parts = data.split(b" ", 4)
    if len(parts) != 5:
        raise ValueError(f"{len(parts)} fields, not 5")
    epoch, offset, node, seq, ops = parts
    try:
        number, again = _seq(seq)
        return RoomEntry(epoch.decode(), int(offset), node.decode(), number, [ops], again)
    except UnicodeDecodeError as err:
        raise ValueError(str(err)) from None


def _seq(text: bytes) -> tuple[int, float]:
    """An entry's "SEQ" or "SEQ@FIRST" (published again; FIRST: when it was
    first published)."""
    number, _, again = text.partition(b"@")
    return int(number), float(again) if again else 0.0


def _entry(epoch: str, entry_id: bytes, fields: dict) -> RoomEntry:
    offset = int(entry_id.split(b"-", 1)[1])
    try:
        number, again = _seq(fields[b"s"])
        return RoomEntry(epoch, offset, fields[b"n"].decode(), number, [fields[b"o"]], again)
    except (KeyError, ValueError):
        # Not the script's (another program wrote to the stream): an entry
        # that the reader finds malformed when it decodes the operations.
        return RoomEntry(epoch, offset, "?", 0, [b""])


class RoomStream:
    """The room logs of one cluster, over a redis-py client: redis.Redis or
    redis.cluster.RedisCluster alike (each call touches one slot)."""

    def __init__(self, client: Any, cluster: str, stream_max: int, history: int) -> None:
        self.client = client
        self.cluster = cluster
        self.stream_max = stream_max
        self.history = history
        self._publish = client.register_script(PUBLISH)
        self._read = client.register_script(READ)
        self._snapshot = client.register_script(SNAPSHOT)
        self.direct = DirectCalls(client)  # publish_batch's hot path

    def keys(self, room_key: str) -> RoomKeys:
        return room_keys(self.cluster, room_key)

    def publish(
        self,
        room_key: str,
        node: str,
        seq: int,
        ops: str,
        new_epoch: str,
        history: tuple = (),
        force: bool = False,
        members: tuple = (),
        again: float = 0.0,
    ) -> Published:
        """One entry of node's into the room (ops: its JSON); history: the
        lines it adds to the room's history; members: its MEMBER_CHANGES."""
        k = self.keys(room_key)
        status, value = self._publish(
            keys=[k.offset, k.epoch, k.stream, k.chains, k.history, k.members],
            args=self._args(node, seq, ops, k.channel, new_epoch, history, force, members, again),
        )
        return Published(int(status), int(value))

    def publish_batch(self, items: list) -> list[Published]:
        """Several entries in one round trip per master (a node's hub batch,
        over the rooms it touched): items of publish()'s arguments, as
        (room_key, node, seq, ops, new_epoch, history, force[, members[, again]])
        tuples.  The outcomes come in their order."""

        sha = self._publish.sha
        calls = []
        for item in items:
            room_key, node, seq, ops, new_epoch, history, force, *rest = item
            members = rest[0] if rest else ()
            again = rest[1] if len(rest) > 1 else 0.0
            k = self.keys(room_key)
            calls.append(
                (
                    "EVALSHA",
                    sha,
                    6,
                    k.offset,
                    k.epoch,
                    k.stream,
                    k.chains,
                    k.history,
                    k.members,
                    *self._args(
                        node, seq, ops, k.channel, new_epoch, history, force, members, again
                    ),
                )
            )
        replies = self.direct.run(calls)
        if replies is None:
            # Something unusual (a script missing, slots moving, Redis away):
            # the pipeline follows it, or raises what Redis's absence
            # raises.  EVALSHA itself, not the Script object: a pipeline
            # holding Script calls asks SCRIPT EXISTS before every execute;
            # a missing script is loaded by pipelines.execute instead.
            # Safe to publish twice: the chains make what went in the
            # first time a copy.
            def fill(pipe: Any) -> None:
                for call in calls:
                    pipe.execute_command(*call)

            replies = execute_pipeline(self.client, fill, (PUBLISH,))
        return [Published(int(status), int(value)) for status, value in replies]

    def _args(
        self,
        node: str,
        seq: int,
        ops: str,
        channel: str,
        new_epoch: str,
        history: tuple,
        force: bool,
        members: tuple = (),
        again: float = 0.0,
    ) -> list:
        lines = history if self.history else ()
        return [
            node,
            seq,
            ops,
            self.stream_max,
            channel,
            new_epoch,
            max(1, self.history),
            "1" if force else "0",
            repr(again) if again else "0",
            len(lines),
            *lines,
            *members,
        ]

    def read(self, room_key: str, first: int) -> tuple[Optional[str], list[RoomEntry]]:
        """The room's epoch, and its stream's entries from offset first on."""
        k = self.keys(room_key)
        epoch, items = self._read(keys=[k.epoch, k.stream], args=[max(1, first)])
        if epoch is None:
            return None, []
        text = epoch.decode()
        return text, [_entry(text, entry_id, fields_of(raw)) for entry_id, raw in items]

    def snapshot(self, room_key: str, name: str = "") -> Snapshot:
        """The room as of one position of its log (name: how this node
        spells it, kept if the room has no name yet)."""
        k = self.keys(room_key)
        epoch, offset, lines, members, chains, spelt = self._snapshot(
            keys=[k.epoch, k.offset, k.history, k.members, k.chains, k.name],
            args=[name or room_key],
        )
        pairs = []
        sessions = set()
        for key, value in pairs_of(members).items():
            node, _, member = value.decode().partition(" ")
            member, _, flag = member.partition(" ")  # "NAME *": it has a session
            pairs.append((node, member))
            if flag:
                sessions.add(key.decode())
        return Snapshot(
            epoch.decode() if epoch is not None else None,
            int(offset),
            list(lines),
            pairs,
            {node.decode(): int(seq) for node, seq in pairs_of(chains).items()},
            spelt.decode() if spelt is not None else (name or room_key),
            frozenset(sessions),
        )


def pairs_of(raw: Any) -> dict:
    """A hash as HGETALL returns it inside a script: a flat list."""
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2]))


def fields_of(raw: Any) -> dict:
    """A stream entry's fields as XRANGE returns them inside a script: a
    flat list [field, value, ...] (outside one, redis-py makes a dict)."""
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2]))
