#!/bin/bash
# Measures the cluster goals of issue 10 (bench/RESULTS.md, "A cluster over
# Redis (issue 10)"): one .jsonl and one .txt per command, in this folder,
# i10_*.  Each cluster form spawns its own redis-server on a free loopback
# port and its own nodes, and reports the CPU of each node and of
# redis-server.
#
#   bench/results/issue10.sh                       # everything
#   bench/results/issue10.sh i10_bus_1node ...     # only the commands named
set -u
cd "$(dirname "$0")"
ulimit -n 20000
ONLY=" $* "
want() { [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $1 "* ]]; }
run() { name=$1; shift; want "$name" || return 0
        echo "== $name: gchat-bench $* ($(date -u +%H:%M:%S))" >&2
        s=$(date +%s)
        gchat-bench "$@" --json > "$name.jsonl" 2> "$name.txt"
        echo "   rc=$? $(( $(date +%s) - s )) s" >&2; }
# The bus costs little: 1,000 clients, 200 lines/s, one room; one process
# without Redis, one node with Redis, two nodes (goal: p50 +<= 2 ms, summed
# CPU per delivery, nodes + redis-server, <= x1.5 of the single process).
# --flood-rate 0: 10 senders at 20 lines/s each are over the default 10/s.
run i10_bus_alone   fanout --clients 1000 --rate 200 --duration 10 --spawn "--flood-rate 0" --repeat 3
run i10_bus_1node   fanout --clients 1000 --rate 200 --duration 10 --spawn "--flood-rate 0" --spawn-cluster 1 --repeat 3
run i10_bus_2nodes  fanout --clients 1000 --rate 200 --duration 10 --spawn "--flood-rate 0" --spawn-cluster 2 --repeat 3
# Idle memory per connection must not grow with --redis.
run i10_idle_alone  idle --clients 10000 --duration 5 --spawn "" --repeat 3
run i10_idle_node   idle --clients 10000 --duration 5 --spawn "" --spawn-cluster 1 --repeat 3
# The same below the generator's saturation: 50 lines/s (p50 comparable).
run i10_bus50_alone  fanout --clients 1000 --rate 50 --duration 10 --spawn "--flood-rate 0" --repeat 3
run i10_bus50_1node  fanout --clients 1000 --rate 50 --duration 10 --spawn "--flood-rate 0" --spawn-cluster 1 --repeat 3
run i10_bus50_2nodes fanout --clients 1000 --rate 50 --duration 10 --spawn "--flood-rate 0" --spawn-cluster 2 --repeat 3
# Past one process's file limit: 40,000 clients in one room over --workers 4
# (goals: the join storm quiet within 30 s; at 1 line/s p99 <= 1 s; 0 lost;
# at most 4 KiB of RSS per connection, summed over the workers).
run i10_w4_join   join   --clients 40000 --spawn "" --spawn-workers 4
run i10_w4_fanout fanout --clients 40000 --rate 1 --duration 20 --spawn "" --spawn-workers 4
run i10_w4_idle   idle   --clients 40000 --duration 5 --spawn "" --spawn-workers 4
# What --workers gives 10,000 clients at 20 lines/s on these 2 cores: one
# process against two workers (and their redis-server).
run i10_10k_one   fanout --clients 10000 --rate 20 --duration 10 --spawn "--flood-rate 0" --repeat 3
run i10_10k_w2    fanout --clients 10000 --rate 20 --duration 10 --spawn "--flood-rate 0" --spawn-workers 2 --repeat 3
# What one stream costs a node (no members: the entries are applied, and
# delivered to nobody), and where one Redis saturates (one pipelined
# publisher, as fast as it can; entries of 1 and of 20 lines).
cost() { name=$1; shift; want "$name" || return 0
         echo "== $name: python -m gchat_bench.bus_cost $*" >&2
         python -m gchat_bench.bus_cost "$@" > "$name.json" 2>&1; }
cost i10_cost_1000  --rate 1000 --duration 10 --lines 1 --nodes 2
cost i10_cost_max1  --rate 0 --duration 10 --lines 1 --nodes 1
cost i10_cost_max20 --rate 0 --duration 10 --lines 20 --nodes 1
# Nothing lost under chaos: 2 minutes over 2 nodes, churning clients; Redis
# killed and restarted (empty) twice, one node killed and restarted once.
soak() { name=$1; shift; want "$name" || return 0
         echo "== $name: python -m gchat_bench.cluster_soak $*" >&2
         python -m gchat_bench.cluster_soak "$@" > "$name.json" 2> "$name.txt"
         echo "   rc=$?" >&2; }
soak i10_soak --duration 120 --clients 200 --nodes 2 --json
# The one-process figures are kept (no --redis: nothing of the bus runs).
run i10_regress_saturate saturate --clients 1000 --duration 5 --window 16 --spawn "" --repeat 3
# The same at 5,000 and 15,000 clients: the slope between them is the cost
# of one more connection, without the constant part (redis-py's buffers
# and connections) that the per-client figure above spreads over 10,000.
run i10_idle_alone_5k  idle --clients 5000  --duration 5 --spawn "" --repeat 3
run i10_idle_alone_15k idle --clients 15000 --duration 5 --spawn "" --repeat 3
run i10_idle_node_5k   idle --clients 5000  --duration 5 --spawn "" --spawn-cluster 1 --repeat 3
run i10_idle_node_15k  idle --clients 15000 --duration 5 --spawn "" --spawn-cluster 1 --repeat 3
