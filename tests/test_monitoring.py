"""contrib/prometheus and contrib/grafana (issue 20) against real tools:
promtool checks and unit-tests the rules and the configuration; a real
Prometheus scrapes a running gchat every second, sees its clients and its
deliveries, and fires GchatDown when it is killed; every expression of the
Grafana dashboard is valid PromQL to that Prometheus and names only
metrics that gchat exports (with --http and --redis)."""

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from gchat_bench.prometheus_server import PrometheusServer, PromQLError

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "contrib" / "prometheus"
RULES = PROM / "gchat-rules.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "gchat.json"
HOST = "127.0.0.1"
# GchatDown's `for` (gchat-rules.yml), and what a 1 s scrape and a 1 s
# evaluation add to it before it fires.
DOWN_FOR = 30.0
DOWN_SLACK = 10.0
# Grafana's variables, as a query of the whole deployment would have them.
VARIABLES = {"$node": ".*", "$__rate_interval": "1m", "$__range": "5m"}


def promtool(*args, cwd=PROM):
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: apt-get install -y prometheus"
    return subprocess.run(
        [tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_checks_the_rules_and_the_configuration():
    rules = promtool("check", "rules", "gchat-rules.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 20 rules found" in rules.stdout
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_unit_tests_show_every_alert_firing_and_quiet():
    result = promtool("test", "rules", "gchat-rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    text = (PROM / "gchat-rules.test.yml").read_text()
    alerts = re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M)
    assert len(alerts) == 8
    for alert in alerts:
        # Each alert is evaluated at least twice: once quiet, once firing.
        evaluated = re.findall(rf"alertname: {alert}\n\s+exp_alerts:(.*)", text)
        assert any(e.strip() == "[]" for e in evaluated), f"{alert}: no quiet case"
        assert any(e.strip() == "" for e in evaluated), f"{alert}: no firing case"


def test_the_unit_tests_can_fail():
    """A broken threshold makes promtool's tests fail: they check something."""
    broken = PROM / "gchat-rules.broken.yml"
    tests = PROM / "gchat-rules.broken.test.yml"
    try:
        broken.write_text(RULES.read_text().replace("for: 30s", "for: 5m"))
        tests.write_text(
            (PROM / "gchat-rules.test.yml")
            .read_text()
            .replace("  - gchat-rules.yml", "  - gchat-rules.broken.yml")
        )
        result = promtool("test", "rules", tests.name)
        assert result.returncode != 0
        assert "GchatDown" in result.stdout + result.stderr
    finally:
        broken.unlink(missing_ok=True)
        tests.unlink(missing_ok=True)


def metric_names(text: str) -> set:
    """The metric names of a Prometheus text exposition."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def dashboard_exprs() -> list:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append((panel["title"], target["expr"]))
    return exprs


def resolve(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def test_the_dashboard_is_grafana_39_with_a_node_variable_and_four_rows():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["node"]["type"] == "query"
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Traffic", "Latency", "Health", "Cluster"]
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    assert all('instance=~"$node"' in expr for _, expr in exprs)


def test_every_dashboard_metric_is_one_gchat_exports(start_gchat, redis_server):
    server = start_gchat("--http", "0", "--redis", redis_server.url)
    client = server.named("alice")  # sessions, rooms and clients have samples
    exported = metric_names(scrape(server.http_port))
    named = set()
    for title, expr in dashboard_exprs():
        for name in re.findall(r"\b((?:gchat|process)_[a-z_]+)\b", expr):
            named.add(name)
            assert name in exported, f"panel {title!r} names {name}, which gchat does not export"
    # The panels cover every family of every row.
    for family in ("gchat_cluster_nodes", "gchat_bus_up", "gchat_flush_seconds_bucket"):
        assert family in named
    client.close()


class Chatter:
    """Two named clients saying a line every 50 ms until stopped."""

    def __init__(self, server):
        self.alice, self.bob = server.named("alice"), server.named("bob")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        count = 0
        while not self.stop.wait(0.05):
            try:
                self.alice.say(f"line {count}")
            except OSError:
                return
            count += 1

    def close(self):
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def watched(start_gchat):
    server = start_gchat("--http", "0")
    with PrometheusServer([f"{HOST}:{server.http_port}"], rules=[RULES]) as prometheus:
        yield server, prometheus


def test_a_real_prometheus_sees_gchat_its_clients_its_deliveries_and_its_death(watched):
    """And answers every expression of the dashboard."""
    server, prometheus = watched
    prometheus.wait_for(lambda: prometheus.value('up{job="gchat"}') == 1, "up == 1", 30)
    chatter = Chatter(server)
    extra = server.named("carol")
    try:
        prometheus.wait_for(
            lambda: prometheus.value('sum(gchat_clients{job="gchat"})') == 3,
            "gchat_clients == the 3 clients connected",
            30,
        )
        delivered = prometheus.wait_for(
            lambda: prometheus.value("job:gchat_deliveries:rate1m"),
            "the deliveries/s recording rule above 0 while clients chat",
            30,
        )
        assert delivered > 0
    finally:
        chatter.close()
        extra.close()
    # Kill it: GchatDown fires within its `for`.
    assert prometheus.alerts() == [] or all(
        a["labels"]["alertname"] != "GchatDown" for a in prometheus.alerts()
    )
    server.signal(signal.SIGKILL)
    killed = time.monotonic()
    # While GchatDown waits out its `for`: every expression of the dashboard
    # is valid PromQL to this Prometheus (an error is a failure), and a
    # broken one is refused, so that the check can fail.
    for title, expr in dashboard_exprs():
        try:
            prometheus.query(resolve(expr))
        except PromQLError as err:
            raise AssertionError(f"panel {title!r}: {expr}: {err}") from None
    with pytest.raises(PromQLError):
        prometheus.query("sum(rate(gchat_deliveries_total[1m])")

    def down_firing():
        return [
            a
            for a in prometheus.alerts()
            if a["labels"]["alertname"] == "GchatDown" and a["state"] == "firing"
        ]

    firing = prometheus.wait_for(down_firing, "GchatDown firing", DOWN_FOR + DOWN_SLACK)
    took = time.monotonic() - killed
    assert DOWN_FOR <= took + 1.0, f"fired after {took:.1f} s, before its `for`"
    assert firing[0]["labels"]["instance"] == f"{HOST}:{server.http_port}"
    assert firing[0]["annotations"]["summary"] == f"gchat on {HOST}:{server.http_port} is down"


def test_the_dashboard_rendering_draws_every_panel_from_real_data(tmp_path):
    """docs/monitoring.png's command, for 3 s: every graph panel gets data."""
    out = tmp_path / "shot.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gchat_bench.dashboard_shot",
            "--out",
            str(out),
            "--duration",
            "3",
            "--nodes",
            "1",
            "--dashboard",
            str(DASHBOARD),
            "--rules",
            str(RULES),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stderr.strip().splitlines()[-1]
    panels = sum(
        1
        for p in json.loads(DASHBOARD.read_text())["panels"]
        if p["type"] in ("timeseries", "heatmap")
    )
    assert summary == f"{out}: {panels} panels, {panels} with data", summary
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
