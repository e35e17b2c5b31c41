import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from chat_client import GchatProcess  # noqa: E402

from gchat_bench.processes import RedisCluster, RedisServer  # noqa: E402


@pytest.fixture
def start_gchat():
    """start_gchat(*args) runs the gchat console script on a free port;
    every server started is stopped after the test."""
    started = []

    def start(*args, **kw):
        server = GchatProcess(*args, **kw)
        started.append(server)
        return server

    yield start
    for index, server in enumerate(started):
        server.stop()
        # Captured: pytest shows it only when the test fails.
        print(f"--- log of gchat #{index} ---\n{server.stderr_text()}")


@pytest.fixture
def gchat(start_gchat):
    """A gchat server with the default options (name mode)."""
    return start_gchat()


@pytest.fixture
def compat(start_gchat):
    """A gchat server in --compat mode."""
    return start_gchat("--compat")


@pytest.fixture
def redis_server():
    """A redis-server of its own on a free port (gchat_bench.processes.RedisServer:
    .url, .kill(), .start() again on the same port), stopped after the
    test.  A missing redis-server is an error, not a skip: the cluster's
    tests must run."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


# A cluster's waits in the tests: a few seconds each on a quiet machine
# (node timeout 1 s); a hang fails within this, with the nodes' logs.
CLUSTER_TEST_TIMEOUT = 30.0


@pytest.fixture
def redis_cluster():
    """A Redis Cluster of its own: 3 masters, no replica, node timeout 1 s,
    on free ports (gchat_bench.processes.RedisCluster: .url, .masters(),
    .master_for_key(), .kill(), .reshard(), ...), stopped and its files
    removed after the test.  A test that needs replicas starts its own
    RedisCluster(3, 1)."""
    with RedisCluster(masters=3, replicas=0, timeout=CLUSTER_TEST_TIMEOUT) as cluster:
        yield cluster
