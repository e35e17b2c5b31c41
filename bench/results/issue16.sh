#!/bin/bash
# Issue 16 (one concern per module) changes no behaviour: the same-run A/B
# of the refactored code against the commit before it (BASE, 7431fea), on
# the one-room figures it must keep: saturate's CPU per delivery and idle
# bytes per connection.  Old and new alternate, one run each per round, so
# that a noisy moment of this shared machine hits both alike.  The old code
# runs from an archive of BASE on PYTHONPATH, with this venv's libraries.
#
#   bench/results/issue16.sh              # writes i16_*.jsonl and i16_*.txt here
#   ONLY=slope bench/results/issue16.sh   # only the 5,000-15,000 slope
set -u
cd "$(dirname "$0")"
ulimit -n 20000
BASE=${BASE:-7431fea}
OLD=$(mktemp -d)
trap 'rm -rf "$OLD"' EXIT
git -C "$(git rev-parse --show-toplevel)" archive "$BASE" gchat | tar -x -C "$OLD"
PY=$(command -v python)
old_cmd="env PYTHONPATH=$OLD $PY -m gchat"
run() { name=$1; shift
        echo "== $name: gchat-bench $* ($(date -u +%H:%M:%S))" >&2
        gchat-bench "$@" --json >> "$name.jsonl" 2>> "$name.txt"; }
ONLY=${ONLY:-all}
if [ "$ONLY" = slope ]; then rm -f i16_slope_*; else rm -f i16_*.jsonl i16_*.txt; fi
[ "$ONLY" = slope ] || for round in 1 2 3; do
  run i16_saturate_old saturate --spawn= --clients 1000 --window 16 --duration 5 --server-cmd "$old_cmd"
  run i16_saturate_new saturate --spawn= --clients 1000 --window 16 --duration 5
  run i16_idle_old idle --clients 10000 --duration 5 --spawn "" --server-cmd "$old_cmd"
  run i16_idle_new idle --clients 10000 --duration 5 --spawn ""
done
# The cost of one more idle connection, free of the start-up baseline: the
# RSS slope between 5,000 and 15,000 clients (as issue 10 measured it).
for round in 1 2; do
  for n in 5000 15000; do
    run i16_slope_old_$n idle --clients $n --duration 5 --spawn "" --server-cmd "$old_cmd"
    run i16_slope_new_$n idle --clients $n --duration 5 --spawn ""
  done
done
