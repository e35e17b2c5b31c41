"""Drive a cluster of ClusterChats without Redis and without gevent.

The bus is simulated in memory, as bus/redis_bus.py uses Redis:

- `stream` is the one stream: a list of entries as Redis returns their
  fields (bytes keys and values, entry.encode converted by as_redis);
  every node reads it in order from its own cursor, decodes each entry
  with entry.decode and drops copies with its own entry.Deduper, as the
  real reader does;
- `names` is KEY:names (name key -> node id) and `node_names` the per-node
  sets KEY:node:ID:names; a claim is the CLAIM script (HSETNX, and also
  success when the same node holds the key already), a release is the
  RELEASE script (deleted only when held by that node);
- `histories` is KEY:rooms and KEY:history:*: the kept lines of each room,
  pushed when an entry is published and trimmed to the configured history;
  a node started later reads them (load_histories) and reads the stream
  from its end, as RedisBus.connect's snapshot does;
- a node starts by publishing ["hello"] as its entry 1 (RedisBus.start);
- a lost node's departure is the entry ["lost", NODE, REASON] under node
  id "~NODE" and sequence number 1 (RedisBus._declare_lost, RedisBus.close).

Each node's "hub batch" is step(): take() its operations and requests,
append the operations as its next entry, sent(seq), then answer its claims
(in the order requested) and carry out its releases.  deliver() applies to
each node the entries it has not read yet and flushes every node's output
(end_batch, flush), collecting the bytes each connection is sent.  run()
repeats both until nothing moves.
"""

from dataclasses import replace

from gchat import protocol as p
from gchat.bus.entry import BadEntry, Deduper, decode, encode
from gchat.cluster import ClusterChat
from gchat.config import Config
from gchat.events import Why
from gchat.protocol import NODE_LOST, NODE_STOPPED

LOST_PREFIX = "~"  # as bus/redis_bus.py (not imported: it needs redis and gevent)
STOPPED_SEQ = 1 << 40  # as bus/redis_bus.py


def as_redis(fields: dict) -> dict:
    """entry.encode's fields as redis-py returns them from XREAD: bytes
    keys and bytes values (an int is sent as its decimal digits)."""
    out = {}
    for key, value in fields.items():
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, str):
            data = value.encode("utf-8")
        else:
            data = str(value).encode("ascii")
        out[key.encode("ascii")] = data
    return out


class Conn:
    """A client of one node: what the chat needs (who, name, room)."""

    def __init__(self, who, node):
        self.who = who
        self.node = node
        self.name = None
        self.room = None

    def __repr__(self):
        return f"Conn({self.who}@{self.node})"


class Node:
    def __init__(self, cluster, node_id, config, cursor):
        self.id = node_id
        self.chat = ClusterChat(config, node_id, clock=lambda: cluster.now)
        self.seq = 0  # the bus's per-node sequence number
        self.cursor = cursor  # next index of the stream to read
        self.dedupe = Deduper()
        self.reading = True  # False: its reader is held back
        self.running = True  # False: stalled altogether (SIGSTOP)
        self.conns = []
        self.held_names = set()  # the bus's own list of the names it holds (RedisBus.names)
        self.bad_entries = 0
        self.duplicates = 0

    def __repr__(self):
        return f"<Node {self.id}>"


class Cluster:
    def __init__(self, nodes=("A", "B"), **config):
        self.config = Config(**config)
        self.now = 100.0
        self.stream = []
        self.names = {}
        self.node_names = {}
        self.histories = {}  # room key -> [room name, [encoded lines]]
        self.nodes = {}  # node id -> Node, the live ones
        self.dead = set()
        self.losses = {}  # node id -> its count of losses (KEY:losses:ID)
        self.received = {}  # conn -> bytes delivered to it
        self.departed = []  # (conn, why) the hubs were asked to close
        self._ports = 1000
        for node_id in nodes:
            self.start(node_id)
        self.run()

    # ------------------------------------------------------------------
    # Nodes

    def start(self, node_id, **config):
        """A node starts: it reads the histories and the stream's end (the
        snapshot), then publishes "hello".  config: this node's own Config
        fields (default: the cluster's)."""
        assert node_id not in self.nodes and not node_id.startswith(LOST_PREFIX)
        cfg = replace(self.config, **config) if config else self.config
        node = Node(self, node_id, cfg, cursor=len(self.stream))
        self.nodes[node_id] = node
        self.node_names.setdefault(node_id, set())
        node.chat.load_histories({name: list(lines) for name, lines in self.histories.values()})
        self._publish(node, [["hello"]])
        return node

    def chat(self, node_id) -> ClusterChat:
        return self.nodes[node_id].chat

    def kill(self, node_id, reason=NODE_LOST):
        """node_id dies: whatever it held unpublished is gone, its names are
        freed and a survivor publishes its departure (the LOST script)."""
        node = self.nodes.pop(node_id)
        self.dead.add(node_id)
        for conn in node.conns:
            self.received.pop(conn, None)
        self.declare_lost(node_id, reason)
        return node

    def stop(self, node_id):
        """node_id stops cleanly (RedisBus.close): its clients are told and
        let go, what it holds is published, then "lost" with "server
        stopped", and its names are freed."""
        node = self.nodes[node_id]
        node.chat.shutdown()
        self._flush(node)
        self._step(node)
        del self.nodes[node_id]
        self.dead.add(node_id)
        self.publish_lost(node_id, NODE_STOPPED)
        self._free_names(node_id)
        return node

    def declare_lost(self, node_id, reason=NODE_LOST):
        """What a survivor's LOST script does when node_id's heartbeat key
        is gone (node_id may be only stalled): free its names and publish
        its departure."""
        self._free_names(node_id)
        self.publish_lost(node_id, reason)

    def publish_lost(self, node_id, reason=NODE_LOST):
        """Numbered as the LOST script numbers it: the node's count of
        losses (a clean stop: STOPPED_SEQ, above any count)."""
        if reason == NODE_STOPPED:
            seq = STOPPED_SEQ
        else:
            seq = self.losses[node_id] = self.losses.get(node_id, 0) + 1
        self.append(encode(LOST_PREFIX + node_id, seq, [["lost", node_id, reason]]))

    def _free_names(self, node_id):
        for key in self.node_names.pop(node_id, set()):
            if self.names.get(key) == node_id:
                del self.names[key]

    def hold(self, node_id):
        """Hold back node_id's reader (it still publishes)."""
        self.nodes[node_id].reading = False

    def stall(self, node_id):
        """node_id does nothing at all (SIGSTOP): neither reads nor publishes."""
        node = self.nodes[node_id]
        node.reading = node.running = False

    def resume(self, node_id):
        node = self.nodes[node_id]
        node.reading = node.running = True

    # ------------------------------------------------------------------
    # The stream

    def append(self, fields: dict):
        """One entry into the stream (entry.encode's fields, or any raw
        fields: they are converted as Redis would)."""
        self.stream.append(as_redis(fields))

    def entries(self):
        """The stream, decoded (bad entries skipped)."""
        out = []
        for fields in self.stream:
            try:
                out.append(decode(fields, self.config.bus_max_entry))
            except BadEntry:
                pass
        return out

    def replay(self, start=0, stop=None, node=None):
        """Append copies of stream entries [start:stop] (only node's, if
        given): a retried publish, or a republish after Redis restarted."""
        copies = []
        for fields in self.stream[start:stop]:
            if node is None or fields[b"n"] == node.encode():
                copies.append(dict(fields))
        self.stream.extend(copies)
        return len(copies)

    def redis_restart(self):
        """Redis comes back without the cluster's data: a new, empty stream,
        names and histories; every live node claims its names again,
        publishes again what it published (its whole window here), reads the
        new stream from its start and says again who is here (resync)."""
        old, self.stream = self.stream, []
        self.names, self.histories = {}, {}
        self.node_names = {node_id: set() for node_id in self.nodes}
        for node in self.nodes.values():
            for key in sorted(node.held_names):
                self._claim(node.id, key)
            for fields in old:
                if fields[b"n"] == node.id.encode():
                    self.stream.append(dict(fields))
            node.cursor = 0
        for node in self.nodes.values():
            node.chat.resync(1)  # its whole window is published again

    def _publish(self, node, ops):
        node.seq += 1
        self.append(encode(node.id, node.seq, ops))
        history = self.config.history
        if history:
            for op in ops:
                if op[0] == "say" and op[3]:
                    key = p.name_key(op[1])
                    kept = self.histories.setdefault(key, [op[1], []])
                    kept[0] = op[1]
                    kept[1].append((op[2] + "\n").encode())
                    del kept[1][:-history]
        return node.seq

    # ------------------------------------------------------------------
    # Names (the CLAIM and RELEASE scripts)

    def _claim(self, node_id, key) -> bool:
        """The CLAIM script: HSETNX, or success if node_id holds key already."""
        holder = self.names.setdefault(key, node_id)
        if holder != node_id:
            return False
        self.node_names.setdefault(node_id, set()).add(key)
        if node_id in self.nodes:
            self.nodes[node_id].held_names.add(key)
        return True

    def _release(self, node_id, key):
        if self.names.get(key) == node_id:
            del self.names[key]
        self.node_names.get(node_id, set()).discard(key)
        if node_id in self.nodes:
            self.nodes[node_id].held_names.discard(key)

    # ------------------------------------------------------------------
    # Hub batches

    def _step(self, node) -> bool:
        chat = node.chat
        ops, requests = chat.take()
        if not ops and not requests:
            return False
        if ops:
            self._publish(node, ops)
        chat.sent(node.seq)  # as Hub.run: bus.submit returns the last seq
        for request in requests:
            if request[0] == "claim":
                _, conn, name = request
                ok = self._claim(node.id, p.name_key(name))
                chat.claimed(conn, name, None if ok else f"the name {name} is taken")
            elif request[0] == "release":
                self._release(node.id, request[1])
            elif request[0] == "reassert":
                for key in sorted(node.held_names):
                    self._claim(node.id, key)
            else:
                raise AssertionError(f"unknown request {request!r}")
        return True

    def step(self, *node_ids) -> bool:
        """One hub batch of each node (of node_ids only, in that order, if
        given): publish, answer claims, release names."""
        moved = False
        for node_id in node_ids or list(self.nodes):
            node = self.nodes.get(node_id)
            if node is not None and node.running:
                moved |= self._step(node)
        return moved

    def _read(self, node, limit=None) -> bool:
        stop = len(self.stream) if limit is None else min(len(self.stream), node.cursor + limit)
        if node.cursor >= stop:
            return False
        fresh = []
        for fields in self.stream[node.cursor : stop]:
            try:
                entry = decode(fields, node.chat.config.bus_max_entry)
            except BadEntry:
                node.bad_entries += 1
                continue
            if node.dedupe.fresh(entry):
                fresh.append(entry)
            else:
                node.duplicates += 1
        node.cursor = stop
        if fresh:
            node.chat.apply(fresh)
        return True

    def _flush(self, node):
        chat = node.chat

        def deliver(conn, data):
            self.received[conn] = self.received.get(conn, b"") + data

        chat.end_batch(self.now)
        chat.flush(deliver)
        departed, chat.departures = chat.departures, []
        self.departed.extend(departed)

    def deliver(self, *node_ids, limit=None) -> bool:
        """Each node (of node_ids, if given) reads what it has not read yet
        (at most limit entries), then every node flushes its output."""
        moved = False
        for node_id in node_ids or list(self.nodes):
            node = self.nodes.get(node_id)
            if node is not None and node.reading and node.running:
                moved |= self._read(node, limit)
        for node in self.nodes.values():
            if node.running:
                self._flush(node)
        return moved

    def run(self, rounds=100):
        """Batches and reads until nothing moves."""
        for _ in range(rounds):
            stepped = self.step()
            read = self.deliver()
            if not stepped and not read:
                return
        raise AssertionError("the cluster did not settle")

    # ------------------------------------------------------------------
    # Clients

    def connect(self, node_id, who=None) -> Conn:
        if who is None:
            self._ports += 1
            who = f"10.0.0.{len(self.nodes)}:{self._ports}"
        node = self.nodes[node_id]
        conn = Conn(who, node_id)
        node.conns.append(conn)
        node.chat.arrive(conn)
        return conn

    def say(self, conn, *lines):
        """conn sends lines, in one read (one LINES event)."""
        self.nodes[conn.node].chat.lines(
            conn, [line.encode() if isinstance(line, str) else line for line in lines]
        )

    def disconnect(self, conn, why=Why.EOF, detail=""):
        self.nodes[conn.node].chat.depart(conn, why, detail)

    def named(self, node_id, name) -> Conn:
        """A client of node_id named name, everything it was sent so far read."""
        conn = self.connect(node_id)
        self.say(conn, name)
        self.run()
        lines = self.take(conn)
        assert p.render_you_are(name) in lines, lines
        return conn

    def take(self, conn) -> list:
        """The lines conn received since the last take, once the cluster
        has settled."""
        self.run()
        return self.take_now(conn)

    def take_now(self, conn) -> list:
        """The lines conn received since the last take, without running the
        cluster (only its node's output so far is flushed)."""
        node = self.nodes.get(conn.node)
        if node is not None and node.running:
            self._flush(node)
        return self.received.pop(conn, b"").decode().splitlines()

    def take_all(self, *conns):
        self.run()
        return [self.take_now(conn) for conn in conns]
