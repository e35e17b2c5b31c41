import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from chat_client import GchatProcess  # noqa: E402

from gchat_bench.processes import RedisServer  # noqa: E402


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
    for server in started:
        server.stop()


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
