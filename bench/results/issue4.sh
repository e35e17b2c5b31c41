#!/bin/bash
# Re-measures the fan-out goals of bench/RESULTS.md ("Fan-out at the limit
# of one core"): one .jsonl and one .txt per command, in this folder.
# Each command is bounded; about 20 minutes in all.  `compare` runs gchat
# --compat and the baselines in the same invocation.
set -u
cd "$(dirname "$0")"
run() { name=$1; shift; echo "== $name: gchat-bench $*" >&2; s=$(date +%s)
        gchat-bench "$@" --json > "$name.jsonl" 2> "$name.txt"
        echo "   rc=$? $(( $(date +%s) - s )) s" >&2; }
# saturate: W=16 in flight per sender, against the baselines (compat) and in name mode
run i4_saturate_compare compare --scenario saturate --clients 1000 --senders 10 --window 16 --duration 5 --repeat 3
run i4_saturate_name    saturate --spawn= --clients 1000 --senders 10 --window 16 --duration 5 --repeat 3
run i4_saturate_w64     saturate --spawn= --clients 1000 --senders 10 --window 64 --duration 5
# fanout: 500,000 deliveries/s offered to 1,000 clients; 20 msg/s to 10,000
run i4_fanout_1000_name   fanout --spawn= --clients 1000 --senders 10 --rate 500 --duration 10 --repeat 3
run i4_fanout_1000_compare compare --clients 1000 --senders 10 --rate 500 --duration 10 --repeat 3
run i4_fanout_10000_name   fanout --spawn= --clients 10000 --senders 10 --rate 20 --duration 10
run i4_fanout_10000_compare compare --clients 10000 --senders 10 --rate 20 --duration 10
# the same 10,000 clients at 2 msg/s: one broadcast at a time on a quiet machine
run i4_fanout_10000_2msg   fanout --spawn= --clients 10000 --senders 10 --rate 2 --duration 10
# the kernel's floor: one send() to each of 10,000 loopback sockets, no server
echo "== i4_floor_10000: python -m gchat_bench.floor --clients 10000" >&2
python -m gchat_bench.floor --clients 10000 > i4_floor_10000.json 2> i4_floor_10000.txt
echo "== i4_floor_10000_2threads: python -m gchat_bench.floor --clients 10000 --threads 2" >&2
python -m gchat_bench.floor --clients 10000 --threads 2 > i4_floor_10000_2threads.json 2> i4_floor_10000_2threads.txt
# join and idle at 10,000 (join against the baselines would take the seed
# port about 1,000 s: 100 M arrival lines at its ~0.1 M/s, so not here)
run i4_join_10000_name   join --spawn= --clients 10000
run i4_join_10000_compat join --spawn=--compat --compat --clients 10000
run i4_idle_10000_name   idle --spawn= --clients 10000 --duration 5
run i4_idle_10000_compare compare --scenario idle --clients 10000 --duration 5
# slow: 10 never-reading clients among 1,000, default --sendq (1 MiB)
run i4_slow_1000 slow --spawn= --clients 1000 --slow-clients 10 --rate 50 --duration 10
run i4_slow_1000_compare compare --scenario slow --clients 1000 --slow-clients 10 --rate 50 --duration 10
# cost curve: CPU per delivery and memory per client, 100 to 10,000 clients
run i4_cost_curve fanout --spawn= --clients 100,300,1000,3000,10000 --rate 20 --duration 5 --plot ../cost_curve.png
