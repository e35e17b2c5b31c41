#!/bin/bash
# Issue 19: what signing in costs.
#   - verifying one token, HS256, RS256 and ES256 (python -m gchat_bench.auth_cost);
#   - a join storm of 5,000 clients signing in with tokens against 5,000 that
#     take names (gchat-bench join), alternating, three of each;
#   - one-room deliveries (1,000 clients, 200 lines/s) with --auth-key on
#     and off, alternating, three of each.
# Medians in RESULTS.md.
#
#   bench/results/issue19_auth.sh      # writes i19_*.jsonl and i19_*.txt here
set -u
cd "$(dirname "$0")"
ulimit -n 20000
rm -f i19_*.jsonl i19_*.txt
SECRET="the bench's sign-in secret: 48 bytes, as a real one"
KEY=$(mktemp)
trap 'rm -f "$KEY"' EXIT
printf '%s\n' "$SECRET" > "$KEY"
python -m gchat_bench.auth_cost --json > i19_verify.jsonl
for round in 1 2 3; do
  gchat-bench join --clients 5000 --spawn=--flood-rate=0 --json >> i19_join_open.jsonl 2>> i19_join_open.txt
  gchat-bench join --clients 5000 --auth-secret "$SECRET" "--spawn=--flood-rate=0 --auth-key=$KEY" \
    --json >> i19_join_signed.jsonl 2>> i19_join_signed.txt
done
for round in 1 2 3; do
  gchat-bench fanout --clients 1000 --rate 200 --duration 10 --spawn=--flood-rate=0 \
    --json >> i19_deliver_open.jsonl 2>> i19_deliver_open.txt
  gchat-bench fanout --clients 1000 --rate 200 --duration 10 --auth-secret "$SECRET" \
    "--spawn=--flood-rate=0 --auth-key=$KEY" --json >> i19_deliver_signed.jsonl 2>> i19_deliver_signed.txt
done
