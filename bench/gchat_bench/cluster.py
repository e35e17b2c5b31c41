"""The pure parts of loading a cluster of gchat nodes: where each client
connects, and what it is owed.

A cluster is several gchat processes on one Redis (``gchat --redis URL``),
each on its own port, all serving the same rooms: a line a client sends on
node A reaches every member of its room on every node.  The generator
deals its clients over the nodes, each room's members over every node by
default or, with --local-rooms, each room whole on one node (node_of); the
accounting does not change, because what a client is owed depends on its
room, never on its node.  The process
side (spawning redis-server and the nodes, their CPU) is in servers.py.
"""

from __future__ import annotations

from gchat_bench.servers import BenchError, check_loopback


def parse_targets(s: str) -> list:
    """``HOST:PORT[,HOST:PORT...]`` -> [(host, port), ...]; loopback only."""
    out = []
    for part in s.split(","):
        part = part.strip()
        host, _, port = part.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BenchError("--target wants HOST:PORT[,HOST:PORT...], got %r" % s)
        check_loopback(host)
        out.append((host, int(port)))
    if len(set(out)) != len(out):
        raise BenchError("--target names a node twice: %r" % s)
    return out


def parse_pids(s: str, n: int) -> list:
    """--server-pid ``PID[,PID...]``: one per target, in the same order."""
    try:
        pids = [int(x) for x in s.split(",")]
    except ValueError:
        raise BenchError("--server-pid wants PID[,PID...], got %r" % s) from None
    if len(pids) != n:
        raise BenchError(
            "--server-pid: %d pids for %d targets (one per target, "
            "in the same order)" % (len(pids), n)
        )
    return pids


def node_of(idx: int, nodes: int, rooms: int = 0, local: bool = False) -> int:
    """The node client idx connects to.

    Without rooms this is idx % nodes.  With --rooms K client idx is in
    room idx % K and is that room's (idx // K)-th member.  By default
    ("spread") the members of each room are dealt round-robin over the
    nodes.  Plain idx % nodes would not do: when K and the node count share
    a factor (1000 rooms on 4 nodes) every member of a room would land on
    the same node and no line would ever have to cross from one node to
    another.

    local=True (--local-rooms) keeps each room together instead: every
    member of room r connects to node r % nodes, the placement of a deployment that routes
    users by room, where a room's lines need reach no other node.  It
    needs rooms (without them there is no room to keep together).
    """
    if local and not rooms:
        raise ValueError("local placement needs rooms")
    if nodes <= 1:
        return 0
    if local:
        return (idx % rooms) % nodes
    return (idx // rooms if rooms else idx) % nodes


def spread(clients: int, nodes: int, rooms: int = 0, local: bool = False) -> list:
    """How many of clients 0..clients-1 each node gets (node_of)."""
    out = [0] * max(nodes, 1)
    for i in range(clients):
        out[node_of(i, nodes, rooms, local)] += 1
    return out


def room_members(receivers_by_room: list) -> dict:
    """Sum per-worker ``{room: readers}`` counts (JSON keys are strings)."""
    members: dict = {}
    for by_room in receivers_by_room:
        for room, n in by_room.items():
            members[int(room)] = members.get(int(room), 0) + n
    return members


def expected_deliveries(sent_by: dict, receivers: int, rooms: int = 0, members: dict = None) -> int:
    """Deliveries owed for a phase: sent_by is {sender id: lines sent}.

    Without rooms every line is owed to every reader still connected, on
    every node; with rooms a line of sender s is owed to every connected
    member of room s % rooms, wherever each member is connected.  The node
    a sender or a reader is on does not enter: a cluster that delivers a
    line only on the node it was sent on loses the rest.  Nor does the
    placement (spread or --local-rooms): it moves members between nodes,
    not between rooms.
    """
    if not rooms:
        return sum(sent_by.values()) * receivers
    members = members or {}
    return sum(n * members.get(int(sid) % rooms, 0) for sid, n in sent_by.items())


def part_cpu(before: dict, after: dict, wall: float) -> dict:
    """CPU of each part of a cluster over a window, flattened for the JSON.

    before/after: ``Cluster.cpu_by_part()`` at the window's edges,
    ``{part: {pid: CPU seconds}}`` (a part with an unknown pid has {}).
    Per part: ``PART_cpu_s`` and ``PART_cpu_pct`` (of one core); a process
    that appeared in between (a worker its supervisor restarted) counts
    from 0, one that died in between is missing its last moments.  Also
    ``nodes_cpu_s`` (every part but redis), ``server_cpu_s`` (all parts;
    None if any is unknown: a partial sum would flatter the server) and
    ``server_cpu_max_process_pct``, the busiest single process (each is one
    thread of Python, so this says whether one of them was the limit).
    """
    w = max(wall, 1e-6)
    out: dict = {}
    total: float = 0.0
    nodes: float = 0.0
    known = nodes_known = True
    busiest = None
    for part, pids in after.items():
        if not pids:
            out[part + "_cpu_s"] = out[part + "_cpu_pct"] = None
            known = False
            nodes_known = nodes_known and part == "redis"
            continue
        b = before.get(part) or {}
        deltas = [cpu - b.get(pid, 0.0) for pid, cpu in pids.items()]
        s = sum(deltas)
        out[part + "_cpu_s"] = s
        out[part + "_cpu_pct"] = 100.0 * s / w
        total += s
        if part != "redis":
            nodes += s
        top = 100.0 * max(deltas) / w
        busiest = top if busiest is None else max(busiest, top)
    out["nodes_cpu_s"] = nodes if nodes_known else None
    out["server_cpu_s"] = total if known else None
    out["server_cpu_max_process_pct"] = busiest
    return out
