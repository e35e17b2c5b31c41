"""A pipeline of script calls that survives a master without the scripts.

redis-py loads a script where a plain call finds it missing, but a
pipeline's calls, above all a Redis Cluster's (split over the masters),
fail with NoScriptError instead; a master new after a failover has none.
The calls here are all safe to make twice (the room logs' chains, a
compare-and-delete), so the pipeline is made again once the scripts are
loaded everywhere.
"""

from typing import Any, Callable

from redis.exceptions import NoScriptError


def execute(client: Any, fill: Callable[[Any], None], scripts: tuple[str, ...]) -> list:
    """fill(pipe) queues the calls; their replies, in order."""
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        fill(pipe)
        try:
            return list(pipe.execute())
        except NoScriptError:
            if attempt == 2:
                raise
            for script in scripts:
                client.script_load(script)  # every master of a cluster
    raise AssertionError("unreachable")
