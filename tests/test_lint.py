"""ruff over gchat/, bench/ and tests/: the lint rules and the format
chosen in pyproject.toml ([tool.ruff]).  A finding fails the suite, so
that the README's test command (and so CI) keeps the habit."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREES = ["gchat", "bench", "tests"]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_ruff_check_finds_nothing():
    result = ruff("check", "--no-cache", *TREES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_would_change_nothing():
    result = ruff("format", "--check", "--no-cache", *TREES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_are_the_projects_and_can_fail(tmp_path):
    """The configuration is read (not ruff's defaults), and a finding
    fails: an unused import, and a line that the format would change."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx = {'a':1}\n")
    check = ruff("check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad))
    assert check.returncode == 1 and "F401" in check.stdout, check.stdout + check.stderr
    fmt = ruff(
        "format", "--check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad)
    )
    assert fmt.returncode == 1, fmt.stdout + fmt.stderr
