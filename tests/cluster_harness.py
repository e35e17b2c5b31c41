"""Drive a cluster of ClusterChats without Redis and without gevent.

The bus routed by interest (bus/room_bus.py and the modules it joins) is
simulated in memory, as it uses Redis:

- `logs`: room key -> Log, what the keys {C:r:ROOM}:* hold
  (room_stream.py), for rooms and for inboxes ("~NODE") alike: the epoch
  (set by the first publish), the offset, the stream's entries (offset,
  node, seq, and the operations as the JSON that entry.dumps made), each
  node's chain (its last seq there), the history (pushed by each entry,
  trimmed to the publishing node's --history), the members hash (name key
  -> "NODE NAME", changed by each entry's member changes exactly as the
  PUBLISH script does: "+KEY NAME", "-KEY", "=", "!NODE") and the room's
  name as its first host spelt it (set by SNAPSHOT).
- Publishing (RoomBus.submit, RoomPublisher, the PUBLISH script): a node
  numbers its entries per room from 1 (the chat's batches, the inbox
  messages it routes and the "lost" entries its bus writes share one chain
  per room) and keeps them all: the replay window never ends here.  An
  entry is published at once; one at or below the node's chain in the room
  is a copy and is not appended, and a room whose chain for the node ends
  short (after failover() or redis_restart()) is given the node's kept
  entries after that point first, as the publisher does on a refusal.
- Names (control.py): `names`, name key -> node id, one key each.  A claim
  succeeds if the key is free or the node's already; a release deletes it
  only if the node holds it.  Each node's bus also keeps the keys it holds
  (RoomBus.names), which it claims again on "reassert" and after
  redis_restart().
- Hosting (RoomFeed): a node reads its inbox from the start and a room from
  the moment its feed serves the chat's "host" request: the SNAPSHOT then,
  handed to the chat as HOSTED, and a room_log.RoomReader at the snapshot's
  offset, with the snapshot's chains as applied.  "drop" removes the
  reader.  The feed serves its requests at the start of the node's
  deliver(), before it reads, as RoomBus._feed_loop does.
- Reading (RoomFeed, RoomBus._deliver and _hand_over): deliver() hands the
  chat the new entries of the logs it reads, decoded with entry.decode (a
  BadEntry is counted and skipped), as BUS events, one per room per turn,
  the rooms in the order of their first new entry; the entries come in the
  order in which Redis ran their scripts (one Redis).  An entry whose
  (node, seq) was applied already is skipped.  A log whose epoch changed,
  or whose entry at the reader's offset is not the one applied there, is
  read again from its start (RoomReader.reset), as the feed does.
- The other requests (the claimer): "claim" is answered CLAIMED, "msg"
  looks up the node that holds the target's name and publishes ["msg",
  FROM, TO, TEXT] into that node's inbox, answering ROUTED; "release",
  "reassert" and "directory" act on the names and the directory.  They are
  answered in step(), in the order asked.
- Directories (the heart): each node's {room name: its members}, written
  and summed over the live nodes by beat(), which hands each node the sum
  as DIRECTORY; run() beats once the cluster has settled.
- Lost nodes (RoomBus._declare_lost): each survivor's chat is told
  NODE_LOST; the first survivor frees the lost node's names and directory
  (the lost marker, set once) and publishes ["lost", NODE, REASON] with the
  member change "!NODE" into every room of the lost node's directory.

One node's hub batch is step(): take() its entries and requests, publish
the entries, sent() their seqs, then answer the requests.  deliver() lets
each node's feed serve its requests and read, then flushes every node's
output (end_batch, flush), collecting the bytes each connection is sent.
run() repeats both until nothing moves.
"""

from collections import deque
from dataclasses import replace
from typing import NamedTuple, Optional

from gchat import protocol as p
from gchat.bus.entry import BadEntry, decode, dumps
from gchat.bus.room_log import RoomEntry, RoomReader
from gchat.bus.room_stream import Snapshot
from gchat.cluster import INBOX, ClusterChat, inbox_key
from gchat.config import Config
from gchat.events import (
    BUS,
    CLAIMED,
    DIRECTORY,
    HOSTED,
    KICK_ROUTED,
    NODE_LOST,
    RESYNC,
    ROUTED,
    SESSION_FOUND,
    Why,
)
from gchat.sessions import resume_from


class Entry(NamedTuple):
    """One entry of a room's log: the stream's fields, and what else the
    PUBLISH script was given (history lines, member changes, the history's
    bound), so that failover() can rebuild the room without its last
    entries."""

    offset: int
    node: str
    seq: int
    ops: str  # entry.dumps's JSON
    history: tuple
    members: tuple
    keep: int  # the publishing node's --history
    stamp: int  # when Redis ran the script: the order of every room's channel


class Kept(NamedTuple):
    """One entry a node's publisher keeps, to publish again."""

    seq: int
    ops: str
    history: tuple
    members: tuple


def change_members(members: dict, node: str, changes) -> None:
    """An entry's member changes, applied as the PUBLISH script does."""
    mine = node + " "
    for change in changes:
        kind = change[:1]
        if kind == "+":
            key, _, name = change[1:].partition(" ")
            members[key] = mine + name
        elif kind == "-":
            if members.get(change[1:], "").startswith(mine):
                del members[change[1:]]
        else:
            whose = change[1:] + " " if kind == "!" else mine
            for key in [key for key, value in members.items() if value.startswith(whose)]:
                del members[key]


class Log:
    """One room's keys in Redis (room_stream.RoomKeys)."""

    def __init__(self, epoch=None, name=None):
        self.epoch = epoch
        self.offset = 0
        self.entries = []  # Entry, offset order: entries[i].offset == i + 1
        self.chains = {}  # node -> its last seq here
        self.history = []  # bytes lines, "\n" included
        self.members = {}  # name key -> "NODE NAME"
        self.name = name

    def append(self, entry: Entry) -> None:
        """What the PUBLISH script does past its chain check."""
        self.offset = entry.offset
        self.chains[entry.node] = entry.seq
        self.entries.append(entry)
        if entry.keep and entry.history:
            self.history.extend(entry.history)
            del self.history[: -entry.keep]
        change_members(self.members, entry.node, entry.members)

    def at(self, offset: int) -> Optional[Entry]:
        return self.entries[offset - 1] if 0 < offset <= len(self.entries) else None


class Conn:
    """A client of one node: what the chat needs (who, name, room).  Its
    hash is its number, not its address, so that the sets of clients the
    chat keeps iterate in the same order on every run."""

    _count = 0

    def __init__(self, who, node):
        self.who = who
        self.node = node
        self.name = None
        self.room = None
        Conn._count += 1
        self._hash = Conn._count

    def __hash__(self):
        return self._hash

    def __repr__(self):
        return f"Conn({self.who}@{self.node})"


class Node:
    """One gchat process: its ClusterChat and what its RoomBus keeps."""

    def __init__(self, cluster, node_id, config):
        self.id = node_id
        self.chat = ClusterChat(config, node_id, clock=lambda: cluster.now)
        self.kept = {}  # room key -> [Kept], seq order (kept[i].seq == i + 1)
        self.readers = {}  # room key -> RoomReader: the logs its feed reads
        self.feed_requests = deque()  # ("host", key, name) | ("drop", key, "")
        self.names = set()  # name keys it holds (RoomBus.names)
        self.directory_here = {}  # room name -> its members (RoomBus.directory_here)
        self.directory_changed = {}
        self.reading = True  # False: its feed is held back (it still publishes)
        self.running = True  # False: stalled altogether (SIGSTOP)
        self.conns = []
        self.delivered = []  # (room key, node, seq, ops) handed to the chat, in order
        self.snapshots = []  # (room key, Snapshot) handed to the chat, in order
        self.asked = []  # ("host" | "drop", room key): the chat's requests to the feed, in order
        self.bad_entries = 0
        self.duplicates = 0  # entries skipped as applied already (by node and seq)
        self.resets = 0  # logs read again from their start
        self.republished = 0  # entries published again (a room's chain ended short)

    def __repr__(self):
        return f"<Node {self.id}>"


class Cluster:
    def __init__(self, nodes=("A", "B"), **config):
        self.config = Config(**config)
        self.now = 100.0
        self.logs = {}  # room key -> Log
        self.names = {}  # name key -> node id
        self.spellings = {}  # name key -> its spelling when claimed (Control.claim)
        self.sessions = {}  # token -> (name, room): the session records (Control)
        self.session_names = {}  # name key -> token: names a session keeps
        self.directories = {}  # node id -> {room name: members}
        self.lost_marks = set()  # {C:ctl}:lost:ID
        self.nodes = {}  # node id -> Node, the live ones
        self.dead = set()
        self.received = {}  # conn -> bytes delivered to it
        self.departed = []  # (conn, why) the hubs were asked to close
        self._ports = 1000
        self._stamp = 0
        self._epochs = 0
        for node_id in nodes:
            self.start(node_id)
        self.run()

    # ------------------------------------------------------------------
    # Nodes

    def start(self, node_id, **config):
        """A node starts (RoomBus.connect): it reads its inbox from now on.
        config: this node's own Config fields (default: the cluster's)."""
        assert node_id not in self.nodes and node_id not in self.dead
        cfg = replace(self.config, **config) if config else self.config
        node = self.nodes[node_id] = Node(self, node_id, cfg)
        snapshot = self._snapshot(inbox_key(node_id), "")
        node.readers[inbox_key(node_id)] = self._reader(snapshot)
        return node

    def chat(self, node_id) -> ClusterChat:
        return self.nodes[node_id].chat

    def kill(self, node_id, declare=True):
        """node_id dies: what it had not published is gone; if declare, the
        survivors find it lost (declare_lost)."""
        node = self.nodes.pop(node_id)
        self.dead.add(node_id)
        for conn in node.conns:
            self.received.pop(conn, None)
        if declare:
            self.declare_lost(node_id)
        return node

    def stop(self, node_id):
        """node_id stops cleanly: its clients are told and let go, their
        departures are published (the hub's last batch, then RoomBus.close),
        its names are released and it leaves the nodes' list."""
        node = self.nodes[node_id]
        node.chat.shutdown()
        self._flush(node)
        self._step(node)
        for key in sorted(node.names):
            if key not in self.session_names:  # kept for its window (Control.let_go)
                self._release(node, key)
        del self.nodes[node_id]
        self.dead.add(node_id)
        self.directories.pop(node_id, None)
        return node

    def declare_lost(self, node_id, reason=p.NODE_LOST, by=None):
        """What the survivors' hearts do when node_id's heartbeat is gone
        (node_id may only be stalled).  by: the survivors that notice, the
        first of them first (default: every other running node)."""
        ids = by if by is not None else list(self.nodes)
        survivors = [self.nodes[i] for i in ids if i != node_id and self.nodes[i].running]
        rooms = list(self.directories.get(node_id, {}))  # read before it is freed
        winner = None
        if survivors and node_id not in self.lost_marks:
            self.lost_marks.add(node_id)
            winner = survivors[0]
            for key in [key for key, holder in self.names.items() if holder == node_id]:
                if key in self.session_names:
                    continue  # kept for its window (Control.let_go)
                del self.names[key]
                self.spellings.pop(key, None)
            self.directories.pop(node_id, None)
        for survivor in survivors:
            survivor.chat.on_bus(NODE_LOST, None, (node_id, reason))
        if winner is not None:
            for room in rooms:
                ops = dumps([["lost", node_id, reason]])
                self._submit(winner, p.name_key(room), ops, members=("!" + node_id,))

    def hold(self, node_id):
        """Hold back node_id's feed (it still publishes and claims)."""
        self.nodes[node_id].reading = False

    def stall(self, node_id):
        """node_id does nothing at all (SIGSTOP)."""
        node = self.nodes[node_id]
        node.reading = node.running = False

    def resume(self, node_id):
        node = self.nodes[node_id]
        node.reading = node.running = True

    # ------------------------------------------------------------------
    # Redis

    def _log(self, room_key) -> Log:
        log = self.logs.get(room_key)
        if log is None:
            log = self.logs[room_key] = Log()
        return log

    def _submit(self, node, room_key, ops, history=(), members=()) -> int:
        """One entry of node's into room_key (RoomPublisher.submit, then
        its flush); its seq."""
        kept = node.kept.setdefault(room_key, [])
        seq = len(kept) + 1
        kept.append(Kept(seq, ops, tuple(history), tuple(members)))
        self._publish_kept(node, room_key)
        return seq

    def _publish_kept(self, node, room_key) -> None:
        """node's kept entries of room_key that the room lacks, in order:
        the PUBLISH script takes the one after the node's chain, and a
        refusal makes the publisher send again what follows the chain."""
        log = self._log(room_key)
        kept = node.kept.get(room_key, [])
        last = log.chains.get(node.id, 0)
        node.republished += max(0, len(kept) - last - 1)
        for item in kept[last:]:
            self._script(log, node.id, item, node.chat.config.history)

    def _script(self, log, node_id, item, keep) -> None:
        if log.epoch is None:
            self._epochs += 1
            log.epoch = f"e{self._epochs}"
        self._stamp += 1
        log.append(
            Entry(
                log.offset + 1,
                node_id,
                item.seq,
                item.ops,
                item.history,
                item.members,
                keep,
                self._stamp,
            )
        )

    def append(self, room, ops, node="X", seq=None):
        """An entry of some other program (or of a bug) in room's log: ops
        as the raw JSON text to decode."""
        log = self._log(self._key(room))
        seq = seq if seq is not None else log.chains.get(node, 0) + 1
        self._script(log, node, Kept(seq, ops, (), ()), 0)

    def _snapshot(self, room_key, name) -> Snapshot:
        """The SNAPSHOT script."""
        log = self._log(room_key)
        if log.name is None:
            log.name = name or room_key
        members = [tuple(value.split(" ", 1)) for value in log.members.values()]
        return Snapshot(
            log.epoch, log.offset, list(log.history), members, dict(log.chains), log.name
        )

    @staticmethod
    def _reader(snapshot) -> RoomReader:
        """RoomFeed.host's reader: from the snapshot's position, what it
        holds counted as applied."""
        reader = RoomReader(snapshot.epoch, snapshot.offset)
        reader.applied.update(snapshot.chains)
        return reader

    def _claim(self, node, key) -> bool:
        holder = self.names.setdefault(key, node.id)
        if holder != node.id:
            return False
        node.names.add(key)
        return True

    def _release(self, node, key) -> None:
        node.names.discard(key)
        if self.names.get(key) == node.id:
            del self.names[key]
            self.spellings.pop(key, None)

    def failover(self, room, lose=1):
        """room's master fails over to a replica that lacks its last `lose`
        entries: the log, its chains, history and members, as they were
        before them (same epoch).  Nodes find out when they next publish
        there (their chain is short) or read there (the offsets were handed
        out again)."""
        key = self._key(room)
        old = self.logs[key]
        new = self.logs[key] = Log(old.epoch, old.name)
        for entry in old.entries[: len(old.entries) - lose]:
            new.append(entry)

    def redis_restart(self):
        """Redis comes back without the cluster's data.  Each live node's
        heart finds the epoch changed (RoomBus._beat, _data_lost): it
        writes its whole directory, claims its names again, publishes again
        every entry it keeps, and tells its chat RESYNC.  Its feed finds
        each log's new epoch and reads it from its start."""
        self.logs, self.names, self.directories, self.lost_marks = {}, {}, {}, set()
        for node in self.nodes.values():
            self.directories[node.id] = {
                room: count for room, count in node.directory_here.items() if count > 0
            }
            node.directory_changed = {}
            for key in sorted(node.names):
                self._claim(node, key)
            for room_key in node.kept:
                self._publish_kept(node, room_key)
            node.chat.on_bus(RESYNC, None, None)

    # ------------------------------------------------------------------
    # Hub batches

    def _step(self, node) -> bool:
        chat = node.chat
        batches, requests = chat.take()
        if not batches and not requests:
            return False
        seqs = {}
        for room_key, batch in batches.items():
            seqs[room_key] = self._submit(
                node, room_key, dumps(batch.ops), batch.history, batch.members
            )
        chat.sent(seqs)
        for request in requests:
            self._request(node, request)
        return True

    def _request(self, node, request) -> None:
        chat = node.chat
        kind = request[0]
        if kind == "claim":
            _, conn, name = request
            ok = self._claim(node, p.name_key(name))
            if ok and self.spellings.get(p.name_key(name)) is None:
                self.spellings[p.name_key(name)] = name  # Control.claim's "NODE NAME"
            chat.on_bus(CLAIMED, conn, (name, None if ok else p.render_name_taken(name)))
        elif kind == "release":
            self._release(node, request[1])
        elif kind == "reassert":
            self._rejoin(node)
        elif kind == "msg":
            _, conn, sender, target, text = request
            holder = self.names.get(p.name_key(target))
            if holder is not None:
                target = self.spellings.get(p.name_key(target)) or target
                self._submit(node, inbox_key(holder), dumps([["msg", sender, target, text]]))
            chat.on_bus(ROUTED, conn, (target, holder is not None, text))
        elif kind == "host" or kind == "drop":
            node.asked.append((kind, request[1]))
            node.feed_requests.append((kind, request[1], request[2] if kind == "host" else ""))
        elif kind == "session":
            _, token, name, room, start, earlier = request
            for key, held in list(self.session_names.items()):
                if held == token:
                    del self.session_names[key]
            self.sessions[token] = (name, room, start, earlier)
            self.session_names[p.name_key(name)] = token
        elif kind == "kick":
            _, name, by, reason, answer = request
            holder = self.names.get(p.name_key(name))
            if holder is not None:
                spelt = self.spellings.get(p.name_key(name)) or name
                self._submit(node, inbox_key(holder), dumps([["kick", spelt, by, reason]]))
                if callable(answer):
                    answer((200, {"name": spelt, "disconnected": True}))
            elif callable(answer):
                answer((404, {"error": p.render_no_such_user(name)}))
            elif answer is not None:
                chat.on_bus(KICK_ROUTED, answer, (name, False))
        elif kind == "restrict":
            pass  # the model keeps no bans: each node's own table stands
        elif kind == "room-info":
            _, room_key, name, answer = request
            snapshot = self._snapshot(room_key, name)
            members = sorted(member for _, member in snapshot.members)
            history = [line.decode().rstrip("\n") for line in snapshot.history]
            answer((200, {"room": f"#{snapshot.name}", "members": members, "history": history}))
        elif kind == "session-gone":
            _, key, owner = request
            token = self.session_names.pop(key, None)
            self.sessions.pop(token, None)
            if self.names.get(key) == owner:
                del self.names[key]
                self.spellings.pop(key, None)
        elif kind == "session-keep":
            pass  # the model keeps no expiries
        elif kind == "session-end":
            _, token, key = request
            self.sessions.pop(token, None)
            self.session_names.pop(key, None)
        elif kind == "resume":
            _, conn, token, last = request
            found = self.sessions.get(token)
            if found is not None and self.session_names.get(p.name_key(found[0])) != token:
                found = None  # ended: its marker is gone (Control.TAKE)
            if found is not None:
                name, room, start, earlier = found
                try:
                    found = (name, room, resume_from(last, start, earlier.split(",")))
                    self.names[p.name_key(name)] = node.id  # Control.take_sessions
                except ValueError:
                    found = p.render_bad_resume_id(last)
            chat.on_bus(SESSION_FOUND, conn, (token, found))
        elif kind == "directory":
            node.directory_here.update(request[1])
            node.directory_changed.update(request[1])
        else:
            raise AssertionError(f"unknown request {request!r}")

    def step(self, *node_ids) -> bool:
        """One hub batch of each running node (of node_ids only, in that
        order, if given)."""
        moved = False
        for node_id in node_ids or list(self.nodes):
            node = self.nodes.get(node_id)
            if node is not None and node.running:
                moved |= self._step(node)
        return moved

    def _serve_feed(self, node) -> bool:
        """The feed's requests, in order (RoomBus._serve_feed_requests)."""
        served = bool(node.feed_requests)
        while node.feed_requests:
            kind, room_key, name = node.feed_requests.popleft()
            if kind == "host":
                snapshot = self._snapshot(room_key, name)
                node.readers[room_key] = self._reader(snapshot)
                node.snapshots.append((room_key, snapshot))
                node.chat.on_bus(HOSTED, None, (room_key, snapshot))
            else:
                node.readers.pop(room_key, None)
        return served

    def _read(self, node, limit=None, rooms=None) -> bool:
        """One turn of node's feed: the new entries of the logs it reads
        (of rooms only, if given; at most limit handed to the chat)."""
        pending = []
        for room_key, reader in node.readers.items():
            log = self.logs.get(room_key)
            if (rooms is not None and room_key not in rooms) or log is None or log.epoch is None:
                continue
            if reader.epoch is not None and (
                log.epoch != reader.epoch or not reader.continues(self._as_read(log, reader.offset))
            ):
                node.resets += 1
                reader.reset()
            pending.extend((entry.stamp, room_key, entry) for entry in log.entries[reader.offset :])
        pending.sort(key=lambda item: item[0])
        handed = {}
        count = 0
        for _, room_key, entry in pending:
            if limit is not None and count >= limit:
                break
            reader = node.readers[room_key]
            seen = self._as_read(self.logs[room_key], entry.offset)
            fresh = reader.fresh(seen)
            reader.mark(seen)
            if not fresh:
                node.duplicates += 1
                continue
            count += 1
            try:
                ops = decode(entry.ops.encode(), node.chat.config.bus_max_entry)
            except BadEntry:
                node.bad_entries += 1
                continue
            place = (self.logs[room_key].epoch, entry.offset)  # RoomBus._deliver's
            handed.setdefault(room_key, []).append((entry.node, entry.seq, ops, *place))
        for room_key, entries in handed.items():
            node.delivered.extend((room_key, *entry[:3]) for entry in entries)
            node.chat.on_bus(BUS, None, (room_key, entries))
        return bool(pending)

    @staticmethod
    def _as_read(log, offset) -> Optional[RoomEntry]:
        entry = log.at(offset)
        if entry is None:
            return None
        return RoomEntry(log.epoch, entry.offset, entry.node, entry.seq, [entry.ops])

    def _flush(self, node):
        chat = node.chat

        def deliver(conn, data):
            self.received[conn] = self.received.get(conn, b"") + data

        chat.end_batch(self.now)
        chat.flush(deliver)
        departed, chat.departures = chat.departures, []
        self.departed.extend(departed)

    def deliver(self, *node_ids, limit=None, rooms=None, hosting=True) -> bool:
        """Each node's feed (of node_ids, if given) serves its requests
        (unless not hosting) and reads what it has not read yet (at most
        limit entries, of rooms only, if given: room names or keys), then
        every running node flushes its output."""
        keys = None if rooms is None else {self._key(room) for room in rooms}
        moved = False
        for node_id in node_ids or list(self.nodes):
            node = self.nodes.get(node_id)
            if node is not None and node.reading and node.running:
                if hosting:
                    moved |= self._serve_feed(node)
                moved |= self._read(node, limit, keys)
        for node in self.nodes.values():
            if node.running:
                self._flush(node)
        return moved

    def beat(self, *node_ids):
        """A heartbeat of each running node (of node_ids, if given): each
        writes what changed in its directory, then each is handed the
        directory of the live nodes."""
        beating = [self.nodes[i] for i in node_ids or list(self.nodes) if self.nodes[i].running]
        for node in beating:
            if node.id in self.lost_marks:
                self._rejoin(node)  # it finds itself in the list of lost nodes
            changed, node.directory_changed = node.directory_changed, {}
            mine = self.directories.setdefault(node.id, {})
            for room, count in changed.items():
                if count > 0:
                    mine[room] = count
                else:
                    mine.pop(room, None)
                    node.directory_here.pop(room, None)
        total = {}
        for live in self.nodes:
            for room, count in self.directories.get(live, {}).items():
                total[room] = total.get(room, 0) + count
        for node in beating:
            node.chat.on_bus(DIRECTORY, None, dict(total))

    def _rejoin(self, node):
        """RoomBus._rejoin: the marker cleared, the names claimed again,
        the whole directory written again."""
        self.lost_marks.discard(node.id)
        for key in sorted(node.names):
            self._claim(node, key)
        node.directory_changed.update(node.directory_here)

    def run(self, rounds=200):
        """Batches and reads until nothing moves, then a heartbeat."""
        for _ in range(rounds):
            stepped = self.step()
            read = self.deliver()
            # A flush may publish too (end_batch: an away session's expiry).
            waiting = any(
                n.chat.outgoing or n.chat.requests for n in self.nodes.values() if n.running
            )
            if not stepped and not read and not waiting:
                self.beat()
                return
        raise AssertionError("the cluster did not settle")

    # ------------------------------------------------------------------
    # Looking at it

    @staticmethod
    def _key(room) -> str:
        return room if room.startswith(INBOX) else p.name_key(room)

    def entries(self, room) -> list:
        """room's log (a name or a key), decoded: (node, seq, ops) each,
        bad entries left out."""
        out = []
        log = self.logs.get(self._key(room))
        for entry in log.entries if log is not None else ():
            try:
                out.append((entry.node, entry.seq, decode(entry.ops.encode(), 1 << 20)))
            except BadEntry:
                pass
        return out

    def ops(self, room, *kinds) -> list:
        """The operations in room's log, in order (of those kinds, if given)."""
        return [op for _, _, ops in self.entries(room) for op in ops if not kinds or op[0] in kinds]

    def members(self, room) -> dict:
        """room's members hash in Redis: name key -> "NODE NAME"."""
        log = self.logs.get(self._key(room))
        return dict(log.members) if log is not None else {}

    def hosted(self, node_id) -> set:
        """The rooms node_id's feed reads (its inbox left out)."""
        return {key for key in self.nodes[node_id].readers if not key.startswith(INBOX)}

    def published(self) -> int:
        """Entries in every log."""
        return sum(len(log.entries) for log in self.logs.values())

    def rooms_read(self, node_id) -> set:
        """The rooms (keys) whose entries node_id's chat has been handed."""
        node = self.nodes[node_id]
        return {room_key for room_key, *_ in node.delivered if not room_key.startswith(INBOX)}

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
