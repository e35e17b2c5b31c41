#!/bin/bash
# Issue 18: what line ids cost in steady state over 2 nodes: the 1,000-room
# load (10,000 clients in 1,000 rooms of 10, 1,000 lines/s in), each room on
# one node, with every client holding a session (--sessions) and without;
# three rounds, alternating, medians in RESULTS.md.
#
#   bench/results/issue18_cluster_ids.sh      # writes i18c_ids_*.jsonl and .txt here
set -u
cd "$(dirname "$0")"
ulimit -n 20000
rm -f i18c_ids_*.jsonl i18c_ids_*.txt
LOAD="fanout --clients 10000 --senders 1000 --rate 1000 --rooms 1000 --duration 10 --spawn-cluster 2 --local-rooms --spawn=--flood-rate=0"
for round in 1 2 3; do
  gchat-bench $LOAD --json >> i18c_ids_plain.jsonl 2>> i18c_ids_plain.txt
  gchat-bench $LOAD --sessions --json >> i18c_ids_sessions.jsonl 2>> i18c_ids_sessions.txt
done
