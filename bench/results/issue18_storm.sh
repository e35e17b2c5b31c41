#!/bin/bash
# Issue 18: a resume storm on one process.  5,000 clients in 500 rooms (a
# sender in each, 500 lines/s in all); the 4,500 session clients drop at
# once, stay away 2 s, and all resume; three runs, medians in RESULTS.md.
#
#   bench/results/issue18_storm.sh      # writes i18storm.jsonl here
set -u
cd "$(dirname "$0")"
ulimit -n 20000
rm -f i18storm.jsonl
for round in 1 2 3; do
  python -m gchat_bench.resume_storm --clients 5000 --rooms 500 --rate 500 --json >> i18storm.jsonl
done
