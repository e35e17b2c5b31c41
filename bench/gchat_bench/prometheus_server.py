"""A real Prometheus for the tests and the bench: started on a free port,
scraping the gchat processes it is given, with gchat's rules loaded, and
asked through its HTTP API.

The tests check contrib/prometheus/ against it (tests/test_monitoring.py);
the dashboard rendering (dashboard_shot.py) queries it.  Debian's
`prometheus` package provides the binary (.ci/run installs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from gchat_bench.processes import HOST, StartError, die_with_parent, free_port

# Prometheus opens its TSDB and reads its rules in about a second; a busy
# machine with a cold disk takes several, never this long.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.1
HTTP_TIMEOUT = 10.0
# The rules shipped for operators, from a checkout's root (this package is
# installed apart from the checkout: callers name the file).
RULES = Path("contrib/prometheus/gchat-rules.yml")


class PromQLError(RuntimeError):
    """Prometheus answered a query with an error (bad PromQL, ...)."""


def prometheus_executable(name: str = "prometheus") -> str:
    path = shutil.which(name)
    if path is None:
        raise StartError(f"{name} not found: apt-get install -y prometheus")
    return path


class PrometheusServer:
    """One Prometheus process with a configuration of its own: every
    target scraped as job "gchat" (what the rules select) every
    scrape_interval, the rules evaluated as often."""

    def __init__(
        self,
        targets: Sequence[str],
        rules: Sequence[Path],
        interval: str = "1s",
    ) -> None:
        self.targets = list(targets)
        self.rules = [Path(r).resolve() for r in rules]
        self.interval = interval
        self.workdir = Path(tempfile.mkdtemp(prefix="gchat-prometheus-"))
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def config_text(self) -> str:
        config = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(r) for r in self.rules],
            "scrape_configs": [
                {
                    "job_name": "gchat",
                    "scrape_interval": self.interval,
                    "scrape_timeout": self.interval,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }
        return json.dumps(config, indent=2)  # JSON is YAML

    def start(self) -> PrometheusServer:
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config_text())
        self.port = free_port()
        log = open(self.workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [
                prometheus_executable(),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"prometheus exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1.0) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(POLL_INTERVAL)  # polling readiness: Prometheus has no other signal
        self.stop()
        raise StartError(f"prometheus not ready within {START_TIMEOUT} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.workdir / "prometheus.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def api(self, path: str, **params: object) -> object:
        """GET /api/v1/PATH: its "data", or PromQLError with Prometheus's error."""
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:
            body = json.load(err)
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list:
        """An instant query's result: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        data = self.api("query", query=expr)
        assert isinstance(data, dict)
        return data["result"]

    def value(self, expr: str) -> Optional[float]:
        """The single value of an instant query, None if it has none."""
        result = self.query(expr)
        if not result:
            return None
        return float(result[0]["value"][1])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list:
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        assert isinstance(data, dict)
        return data["result"]

    def alerts(self) -> list:
        """Active alerts: [{"labels": {...}, "state": "pending"|"firing", ...}]."""
        data = self.api("alerts")
        assert isinstance(data, dict)
        return data["alerts"]

    def wait_for(self, check, what: str, timeout: float) -> object:
        """Poll check() (a Prometheus query) until it returns something
        true; that, or AssertionError naming what after timeout."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            last = check()
            if last:
                return last
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")
            time.sleep(POLL_INTERVAL)  # Prometheus is asked again; it pushes nothing

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
