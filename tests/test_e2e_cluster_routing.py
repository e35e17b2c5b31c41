"""The bus routed by interest, end to end: real `gchat --redis` nodes on one
Redis and on a real Redis Cluster (tests/test_e2e_cluster.py's fixture),
what a node reads measured in the kernel, and a Redis Cluster whose master
dies or whose slots move while lines flow."""

import re
import subprocess
import threading
import time

import pytest
from test_e2e_cluster import FAST, until
from test_e2e_cluster import redis_server as redis_server  # noqa: F401  (the fixture)

from gchat_bench.processes import RedisCluster


def redis_bytes(pid: int, ports: set) -> int:
    """What the kernel says the TCP connections of process pid to the given
    Redis ports received (bytes_received of `ss -tinp`): recv() included,
    which /proc/PID/io's rchar does not count."""
    out = subprocess.run(
        ["ss", "-tinpH", "state", "established"], capture_output=True, text=True, timeout=10
    ).stdout
    total = 0
    lines = out.splitlines()
    for head, info in zip(lines, lines[1:]):
        fields = head.split()
        if f"pid={pid}," not in head or len(fields) < 4:
            continue
        if int(fields[3].rsplit(":", 1)[1]) in ports:
            match = re.search(r"bytes_received:(\d+)", info)
            total += int(match.group(1)) if match else 0
    return total


def ports_of(server) -> set:
    cluster = getattr(server, "cluster", None)
    if cluster is None:
        return {server.port}
    return {n.port for n in cluster.nodes}


def test_a_node_reads_nothing_of_the_rooms_it_does_not_host(start_gchat, redis_server):
    """Issue 17's interest goal: a node whose only client sits in a quiet
    room reads at most 10% of the bytes that the cluster's other rooms
    publish while it watches; a node that hosts those rooms reads them."""
    busy = start_gchat("--redis", redis_server.url)
    host = start_gchat("--redis", redis_server.url)  # hosts every busy room too
    quiet = start_gchat("--redis", redis_server.url)
    hermit = quiet.named("hermit")
    hermit.say("/join #quiet")
    hermit.expect("You are now in #quiet", skip=True)
    rooms = [f"busy{i}" for i in range(10)]
    talkers, listeners = [], []
    for room in rooms:
        talker, listener = busy.named(f"t{room}"), host.named(f"l{room}")
        for client in (talker, listener):
            client.say(f"/join #{room}")
            client.expect(f"You are now in #{room}", skip=True)
        listener.expect(f"t{room} has arrived|Also here.*t{room}", skip=True)
        talkers.append(talker)
        listeners.append(listener)
    ports = ports_of(redis_server)
    quiet_before = redis_bytes(quiet.proc.pid, ports)
    host_before = redis_bytes(host.proc.pid, ports)
    text = "x" * 150
    for i in range(40):
        for talker in talkers:
            talker.say(f"{i} {text}")
    for room, listener in zip(rooms, listeners):
        listener.expect(f"t{room}: 39 {text}", skip=True)
    quiet_read = redis_bytes(quiet.proc.pid, ports) - quiet_before
    host_read = redis_bytes(host.proc.pid, ports) - host_before
    assert host_read >= 400 * 150, host_read  # every line of every busy room
    assert quiet_read <= 0.1 * host_read, (quiet_read, host_read)
    hermit.say("still quiet")
    hermit.expect("hermit: still quiet", skip=True)


def ordered_once(got: list, sender: str, count: int) -> bool:
    mine = [line for line in got if line.startswith(f"{sender}: ")]
    return mine == [f"{sender}: line {i}" for i in range(count)]


def talk(sender, count: int, pause: float, stop: threading.Event) -> None:
    for i in range(count):
        if stop.is_set():
            return
        sender.say(f"line {i}")
        time.sleep(pause)  # a steady pace: lines are in flight when Redis changes


def collect(client, count_per_sender: int, senders: int, timeout: float) -> list:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count_per_sender * senders and time.monotonic() < deadline:
        line = client.expect(r"s[ab]: line \d+", skip=True, timeout=deadline - time.monotonic())
        got.append(line)
    return got


def run_through(cluster: RedisCluster, room: str, event) -> None:
    """Two gchat nodes, a sender and a listener on each, in room, while
    event(cluster) happens to the Redis Cluster: every member gets every
    line once, in each sender's order, all members in one order."""
    entry = cluster.nodes[0].url
    a = _start("--redis", entry, *FAST)
    b = _start("--redis", entry, *FAST)
    try:
        sa, la = a.named("sa"), a.named("la")
        sb, lb = b.named("sb"), b.named("lb")
        for client in (sa, la, sb, lb):
            client.say(f"/join #{room}")
            client.expect(f"You are now in #{room}", skip=True)
        until(lambda: "(4)" in (la.say("/who") or la.expect(r"Here now.*", skip=True)))
        count, stop = 120, threading.Event()
        threads = [
            threading.Thread(target=talk, args=(s, count, 0.01, stop), daemon=True)
            for s in (sa, sb)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        event(cluster)
        for thread in threads:
            thread.join(timeout=60)
        seen = [collect(listener, count, 2, timeout=60) for listener in (la, lb, sa, sb)]
        for got in seen:
            assert ordered_once(got, "sa", count) and ordered_once(got, "sb", count), got
        assert all(got == seen[0] for got in seen), "members saw different orders"
        for client in (la, lb):
            assert client.quiet(0.5), "a line came twice"
    finally:
        for index, process in enumerate((a, b)):
            process.stop()
            # Captured: pytest shows it only when the test fails.
            print(f"--- log of gchat #{index} ---\n{process.stderr_text()}")


def _start(*args):
    from chat_client import GchatProcess

    return GchatProcess(*args)


def room_on_low_slots(cluster: RedisCluster, slots: int) -> tuple:
    """A room whose keys sit in one of the lowest `slots` slots of their
    master (redis-cli reshard moves those first), and that master."""
    for i in range(10_000):
        room = f"busy{i}"
        slot = cluster.keyslot("{gchat:r:%s}:o" % room)
        master = cluster.master_of_slot(slot)
        lowest = min(first for first, _ in cluster.slots_of(master))
        if master is not cluster.nodes[0] and lowest <= slot < lowest + slots:
            return room, master
    raise AssertionError("no room found on the lowest slots")


@pytest.fixture
def replicated_cluster():
    """3 masters, each with a replica (a master may die)."""
    with RedisCluster(masters=3, replicas=1, timeout=30.0) as cluster:
        yield cluster


def test_a_master_dies_while_lines_flow_and_nothing_is_lost_or_doubled(replicated_cluster):
    """kill -9 of the master that owns the busy room's slot: its replica
    takes over (perhaps without the last writes the dead master
    acknowledged), lines wait meanwhile, and every member of the room gets
    every line once, in order."""
    room = "busy"
    master = replicated_cluster.master_for_key("{gchat:r:%s}:o" % room)
    if master is replicated_cluster.nodes[0]:
        # gchat's entry point stays alive: take another room.
        room = next(
            f"busy{i}"
            for i in range(100)
            if replicated_cluster.master_for_key("{gchat:r:busy%d}:o" % i)
            is not replicated_cluster.nodes[0]
        )
        master = replicated_cluster.master_for_key("{gchat:r:%s}:o" % room)

    def kill_master(cluster):
        cluster.kill(master)
        cluster.wait_failover(master)

    run_through(replicated_cluster, room, kill_master)


def test_slots_move_while_lines_flow_and_nothing_is_lost_doubled_or_reordered(redis_cluster):
    """redis-cli --cluster reshard of a thousand slots, the busy room's among
    them, while both nodes' senders talk in it."""
    room, source = room_on_low_slots(redis_cluster, 1000)
    target = next(m for m in redis_cluster.masters() if m is not source)

    def move(cluster):
        cluster.reshard(source, target, 1000)
        assert cluster.master_for_key("{gchat:r:%s}:o" % room).port == target.port

    run_through(redis_cluster, room, move)
