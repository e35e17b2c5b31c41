#!/bin/bash
# Measures the web (issue 11) and TLS (issue 12) goals of bench/RESULTS.md
# ("Web and TLS (issues 11 and 12)"): one .jsonl and one .txt per command,
# in this folder, i11_* and i12_*.  About 20 minutes on an idle 2-core
# machine, longer when runs are discarded.
#
#   bench/results/issue11_12.sh                          # everything
#   bench/results/issue11_12.sh i11_fanout_1000 ...      # only the commands named
#
# Every command runs with --max-other-load 10 --retries 2: gchat-bench waits
# for an idle machine before each run and discards (and re-runs, at most
# twice) a run in which others used more than 10% of the machine.
# --transports tcp,ws runs the TCP baseline and the other transport
# alternately in one invocation (tcp, ws, tcp, ws, ...); the ratios printed
# under the table are of the medians of that same invocation.
set -u
cd "$(dirname "$0")"
ulimit -n 20000
ONLY=" $* "
want() { [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $1 "* ]]; }
run() { name=$1; shift; want "$name" || return 0
        echo "== $name: gchat-bench $* --max-other-load 10 --retries 2 ($(date -u +%H:%M:%S))" >&2
        s=$(date +%s)
        gchat-bench "$@" --max-other-load 10 --retries 2 --json > "$name.jsonl" 2> "$name.txt"
        echo "   rc=$? $(( $(date +%s) - s )) s" >&2; }
# Issue 11: server CPU per delivery over WebSocket vs TCP (goal <= x1.5), 0 lost.
run i11_fanout_1000 fanout --clients 1000 --rate 200 --duration 10 --transports tcp,ws --repeat 3
# Issue 12: the same over TLS vs TCP.
run i12_fanout_1000 fanout --clients 1000 --rate 200 --duration 10 --transports tcp,tls --repeat 3
# Issue 11: RSS of an idle WebSocket connection (goal <= 8 KiB) next to TCP.
run i11_idle_5000 idle --clients 5000 --duration 10 --transports tcp,ws --repeat 3
# Issue 12: RSS of an idle TLS connection (goal <= 32 KiB) next to TCP.
run i12_idle_5000 idle --clients 5000 --duration 10 --transports tcp,tls --repeat 3
# Issue 11: /metrics scraped every 100 ms during saturate, vs no scraping;
# both servers have the --http port open.
run i11_saturate_noscrape saturate --clients 1000 --duration 10 --spawn='--http 0' --repeat 3
run i11_saturate_scrape saturate --clients 1000 --duration 10 --spawn='--http 0' --scrape-metrics 0.1 --repeat 3
# The same no-scrape/scrape pair alternately, one run each, three times: a
# drift of the machine then hits both alike.
if want i11_saturate_ab; then
    echo "== i11_saturate_ab: 3 x (no scrape, scrape), --repeat 1 each ($(date -u +%H:%M:%S))" >&2
    : > i11_saturate_ab.jsonl; : > i11_saturate_ab.txt
    for i in 1 2 3; do
        for scrape in 0 0.1; do
            gchat-bench saturate --clients 1000 --duration 10 --spawn='--http 0' \
                --scrape-metrics $scrape --max-other-load 10 --retries 2 --json \
                >> i11_saturate_ab.jsonl 2>> i11_saturate_ab.txt
        done
    done
fi
# What one scrape costs the server: CPU time of a gchat --http 0 (no
# clients; the collector reads counters, O(1) in clients) over 1000 GETs of
# /metrics on one keep-alive connection, after 50 to warm up.
if want i11_scrape_cost; then
    echo "== i11_scrape_cost ($(date -u +%H:%M:%S))" >&2
    python - > i11_scrape_cost.txt <<'PY'
import http.client, json, time
from gchat_bench.servers import Server, gchat_command, spawn_argv
srv = Server.spawn("gchat", spawn_argv(gchat_command(), "--http 0", compat=False))
try:
    c = http.client.HTTPConnection(srv.host, srv.http_port, timeout=5)
    def get():
        c.request("GET", "/metrics"); r = c.getresponse(); body = r.read()
        assert r.status == 200 and b"gchat_deliveries_total" in body
        return len(body)
    for _ in range(50):
        get()
    n, cpu0, t0 = 1000, srv.cpu_s(), time.monotonic()
    size = sum(get() for _ in range(n)) // n
    cpu = srv.cpu_s() - cpu0
    wall = time.monotonic() - t0
    print(json.dumps({"scrapes": n, "body_bytes": size, "server_cpu_ms_per_scrape": cpu * 1e3 / n,
                      "wall_ms_per_scrape": wall * 1e3 / n,
                      "core_share_at_10_per_s": cpu / n * 10}))
finally:
    srv.stop()
PY
fi
# Where the goals above are met at 200 msg/s the server is near a full core
# and batches several messages per wake-up; at 50 msg/s (50,000
# deliveries/s) each wake-up carries about one message, so each delivery
# over TLS pays its own encryption: tcp, ws and tls alternately.
run i12_fanout_1000_r50 fanout --clients 1000 --rate 50 --duration 10 --transports tcp,ws,tls --repeat 3
