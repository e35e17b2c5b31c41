"""The cluster's shared space besides the room logs (gchat/bus/control.py)
on a real Redis Cluster: names one key each, spread over the masters and
unique under a race; a lost node's names freed once; liveness by TTL; the
room directory summed over the nodes."""

import threading
import time

from redis.cluster import RedisCluster as ClusterClient

from gchat.bus.control import Control
from gchat.protocol import name_key


def control(cluster):
    return Control(
        ClusterClient.from_url(cluster.url, socket_timeout=5, socket_connect_timeout=5), "c"
    )


def test_names_are_one_key_each_spread_over_the_masters(redis_cluster):
    ctl = control(redis_cluster)
    for i in range(300):
        assert ctl.claim(name_key(f"user{i}"), "a")
    per_master = dict.fromkeys(redis_cluster.masters(), 0)
    for i in range(300):
        per_master[redis_cluster.master_for_key(ctl.name_key(name_key(f"user{i}")))] += 1
    assert all(50 <= n <= 200 for n in per_master.values()), per_master
    assert ctl.holder(name_key("USER7")) == "a"  # the key is the folded name


def test_a_name_goes_to_one_node_however_they_race(redis_cluster):
    nodes = ["a", "b", "c", "d"]
    controls = {node: control(redis_cluster) for node in nodes}
    won = {node: [] for node in nodes}
    start = threading.Barrier(len(nodes))

    def claim_all(node):
        start.wait(timeout=10)
        for i in range(50):
            if controls[node].claim(f"racer{i}", node):
                won[node].append(i)

    threads = [threading.Thread(target=claim_all, args=(n,)) for n in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    winners = sorted(i for node in nodes for i in won[node])
    assert winners == list(range(50)), "a name went to no node or to two"
    ctl = controls["a"]
    for node in nodes:  # what each node lists is what it holds
        listed = {k.decode() for k in ctl.client.smembers(ctl.node_names(node))}
        assert listed == {f"racer{i}" for i in won[node]}


def test_a_claim_again_by_its_holder_keeps_it_and_release_frees_it(redis_cluster):
    ctl = control(redis_cluster)
    assert ctl.claim("bob", "a") and ctl.claim("bob", "a")
    assert not ctl.claim("bob", "b")
    ctl.release("bob", "b")  # not b's: nothing happens
    assert ctl.holder("bob") == "a"
    ctl.release("bob", "a")
    assert ctl.holder("bob") is None and ctl.claim("bob", "b")


def test_a_lost_nodes_names_are_freed_once(redis_cluster):
    ctl, other = control(redis_cluster), control(redis_cluster)
    for i in range(20):
        ctl.claim(f"m{i}", "dead")
    ctl.claim("kept", "alive")
    ctl.client.sadd(ctl.node_names("dead"), "kept")  # listed, but not held by it
    first = ctl.free_lost("dead", marker_ttl_s=60)
    assert first == sorted(f"m{i}" for i in range(20))
    assert other.free_lost("dead", marker_ttl_s=60) is None  # another survivor: once
    assert ctl.holder("kept") == "alive" and ctl.holder("m3") is None


def test_liveness_is_a_heartbeat_with_a_ttl(redis_cluster):
    ctl = control(redis_cluster)
    ctl.beat("a", ttl_ms=300)
    ctl.beat("b", ttl_ms=30_000)
    assert ctl.alive(["a", "b", "c"]) == {"a": True, "b": True, "c": False}
    deadline = time.monotonic() + 5
    while ctl.alive(["a"])["a"]:
        assert time.monotonic() < deadline, "the heartbeat did not expire"
        time.sleep(0.05)  # polling a TTL, bounded by the deadline
    assert ctl.alive(["a", "b"]) == {"a": False, "b": True}


def test_the_directory_sums_the_nodes_rooms(redis_cluster):
    ctl = control(redis_cluster)
    ctl.publish_directory("a", {"lobby": 3, "den": 1})
    ctl.publish_directory("b", {"lobby": 2, "ops": 5})
    assert ctl.directory(["a", "b"]) == {"lobby": 5, "den": 1, "ops": 5}
    ctl.publish_directory("a", {"den": 0, "lobby": 4})
    assert ctl.directory(["a", "b"]) == {"lobby": 6, "ops": 5}
    assert ctl.directory(["b"]) == {"lobby": 2, "ops": 5}  # a lost node's rooms do not count
