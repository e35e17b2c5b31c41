#!/bin/bash
# Re-measures every figure of bench/RESULTS.md: one .jsonl (gchat-bench
# --json) and one .txt (the table) per command, in this folder.  Each
# command is bounded (the longest took 79 s here); ~9 minutes in all.
# Needs `pip install -e '.[bench]'` (gchat-bench on PATH).
set -u
cd "$(dirname "$0")"
run() { name=$1; shift; echo "== $name: gchat-bench $*" >&2; s=$(date +%s)
        gchat-bench "$@" --json > "$name.jsonl" 2> "$name.txt"
        echo "   rc=$? $(( $(date +%s) - s )) s" >&2; }
run compare_fanout   compare --clients 1000 --rate 50 --duration 10 --repeat 3
run compare_saturate compare --scenario saturate --clients 1000 --duration 5 --repeat 3
run compare_join     compare --scenario join --clients 2000 --repeat 3
run compare_idle     compare --scenario idle --clients 2000 --duration 5 --repeat 3
run compare_slow     compare --scenario slow --spawn='--sendq 65536 --sndbuf 65536' --clients 500 --slow-clients 20 --size 1000 --rate 100 --duration 10
run gchat_idle_10000 idle --spawn= --clients 10000 --duration 10
run sweep_compare    compare --clients 100,300,1000,2000 --rate 50 --duration 5 --plot ../compare_sweep.png
run sweep_gchat      fanout --spawn= --clients 1000,5000,10000,19000 --rate 20 --duration 5 --plot ../gchat_sweep.png
run gchat_saturate_name saturate --spawn= --clients 1000 --duration 5 --repeat 3
