"""What the room logs of the bus routed by interest cost (issue 17's
groundwork: gchat/bus/room_stream.py and room_feed.py, which the server does
not use yet), for the paper estimates in bench/RESULTS.md.

    python -m gchat_bench.room_log_cost --masters 3 --rooms 400 --hosted 10 --rate 1000

Starts its own Redis Cluster of --masters masters (or, with --masters 0,
one redis-server) on free loopback ports.  One publisher publishes --rate
entries/s for --duration seconds, round-robin over --rooms rooms, each
entry one chat line of --size bytes, through the publish script, what is
due at each millisecond in one pipeline, as a node publishes a hub batch.
One reader, another process, hosts --hosted of those rooms
(room_feed.RoomFeed) and counts what it is delivered.  Reported, as one
JSON object:

- redis_us_per_entry: the CPU of every redis-server over the run, divided
  by the entries published (the bus's own cost, wherever they land);
- masters_share: each master's share of that CPU (balance over the slots);
- reader_cpu_s and reader_us_per_delivery: the reader's CPU, and per entry
  delivered to it (redis-py's pub/sub is polled here, 10 times a second
  when idle, which a quiet reader's figure includes), and
  reader_received_bytes against published_bytes: what a node that hosts
  --hosted rooms pays for the others (the kernel's count, ss -tin).

Bounded in time; targets 127.0.0.1 only.
"""

import argparse
import json
import subprocess
import sys
import time

import redis
from redis.cluster import RedisCluster as ClusterClient

from gchat.bus.room_stream import RoomStream
from gchat_bench.processes import RedisCluster, RedisServer, die_with_parent
from gchat_bench.servers import process_cpu_s

# The reader: hosts rooms 0..hosted-1 and reports, on stdin's close, what
# it was delivered, its CPU and the bytes its connections received.
READER = """
import json, os, re, select, subprocess, sys, time
import redis
from redis.cluster import RedisCluster
from gchat.bus.room_feed import RoomFeed
from gchat.bus.room_stream import RoomStream
url, hosted, masters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
client = RedisCluster.from_url(url) if masters else redis.Redis.from_url(url)
stream = RoomStream(client, "bench", stream_max=1000, history=0)
count = [0]
feed = RoomFeed(stream, client.pubsub(), lambda room, entry: count.__setitem__(0, count[0] + 1))
for r in range(hosted):
    feed.host(f"room{r}")
print("ready", flush=True)
start = time.process_time()
while not select.select([sys.stdin], [], [], 0)[0]:  # stdin closes at the end
    feed.poll(0.1)
deadline = time.monotonic() + 2  # what is still on its way
while time.monotonic() < deadline:
    feed.poll(0.01)
cpu = time.process_time() - start
out = subprocess.run(["ss", "-tinpH", "state", "established"], capture_output=True,
                     text=True).stdout.splitlines()
received = sum(int(m.group(1)) for head, info in zip(out, out[1:])
               if f"pid={os.getpid()}," in head
               for m in [re.search(r"bytes_received:(\\d+)", info)] if m)
print(json.dumps({"delivered": count[0], "cpu_s": cpu, "received": received, **feed.stats}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--masters", type=int, default=3, help="Redis Cluster masters; 0: one Redis")
    ap.add_argument("--rooms", type=int, default=400)
    ap.add_argument("--hosted", type=int, default=10, help="rooms the reader hosts")
    ap.add_argument("--rate", type=float, default=1000, help="entries/s")
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--size", type=int, default=64, help="bytes per line")
    args = ap.parse_args(argv)
    if not 0 < args.hosted <= args.rooms:
        ap.error("--hosted must be within 1..--rooms")
    group = RedisCluster(masters=args.masters) if args.masters else RedisServer()
    group.start()
    reader = None
    try:
        if args.masters:
            client = ClusterClient.from_url(group.url)
            servers = [node.pid for node in group.nodes]
        else:
            client = redis.Redis.from_url(group.url)
            servers = [group.pid]
        stream = RoomStream(client, "bench", stream_max=1000, history=0)
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, group.url, str(args.hosted), str(args.masters)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        if reader.stdout.readline().strip() != "ready":
            raise RuntimeError("the reader did not start")
        text = "x" * args.size
        seqs = [0] * args.rooms
        cpu0 = {pid: process_cpu_s(pid) or 0.0 for pid in servers}
        started = time.monotonic()
        published = published_bytes = 0
        deadline = started + args.duration
        while time.monotonic() < deadline:
            due = int((time.monotonic() - started) * args.rate)
            batch = []  # what is due now goes in one round trip, as a hub batch would
            while published + len(batch) < due:
                r = (published + len(batch)) % args.rooms
                seqs[r] += 1
                ops = json.dumps([["say", f"room{r}", f"bench: {text}", True]])
                batch.append((f"room{r}", "bench", seqs[r], ops, "E", (), False))
                published_bytes += len(ops)
            if batch:
                stream.publish_batch(batch)
                published += len(batch)
            time.sleep(0.001)  # the pace of an open loop, bounded by the deadline
        elapsed = time.monotonic() - started
        cpu = {pid: (process_cpu_s(pid) or 0.0) - cpu0[pid] for pid in servers}
        reader.stdin.close()
        report = json.loads(reader.stdout.readline())
        reader.wait(timeout=30)
        total = sum(cpu.values())
        masters = [cpu[node.pid] for node in group.masters()] if args.masters else [total]
        result = {
            "masters": args.masters,
            "rooms": args.rooms,
            "hosted": args.hosted,
            "rate": args.rate,
            "published": published,
            "entries_per_s": published / elapsed,
            "redis_us_per_entry": total / published * 1e6 if published else None,
            "masters_share": [round(c / total, 3) if total else None for c in masters],
            "reader_delivered": report["delivered"],
            "reader_expected": sum(seqs[: args.hosted]),
            "reader_cpu_s": report["cpu_s"],
            "reader_us_per_delivery": (
                report["cpu_s"] / report["delivered"] * 1e6 if report["delivered"] else None
            ),
            "published_bytes": published_bytes,
            "reader_received_bytes": report["received"],
            "reader_stats": {k: report[k] for k in ("duplicates", "gaps", "resets")},
        }
        print(json.dumps(result))
        return 0 if report["delivered"] == result["reader_expected"] else 1
    finally:
        if reader is not None and reader.poll() is None:
            reader.kill()
        group.stop()


if __name__ == "__main__":
    sys.exit(main())
