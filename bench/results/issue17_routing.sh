#!/bin/bash
# Issue 17: the bus routed by interest, wired into the server.  The issue's
# load (4,000 clients in 400 rooms of 10, 1,000 lines/s in, 10,000
# deliveries/s out) on one process, then on clusters of 2, 4 and 8 nodes
# with each room's members on one node (--local-rooms) or spread over both
# nodes, on one redis-server and on a 3-master Redis Cluster; then the
# one-room figures of issue 10 (1,000 clients, one room, 200 and 50
# lines/s).  Each configuration --repeat 3 (medians in the .txt);
# configurations alternate by round, so that a noisy moment of this shared
# machine hits them alike.
#
#   bench/results/issue17_routing.sh                   # writes i17r_*.jsonl and i17r_*.txt here
set -u
cd "$(dirname "$0")"
ulimit -n 20000
run() { name=$1; shift
        echo "== $name: gchat-bench $* ($(date -u +%H:%M:%S))" >&2
        gchat-bench "$@" --json >> "$name.jsonl" 2>> "$name.txt"; }
rm -f i17r_*.jsonl i17r_*.txt
LOAD="fanout --clients 4000 --senders 400 --rate 1000 --rooms 400 --duration 10 --spawn=--flood-rate=0"
for round in 1 2 3; do
  run i17r_one          $LOAD
  run i17r_2n_spread    $LOAD --spawn-cluster 2
  run i17r_2n_local     $LOAD --spawn-cluster 2 --local-rooms
  run i17r_4n_local     $LOAD --spawn-cluster 4 --local-rooms
  run i17r_8n_local     $LOAD --spawn-cluster 8 --local-rooms
  run i17r_2n_local_rc3 $LOAD --spawn-cluster 2 --local-rooms --redis-cluster 3
  run i17r_8n_local_rc3 $LOAD --spawn-cluster 8 --local-rooms --redis-cluster 3
  # The floor of any bus: one process with no Redis carrying what one node
  # of 2 and of 8 carries (an eighth: 500 clients, 50 rooms, 125 lines/s).
  run i17r_one_half     fanout --clients 2000 --senders 200 --rate 500 --rooms 200 --duration 10 --spawn=--flood-rate=0
  run i17r_one_eighth   fanout --clients 500 --senders 50 --rate 125 --rooms 50 --duration 10 --spawn=--flood-rate=0
done
ONE="fanout --clients 1000 --duration 10 --spawn=--flood-rate=0 --repeat 3"
run i17r_room200_alone $ONE --rate 200
run i17r_room200_2n    $ONE --rate 200 --spawn-cluster 2
run i17r_room50_alone  $ONE --rate 50
run i17r_room50_2n     $ONE --rate 50 --spawn-cluster 2
