#!/bin/bash
# Issue 18: sessions across a cluster of 2 nodes over one redis-server.
#   - the failover storm: 10,000 session clients on node A in 1,000 rooms,
#     a sender in each room on node B at 1 line/s; A killed (-9); every
#     client resumes on B;
#   - a rolling restart under the same load: A stopped (SIGTERM), its
#     clients resume on B, A back, then B stopped and every client (the
#     senders hold sessions too) resumes on the new A;
# (What ids cost over 2 nodes: issue18_cluster_ids.sh.)
# Three runs each, medians in RESULTS.md.
#
#   bench/results/issue18_cluster.sh      # writes i18c_*.jsonl and i18c_*.txt here
set -u
cd "$(dirname "$0")"
ulimit -n 20000
rm -f i18c_failover.jsonl i18c_rolling.jsonl
for round in 1 2 3; do
  python -m gchat_bench.failover_storm --clients 11000 --rooms 1000 --rate 1000 --json >> i18c_failover.jsonl
  python -m gchat_bench.failover_storm --rolling --clients 11000 --rooms 1000 --rate 1000 --json >> i18c_rolling.jsonl
done
