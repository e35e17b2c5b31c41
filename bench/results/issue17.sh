#!/bin/bash
# Issue 17's groundwork: what the room logs cost (gchat/bus/room_stream.py,
# room_feed.py; the server does not use them yet), one Redis against a
# 3-master Redis Cluster: 400 rooms, 1,000 entries/s, a reader that hosts
# 10 of them.  Three runs each, alternated; one JSON line per run in
# i17_cost_*.jsonl.
set -u
cd "$(dirname "$0")"
rm -f i17_cost_*.jsonl i17_read_*.jsonl
for round in 1 2 3; do
  for masters in 0 3; do
    echo "== python -m gchat_bench.room_log_cost --masters $masters --rooms 400 --hosted 10 --rate 1000 --duration 10" >&2
    python -m gchat_bench.room_log_cost --masters $masters --rooms 400 --hosted 10 \
      --rate 1000 --duration 10 >> i17_cost_m$masters.jsonl
  done
done
# What a node pays per entry it reads: the reader hosts every room.
for masters in 0 3; do
  echo "== python -m gchat_bench.room_log_cost --masters $masters --rooms 400 --hosted 400 --rate 1000 --duration 10" >&2
  python -m gchat_bench.room_log_cost --masters $masters --rooms 400 --hosted 400 \
    --rate 1000 --duration 10 >> i17_read_m$masters.jsonl
done
