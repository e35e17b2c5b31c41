"""gchat --workers N: a supervisor and N worker processes sharing one port
(SO_REUSEPORT), restarts, signals, failures at start.  Real processes of
the gchat console script and a real redis-server (the redis_server
fixture).

The tests named *_bus_* need the cluster bus (gchat/bus): clients on
different workers meet only through it.  The others test the supervisor's
mechanics, which hold whatever the workers do with --redis."""

import re
import signal
import subprocess
import time
import urllib.request

import psutil
import pytest
from chat_client import ChatClient, GchatProcess, gchat_executable, named_client

from gchat_bench.processes import free_port

DEADLINE = 15.0


@pytest.fixture
def start_workers(redis_server):
    """start_workers(count, *args): `gchat --workers count --redis URL
    *args` on a free port, waited for until its "listening on" line.  At
    the end it is stopped, and any worker it ever had that still runs is
    killed, whatever the test did."""
    started = []

    def start(count=2, *args):
        server = GchatProcess("--workers", str(count), "--redis", redis_server.url, *args)
        server.supervisor = psutil.Process(server.proc.pid)
        server.seen = {}  # pid -> psutil.Process of every worker seen
        started.append(server)
        workers(server)
        return server

    yield start
    for server in started:
        workers(server)  # whoever runs now is seen, to be checked below
        server.stop()
        # Captured: pytest shows it only when the test fails.
        print(f"--- log of the supervisor and its workers ---\n{server.stderr_text()}")
        for proc in server.seen.values():
            if alive(proc):
                proc.kill()


def alive(proc: psutil.Process) -> bool:
    """Running, and not a zombie waiting to be reaped."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def workers(server) -> dict:
    """{pid: psutil.Process} of the supervisor's live workers now."""
    try:
        children = server.supervisor.children()
    except psutil.NoSuchProcess:
        return {}
    live = {proc.pid: proc for proc in children if alive(proc)}
    server.seen.update(live)
    return live


def wait_until(predicate, what, timeout=DEADLINE):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)  # polling processes we cannot wait on, to a deadline


def worker_of(server, client) -> int:
    """The pid of the worker that accepted client (it has read a line from
    it, so the connection is the worker's, not in the kernel's queue)."""
    local = client.sock.getsockname()[:2]
    for pid, proc in workers(server).items():
        for conn in proc.net_connections(kind="tcp"):
            if conn.raddr and tuple(conn.raddr) == tuple(local) and conn.laddr[1] == server.port:
                return pid
    raise AssertionError(f"no worker holds the connection from {local}")


def greeted(server, count) -> list:
    """count clients, each of which got the name question."""
    clients = [ChatClient(server.host, server.port) for _ in range(count)]
    for client in clients:
        client.expect(r".*name\?")
    return clients


def clients_on_every_worker(server, make, limit=40) -> dict:
    """{worker pid: client}: clients made by make(i) until every worker
    has one (the kernel hashes connections, so a few are enough)."""
    by_worker = {}
    spare = []
    count = len(workers(server))
    for i in range(limit):
        client = make(i)
        pid = worker_of(server, client)
        if pid in by_worker:
            spare.append(client)
        else:
            by_worker[pid] = client
        if len(by_worker) == count:
            break
    for client in spare:
        client.close()
    assert len(by_worker) == count, f"{limit} connections landed on {len(by_worker)} workers"
    return by_worker


def started_pids(text: str) -> list:
    return [int(pid) for pid in re.findall(r"worker \d+ \(pid (\d+)\) started", text)]


# Refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["--workers", "2"], r"--workers needs --redis"),
        (
            ["--workers", "-1", "--redis", "redis://127.0.0.1:1/0"],
            r"--workers must not be negative",
        ),
    ],
)
def test_bad_workers_options_are_refused(args, complaint):
    result = subprocess.run(
        [gchat_executable(), "--port", "0", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert re.search(complaint, result.stderr), result.stderr


def test_a_port_in_use_is_a_clear_error(gchat):
    """The supervisor binds the port before starting any worker."""
    result = subprocess.run(
        [
            gchat_executable(),
            "--host",
            "127.0.0.1",
            "--port",
            str(gchat.port),
            "--workers",
            "2",
            "--redis",
            "redis://127.0.0.1:1/0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{gchat.port}: Address already in use" in result.stderr
    assert "started" not in result.stderr


# The supervisor's mechanics ---------------------------------------------------


def test_workers_share_one_port_and_serve_every_connection(start_workers):
    server = start_workers(2, "--http", "0")
    lines = server.stderr_lines
    main = [i for i, line in enumerate(lines) if re.search(r"gchat \S+ listening on", line)]
    assert len(main) == 1, server.stderr_text()
    assert f"listening on 127.0.0.1:{server.port} (2 workers)" in lines[main[0]]
    # Each worker served the same ports before the supervisor said so.
    serving = [
        i
        for i, line in enumerate(lines)
        if re.search(rf"gchat\.worker\d: gchat \S+ serving on 127\.0\.0\.1:{server.port}$", line)
    ]
    assert len(serving) == 2 and max(serving) < main[0], server.stderr_text()
    assert (
        server.http_port
        and sum(f"http serving on 127.0.0.1:{server.http_port}" in line for line in lines) == 2
    )
    pids = set(workers(server))
    assert len(pids) == 2

    clients = greeted(server, 40)
    by_worker = {}
    for client in clients:
        by_worker.setdefault(worker_of(server, client), []).append(client)
    assert set(by_worker) == pids, "the kernel should spread 40 connections over both workers"
    for client in clients:
        client.close()
    for _ in range(4):  # the shared HTTP port answers, whichever worker takes it
        url = f"http://127.0.0.1:{server.http_port}/healthz"
        with urllib.request.urlopen(url, timeout=DEADLINE) as response:
            assert response.status == 200


def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(start_workers):
    server = start_workers(2)
    before = workers(server)
    victim = min(before)
    survivor = next(pid for pid in before if pid != victim)
    psutil.Process(victim).kill()
    server.wait_for_log(
        rf"worker \d \(pid {victim}\) died: killed by signal 9 \(SIGKILL\); "
        r"restarting in 0\.1 s",
        timeout=DEADLINE,
    )
    server.wait_for_log(r"worker \d \(pid \d+\) serving again", timeout=DEADLINE)
    after = workers(server)
    assert len(after) == 2 and victim not in after and survivor in after
    assert server.proc.poll() is None
    # New clients are served, by the new worker too.
    clients = greeted(server, 20)
    assert {worker_of(server, client) for client in clients} == set(after)
    for client in clients:
        client.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_every_worker_gracefully(start_workers, signum):
    server = start_workers(2)
    pids = workers(server)
    clients = greeted(server, 10)
    assert {worker_of(server, client) for client in clients} == set(pids)
    server.signal(signum)
    for client in clients:
        assert "Server shutting down. Goodbye." in client.closed_after(DEADLINE)
    assert server.wait(DEADLINE) == 0
    for proc in pids.values():
        assert not alive(proc), f"worker {proc.pid} outlived its supervisor"
    text = server.stderr_text()
    assert f"{signal.Signals(signum).name}: stopping 2 workers" in text
    assert len(re.findall(r"worker \d \(pid \d+\) stopped: exit code 0", text)) == 2, text


def test_workers_stop_when_the_supervisor_is_killed(start_workers):
    """No orphan keeps the port: each worker's link to the supervisor
    reads end-of-file, and the worker stops as on SIGTERM."""
    server = start_workers(2)
    pids = workers(server)
    client = greeted(server, 1)[0]
    server.supervisor.kill()
    server.proc.wait(DEADLINE)
    assert "Server shutting down. Goodbye." in client.closed_after(DEADLINE)
    wait_until(
        lambda: not any(alive(proc) for proc in pids.values()),
        "the workers stop after their supervisor's death",
    )
    assert "the supervisor is gone; stopping" in server.stderr_text()


def test_workers_in_a_config_file_do_not_recurse(start_workers, tmp_path, redis_server):
    """`workers = 2` in --config's file: the workers' own `--workers 0`
    wins over the file, so there are two workers and no grandchildren."""
    path = tmp_path / "gchat.toml"
    path.write_text(f'workers = 2\nredis = "{redis_server.url}"\n')
    server = GchatProcess("--config", str(path))
    try:
        server.supervisor = psutil.Process(server.proc.pid)
        server.seen = {}
        live = workers(server)
        assert len(live) == 2
        assert not any(proc.children() for proc in live.values())
    finally:
        server.stop()
        for proc in server.seen.values():
            if alive(proc):
                proc.kill()


def test_a_worker_failing_at_start_stops_the_supervisor(redis_server, tmp_path):
    """A worker that exits before serving (here: a TLS certificate that is
    not there) is not restarted in a loop: the supervisor stops the
    others and exits with its status, its error line shown."""
    missing = str(tmp_path / "missing.pem")
    started = time.monotonic()
    result = subprocess.run(
        [
            gchat_executable(),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--workers",
            "2",
            "--redis",
            redis_server.url,
            "--tls-cert",
            missing,
            "--tls-key",
            missing,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 20
    assert re.search(r"gchat\.worker\d: cannot start: .*No such file", result.stderr)
    assert re.search(
        r"worker \d \(pid \d+\) exited before it was ready \(exit code 1\); "
        "stopping",
        result.stderr,
    )
    assert "listening on" not in result.stderr
    pids = started_pids(result.stderr)
    assert len(pids) == 2
    assert not any(psutil.pid_exists(pid) and alive(psutil.Process(pid)) for pid in pids)


# With the cluster bus -----------------------------------------------------------


def test_bus_unreachable_redis_stops_the_supervisor():
    """--redis where nothing listens: every worker fails at start (the bus
    refuses to serve without Redis), and so does the supervisor."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [
            gchat_executable(),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--workers",
            "2",
            "--redis",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "cannot start" in result.stderr and url.split("/0")[0].split("//")[1] in result.stderr
    assert "exited before it was ready" in result.stderr
    assert "listening on" not in result.stderr


def test_bus_clients_on_different_workers_see_each_other(start_workers):
    server = start_workers(2)
    by_worker = clients_on_every_worker(
        server, lambda i: named_client(server.host, server.port, f"u{i}")
    )
    (pid_a, a), (pid_b, b) = sorted(by_worker.items())
    name_a = re.search(r"You are (\S+)", a.raw.decode()).group(1)
    name_b = re.search(r"You are (\S+)", b.raw.decode()).group(1)
    a.say("hello from a")
    b.expect(rf"{name_a}: hello from a", skip=True)
    b.say("hello from b")
    a.expect(rf"{name_b}: hello from b", skip=True)


def test_bus_a_dead_workers_clients_leave_and_come_back(start_workers):
    """kill -9 of a worker: the others see its clients leave (the bus
    declares its node lost), the supervisor restarts it, and a client that
    reconnects is seen arriving."""
    server = start_workers(2, "--node-timeout", "1")
    by_worker = clients_on_every_worker(
        server, lambda i: named_client(server.host, server.port, f"u{i}")
    )
    (victim, lost), (_, watcher) = sorted(by_worker.items())
    name = re.search(r"You are (\S+)", lost.raw.decode()).group(1)
    psutil.Process(victim).kill()
    lost.closed_after(DEADLINE)
    watcher.expect(rf"{name} has left.*", skip=True, timeout=DEADLINE)
    server.wait_for_log(r"worker \d \(pid \d+\) serving again", timeout=DEADLINE)
    back = named_client(server.host, server.port, name)
    watcher.expect(rf"{name} has arrived", skip=True, timeout=DEADLINE)
    back.close()


def test_bus_a_restarted_worker_frees_its_predecessors_names_at_once(start_workers):
    """The worker that replaces a dead one declares it lost as it starts:
    its clients, reconnecting, find their names free long before the dead
    node's heartbeat (--node-timeout 60 here) would have expired."""
    server = start_workers(2, "--node-timeout", "60")
    by_worker = clients_on_every_worker(
        server, lambda i: named_client(server.host, server.port, f"v{i}")
    )
    (victim, lost), (_, watcher) = sorted(by_worker.items())
    name = re.search(r"You are (\S+)", lost.raw.decode()).group(1)
    started = time.monotonic()
    psutil.Process(victim).kill()
    lost.closed_after(DEADLINE)
    watcher.expect(rf"{name} has left \(server lost\)", skip=True, timeout=DEADLINE)
    back = named_client(server.host, server.port, name)
    watcher.expect(rf"{name} has arrived", skip=True, timeout=DEADLINE)
    assert time.monotonic() - started < 30
    back.close()
