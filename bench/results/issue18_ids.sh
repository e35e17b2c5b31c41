#!/bin/bash
# Issue 18: what line ids cost in steady state.  The 1,000-room load
# (10,000 clients in 1,000 rooms of 10, a sender in each at 1 line/s:
# 1,000 lines/s in, 10,000 deliveries/s out) on one process, with every
# client holding a session (--sessions: each line it receives is @ID LINE)
# and without; three rounds, alternating, medians in RESULTS.md.
#
#   bench/results/issue18_ids.sh      # writes i18ids_*.jsonl and i18ids_*.txt here
set -u
cd "$(dirname "$0")"
ulimit -n 20000
run() { name=$1; shift
        echo "== $name: gchat-bench $* ($(date -u +%H:%M:%S))" >&2
        gchat-bench "$@" --json >> "$name.jsonl" 2>> "$name.txt"; }
rm -f i18ids_*.jsonl i18ids_*.txt
LOAD="fanout --clients 10000 --senders 1000 --rate 1000 --rooms 1000 --duration 10 --spawn=--flood-rate=0"
for round in 1 2 3; do
  run i18ids_plain    $LOAD
  run i18ids_sessions $LOAD --sessions
done
