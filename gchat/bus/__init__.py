"""The cluster bus: nodes joined by Redis (only with --redis), routed by
interest: a node reads the logs of the rooms it hosts, and no other.

entry.py        what a room entry's operations mean (pure)
room_log.py     the rules of one room's order: positions, chains (pure)
room_stream.py  one room's log in Redis: the publish script, reads, snapshots
room_publisher.py  one node's writes, in order per room, republished on refusal
room_feed.py    one node's subscriptions, gaps and resets filled from streams
control.py      names, heartbeats, the nodes' list and directories, the epoch
pipelines.py    script pipelines that survive a master without the scripts
direct_calls.py the writer's hot path: a batch sent without the pipeline object
room_bus.py     the greenlets that join them to the hub (the I/O)

The hub still owns all the chat's state; cluster.py's ClusterChat applies
each hosted room's entries in the room's order.
"""

from urllib.parse import urlsplit, urlunsplit

EXTRA_MISSING = (
    "--redis needs the cluster extra, which is not installed: pip install 'gchat[cluster]'"
)


def redacted(url: str) -> str:
    """url without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


def open_bus(config):
    """Reach the cluster's Redis before serving: the bus.  Raises
    RuntimeError with one line saying what is wrong."""
    # redis-py talks through the socket module (and ssl for rediss://):
    # patched before redis-py is imported, its calls wait cooperatively
    # instead of stopping the loop.  Its cluster client also refreshes its
    # slot map and moves sharded subscriptions on threads of its own, with
    # queues between them: patched, they are greenlets on the loop (with
    # sockets alone, those threads touch the loop's sockets and fail).
    # select is not patched: redis-py asks a socket whether it can be read
    # with a poll() of timeout 0, which the plain one answers at the cost of
    # one system call; the bus waits for its subscriptions itself
    # (room_bus.RoomBus._wait_for_messages), never in redis-py.
    from gevent import monkey

    monkey.patch_socket()
    monkey.patch_thread()
    monkey.patch_queue()
    if config.redis.startswith("rediss:"):
        monkey.patch_ssl()
    try:
        import redis  # noqa: F401  (the extra's first part)
    except ImportError:
        raise RuntimeError(EXTRA_MISSING) from None
    from gchat.bus.room_bus import BusError, RoomBus

    try:
        bus = RoomBus(config)
        bus.connect()
    except (BusError, ValueError) as err:
        raise RuntimeError(f"Redis at {redacted(config.redis)}: {err}") from None
    return bus
