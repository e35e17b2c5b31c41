"""The writer's hot path: a batch of script calls sent straight over
connections of redis-py's own, without its pipeline machinery.

Measured here (bench/RESULTS.md, issue 17): one EVALSHA of the publish
script through `client.pipeline().execute()` costs the node about 160 us
of CPU, most of it redis-py's per-execute bookkeeping (a connection from
the pool and back under locks, observability hooks, every argument through
its Python encoder).  The same call packed by hiredis and sent over a
connection the writer keeps costs about 60 us, close to a bare PING's round
trip on this machine.  A node pays it for every batch it publishes, so it
is most of what a line costs a node beyond its own clients.

Nothing here parses Redis replies or speaks the protocol itself: the
connections, the packing (hiredis.pack_command) and the reply parser are
redis-py's and hiredis's.  This only skips the pipeline object.

The path is taken only when nothing is unusual.  A reply that is an error
(a script the server lacks, MOVED or ASK while slots move, CLUSTERDOWN
during a failover) or a broken connection makes `run` return None, and the
caller sends the whole batch again through the pipeline, which knows how to
follow redirections, load scripts and refresh a Redis Cluster's slot map.
Sending a batch twice is safe only because every call in it is: the room
logs' chains make what went in the first time a copy (room_stream.py).
"""

from typing import Any, Callable, Optional

_pack_hiredis: Optional[Callable[..., bytes]]
try:
    from hiredis import pack_command as _pack_hiredis
except ImportError:  # the cluster extra brings hiredis; redis-py packs without it
    _pack_hiredis = None


class DirectCalls:
    """Calls sent over connections kept per Redis server (one Redis, or
    each master of a Redis Cluster), for a client of either kind.  Several
    greenlets may run batches at once: each takes a connection of its own
    from the free list, and a connection that saw anything unusual is
    closed instead of kept."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.sharded = hasattr(client, "nodes_manager")  # a RedisCluster
        self._free: dict[str, list[Any]] = {}  # server -> idle connections
        self.stats = {"direct": 0, "fallbacks": 0}

    def run(self, calls: list[tuple]) -> Optional[list]:
        """The replies to calls (each a command's arguments, its first key
        at index 3, as EVALSHA sha numkeys key...), in their order; None if
        the batch must go through the pipeline instead."""
        groups = self._group(calls)
        if groups is None:
            self.stats["fallbacks"] += 1
            return None
        taken: list[tuple[str, Any, list[int]]] = []
        try:
            for server, (pool, indexes) in groups.items():
                connection = self._take(server, pool)
                taken.append((server, connection, indexes))
                connection.send_packed_command(
                    [_pack(connection, calls[i]) for i in indexes], check_health=False
                )
            replies: list[Any] = [None] * len(calls)
            for _, connection, indexes in taken:
                for i in indexes:
                    replies[i] = connection.read_response()
        except Exception:  # noqa: BLE001 - any surprise: the pipeline decides
            for _, connection, _ in taken:
                connection.disconnect()
            self.stats["fallbacks"] += 1
            return None
        for server, connection, _ in taken:
            self._free.setdefault(server, []).append(connection)
        self.stats["direct"] += 1
        return replies

    def close(self) -> None:
        for connections in self._free.values():
            for connection in connections:
                connection.disconnect()
        self._free.clear()

    def _group(self, calls: list[tuple]) -> Optional[dict[str, tuple[Any, list[int]]]]:
        """Calls by the server that holds their first key: {server: (its
        connection pool, the calls' indexes)}; None if a slot's master is
        not known."""
        if not self.sharded:
            return {"": (self.client.connection_pool, list(range(len(calls))))}
        groups: dict[str, tuple[Any, list[int]]] = {}
        try:
            for i, call in enumerate(calls):
                node = self.client.get_node_from_key(call[3])
                if node is None or node.redis_connection is None:
                    return None
                group = groups.get(node.name)
                if group is None:
                    group = groups[node.name] = (node.redis_connection.connection_pool, [])
                group[1].append(i)
        except Exception:  # noqa: BLE001 - a slot not covered, a map being refreshed
            return None
        return groups

    def _take(self, server: str, pool: Any) -> Any:
        free = self._free.get(server)
        if free:
            return free.pop()
        connection = pool.make_connection()
        connection.connect()
        return connection


def _pack(connection: Any, call: tuple) -> bytes:
    if _pack_hiredis is not None:
        return _pack_hiredis(call)
    return b"".join(connection.pack_command(*call))
