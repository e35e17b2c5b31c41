"""The cluster bus: nodes joined by Redis (only with --redis).

entry.py   what an entry on the bus means: encode, decode, validate,
           deduplicate (pure: no Redis, no gevent, no clock)
redis_bus.py  the Redis calls: publish, read, claim names, heartbeats,
           and recovery when Redis comes back empty (the I/O)

The hub still owns all the chat's state; cluster.py's ClusterChat applies
the entries the bus reads, in the stream's order, on every node.
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
    """Reach the cluster's Redis before serving: (bus, histories), where
    histories is {room name: [history lines]}.  Raises RuntimeError with
    one line saying what is wrong."""
    # redis-py talks through the socket module (and ssl for rediss://):
    # patched before redis-py is imported, its calls wait cooperatively
    # instead of stopping the loop.
    from gevent import monkey

    monkey.patch_socket()
    if config.redis.startswith("rediss:"):
        monkey.patch_ssl()
    try:
        import redis  # noqa: F401  (the extra's first part)
    except ImportError:
        raise RuntimeError(EXTRA_MISSING) from None
    from gchat.bus.redis_bus import BusError, RedisBus

    try:
        bus = RedisBus(config)
        histories = bus.connect()
    except (BusError, ValueError) as err:
        raise RuntimeError(f"Redis at {redacted(config.redis)}: {err}") from None
    return bus, histories
