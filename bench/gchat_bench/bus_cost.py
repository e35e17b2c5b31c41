"""What one bus stream costs, for the paper estimates in bench/RESULTS.md.

    python -m gchat_bench.bus_cost --rate 1000 --duration 10 --lines 1 --nodes 1

Starts its own redis-server on a free loopback port and --nodes gchat nodes
with no clients, then publishes entries into the cluster's stream at --rate
entries/s for --duration seconds, each a batch of --lines chat lines to the
lobby, exactly as a node would publish them (bus/entry.py's encoding, one
XADD each, pipelined per tick).  Every node reads and applies each entry (a
node applies every room's entries, whoever is in it), so a node's CPU over
the run, divided by the entries, is what one stream costs one node per
entry, with no member to deliver to; redis-server's CPU per entry is the
bus's own cost.  With --rate 0 it publishes as fast as one pipelined client
can instead, which shows where one Redis saturates.

Prints one JSON object.  Bounded in time; targets 127.0.0.1 only.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

import redis

from gchat.bus.entry import encode
from gchat_bench.processes import RedisServer, die_with_parent
from gchat_bench.servers import process_cpu_s


def start_node(url):
    gchat = os.path.join(os.path.dirname(sys.executable), "gchat")
    proc = subprocess.Popen(
        [gchat, "--host", "127.0.0.1", "--port", "0", "--redis", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    for raw in proc.stderr:
        if re.search(rb"listening on", raw):
            return proc
    raise RuntimeError("gchat node did not start")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1000, help="entries/s; 0: as fast as possible")
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--lines", type=int, default=1, help="chat lines per entry")
    ap.add_argument("--size", type=int, default=64, help="bytes per line")
    ap.add_argument("--nodes", type=int, default=1)
    args = ap.parse_args(argv)
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    nodes = []
    try:
        nodes = [start_node(server.url) for _ in range(args.nodes)]
        time.sleep(1)  # let the nodes' hello/present settle before measuring
        text = "x" * max(1, args.size - 10)
        ops = [["say", "lobby", f"bench: {text}", True] for _ in range(args.lines)]
        pids = [server.pid, *(p.pid for p in nodes)]
        before = [process_cpu_s(pid) for pid in pids]
        started = time.monotonic()
        sent = seq = 0
        tick = 0.01
        while time.monotonic() - started < args.duration:
            due = (args.rate * (time.monotonic() - started)) if args.rate else sent + 200
            pipe = client.pipeline(transaction=False)
            count = 0
            while sent + count < due and count < 1000:
                seq += 1
                pipe.xadd(
                    "gchat:stream",
                    encode("benchpublisher", seq, ops),
                    maxlen=100_000,
                    approximate=True,
                )
                count += 1
            if count:
                pipe.execute()
                sent += count
            elif args.rate:
                time.sleep(tick)
        elapsed = time.monotonic() - started
        # Until every node has read the last entry: their CPU then covers all.
        time.sleep(1.0)
        after = [process_cpu_s(pid) for pid in pids]
        cpu = [a - b for a, b in zip(after, before)]
        result = {
            "entries": sent,
            "seconds": round(elapsed, 2),
            "entries_per_s": round(sent / elapsed),
            "lines_per_entry": args.lines,
            "nodes": args.nodes,
            "redis_cpu_s": round(cpu[0], 3),
            "redis_cpu_us_per_entry": round(cpu[0] / sent * 1e6, 2),
            "node_cpu_s": [round(c, 3) for c in cpu[1:]],
            "node_cpu_us_per_entry": [round(c / sent * 1e6, 2) for c in cpu[1:]],
        }
        print(json.dumps(result))
        return 0
    finally:
        # The nodes first: they leave the cluster while Redis is there.
        for proc in nodes:
            proc.terminate()
        for proc in nodes:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        client.close()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
