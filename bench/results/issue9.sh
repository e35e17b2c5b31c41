#!/bin/bash
# Measures the rooms goals of bench/RESULTS.md ("Rooms (issue 9)"): one
# .jsonl and one .txt per command, in this folder, i9_*.  Each command is
# bounded; about 15 minutes in all on an idle 2-core machine, longer when
# runs are discarded (below).
#
#   bench/results/issue9.sh                     # everything
#   bench/results/issue9.sh i9_rooms_sweep ...  # only the commands named
#
# Every command runs with --max-other-load 10: gchat-bench waits for an
# idle machine before each run, and a run in which others (not the server,
# not the generator) used more than 10% of the machine is discarded (still
# printed, marked "discarded") and run again, up to 5 times.  On the shared
# project machine someone else's load otherwise shows up as latency.
# GCHAT_SERVER_CMD, if set, is passed as --server-cmd: the server to spawn
# instead of the installed gchat (to pin a commit, e.g. a `git archive`
# snapshot run as 'env PYTHONPATH=/tmp/snap python -m gchat').
set -u
cd "$(dirname "$0")"
ONLY=" $* "
want() { [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $1 "* ]]; }
run() { name=$1; shift; want "$name" || return 0
        echo "== $name: gchat-bench $* --max-other-load 10 ($(date -u +%H:%M:%S))" >&2
        s=$(date +%s)
        gchat-bench "$@" --max-other-load 10 ${GCHAT_SERVER_CMD:+--server-cmd "$GCHAT_SERVER_CMD"} \
            --json > "$name.jsonl" 2> "$name.txt"
        echo "   rc=$? $(( $(date +%s) - s )) s" >&2; }
# 10,000 clients in 1,000 rooms of 10; every client sends one line every
# 2 s: 5,000 lines/s in, 50,000 deliveries/s out.  Goal: p99 <= 30 ms,
# 0 lost, 0 leaked.
run i9_rooms_1000 fanout --spawn= --clients 10000 --rooms 1000 --rate 5000 --duration 10 --repeat 3
# ... and at half that rate (25,000 deliveries/s): where the tail is when
# the server's core is half free.
run i9_rooms_1000_half fanout --spawn= --clients 10000 --rooms 1000 --rate 2500 --duration 10 --repeat 3
# The same 10,000 clients in 1 (one big room: the reference), 10, 100 and
# 1,000 rooms, at the same 50,000 deliveries/s offered: server CPU per
# delivery against room size (../rooms_cost.png).
run i9_rooms_sweep fanout --spawn= --clients 10000 --rooms 1,10,100,1000 --offered-deliveries 50000 --duration 10 --repeat 3 --plot ../rooms_cost.png
# Join storm: 10,000 clients connect, take a name and /join one of 1,000
# rooms, until every room has its sync marker (quiet).  Goal: <= 10 s.
# Reference in the same invocation of this script: the same storm into the
# lobby alone (no /join).
run i9_join_rooms   join --spawn= --clients 10000 --rooms 1000 --repeat 3
run i9_join_lobby   join --spawn= --clients 10000 --repeat 3
# /join of a room with a full history (20 lines of 4096 bytes) against one
# with none: server CPU per join spent on the history block.
run i9_history history --spawn= --clients 20 --joins 500 --repeat 3
