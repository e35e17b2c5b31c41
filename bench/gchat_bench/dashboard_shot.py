"""A picture of the Grafana dashboard (contrib/grafana/gchat.json) from real
data, for docs/monitoring.md: no Grafana can be installed here, so this
renders the dashboard's own panels with matplotlib.

It starts a redis-server and N gchat nodes over it (--http), a real
Prometheus scraping them every second with gchat's rules, and clients that
chat in a few rooms for --duration seconds (their number and pace rising,
so that the panels move); then it asks Prometheus for every panel's
expression over the run (query_range, Grafana's variables filled in) and
draws each panel's series in a grid, rows as in the dashboard.

    python -m gchat_bench.dashboard_shot --out docs/monitoring.png --duration 60

Run it from a checkout's root (it reads contrib/); it stops by itself.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from pathlib import Path

from gchat_bench.prometheus_server import RULES, PrometheusServer
from gchat_bench.servers import Cluster, gchat_command

DASHBOARD = Path("contrib/grafana/gchat.json")
HOST = "127.0.0.1"
ROOMS = 4
LINE_PERIOD = 0.05  # seconds between one client's lines at full pace


def panel_queries(dashboard: dict, rate_interval: str) -> list:
    """(row, title, unit, [(expr, legend)]) of every graph panel, in order;
    Grafana's variables filled in as for the whole deployment."""
    out = []
    row = ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        if panel["type"] not in ("timeseries", "heatmap"):
            continue
        queries = []
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$node", ".*")
                .replace("$__rate_interval", rate_interval)
                .replace("$__range", rate_interval)
            )
            queries.append((expr, target.get("legendFormat", "")))
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        out.append((row, panel["title"], unit, panel["type"], queries))
    return out


def legend(fmt: str, labels: dict) -> str:
    text = fmt
    for key, value in labels.items():
        text = text.replace("{{%s}}" % key, value)
    return text or ",".join(f"{k}={v}" for k, v in labels.items()) or "value"


class Load:
    """Clients in ROOMS rooms over every node: each says a line every
    LINE_PERIOD seconds; a new pair joins every few seconds."""

    def __init__(self, nodes: list, duration: float) -> None:
        self.nodes = nodes
        self.duration = duration
        self.stop = threading.Event()
        self.threads: list = []
        self.sockets: list = []

    def client(self, index: int) -> None:
        node = self.nodes[index % len(self.nodes)]
        try:
            sock = socket.create_connection((HOST, node.port), timeout=5)
        except OSError:
            return
        self.sockets.append(sock)
        reader = threading.Thread(target=self._drain, args=(sock,), daemon=True)
        reader.start()
        try:
            sock.sendall(b"user%d\n/join room%d\n" % (index, index % ROOMS))
            if index % 3 == 0:
                sock.sendall(b"/session\n")
            count = 0
            while not self.stop.wait(LINE_PERIOD * (1 + index % 4)):
                sock.sendall(b"line %d\n" % count)
                count += 1
        except OSError:
            return

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    def run(self) -> None:
        started = time.monotonic()
        index = 0
        while time.monotonic() - started < self.duration:
            for _ in range(2):
                thread = threading.Thread(target=self.client, args=(index,), daemon=True)
                thread.start()
                self.threads.append(thread)
                index += 1
            time.sleep(max(0.5, self.duration / 20))
        self.stop.set()
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass


def render(panels: list, series: dict, out: Path, start: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 3
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(15, 2.6 * rows), squeeze=False)
    fig.patch.set_facecolor("#111217")
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, (row, title, unit, kind, queries) in zip(axes.flat, panels):
        ax.set_visible(True)
        ax.set_facecolor("#181b1f")
        shown = f"{row} · {title}" + (" (its buckets as lines)" if kind == "heatmap" else "")
        ax.set_title(shown, color="#d8d9da", fontsize=9, loc="left")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.grid(color="#2c3235", linewidth=0.5)
        drawn = 0
        for (_expr, fmt), results in zip(queries, series[title]):
            for result in results[:6]:
                points = [(float(t) - start, float(v)) for t, v in result["values"]]
                points = [(t, v) for t, v in points if v == v]  # NaN: no data then
                if not points:
                    continue
                xs, ys = zip(*points)
                ax.plot(xs, ys, linewidth=1.2, label=legend(fmt, result["metric"]))
                drawn += 1
        if drawn:
            ax.legend(fontsize=6, loc="upper left", facecolor="#181b1f", labelcolor="#d8d9da")
        else:
            ax.text(0.5, 0.5, "no data", color="#8e8e8e", ha="center", transform=ax.transAxes)
        ax.set_xlabel(f"seconds ({unit})", color="#8e8e8e", fontsize=7)
    fig.suptitle(
        "gchat dashboard (contrib/grafana/gchat.json), rendered with matplotlib from a real "
        "Prometheus's answers to the panels' own queries; not a Grafana screenshot",
        color="#d8d9da",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())
    plt.close(fig)


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gchat_bench.dashboard_shot", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("docs/monitoring.png"))
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--nodes", type=int, default=2, help="gchat nodes over one redis-server")
    ap.add_argument("--dashboard", type=Path, default=DASHBOARD)
    ap.add_argument("--rules", type=Path, default=RULES)
    opts = ap.parse_args(argv)
    dashboard = json.loads(opts.dashboard.read_text())
    argv_node = gchat_command() + ["--host", HOST, "--port", "0", "--http", "0"]
    cluster = Cluster.spawn("gchat", argv_node, nodes=opts.nodes)
    try:
        targets = [f"{HOST}:{node.http_port}" for node in cluster.nodes]
        with PrometheusServer(targets, rules=[opts.rules]) as prometheus:
            # Every node scraped once before the load starts.
            prometheus.wait_for(
                lambda: prometheus.value('count(up{job="gchat"} == 1)') == len(targets),
                "every node scraped",
                30,
            )
            start = time.time()
            Load(cluster.nodes, opts.duration).run()
            time.sleep(2)  # the last scrapes
            end = time.time()
            rate = "%ds" % max(4, int(opts.duration / 10))
            panels = panel_queries(dashboard, rate)
            series = {
                title: [prometheus.query_range(expr, start, end, 1) for expr, _ in queries]
                for _, title, _, _, queries in panels
            }
    finally:
        cluster.stop()
    render(panels, series, opts.out, start)
    empty = [title for title, results in series.items() if not any(results)]
    print(
        f"{opts.out}: {len(panels)} panels, {len(panels) - len(empty)} with data"
        + (f"; empty: {', '.join(empty)}" if empty else ""),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
