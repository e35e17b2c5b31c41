"""mypy over gchat/, with the configuration in pyproject.toml: a strict
core (every def of the pure modules annotated), a lenient edge (checked,
not annotated).  Any finding fails, with mypy's own output."""

import re
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the tomli that setup.py installs on older Pythons
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"

# The pure core: no sockets, no gevent, no clock (test_layers.py), and
# every def annotated.  A module leaves this list only on purpose.
STRICT = [
    "gchat.events",
    "gchat.protocol",
    "gchat.room",
    "gchat.rooms",
    "gchat.fanout",
    "gchat.outbox",
    "gchat.chat",
    "gchat.cluster",
    "gchat.timeouts",
    "gchat.bus.entry",
    "gchat.bus.room_log",
    "gchat.proxy_header",
    "gchat.config",
]


def mypy_config() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["mypy"]


def overrides_for(module: str) -> list:
    """The [[tool.mypy.overrides]] tables whose patterns match module."""
    found = []
    for table in mypy_config().get("overrides", []):
        patterns = table["module"]
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            if pattern == module or (
                pattern.endswith(".*") and (module + ".").startswith(pattern[:-1])
            ):
                found.append(table)
                break
    return found


def test_mypy_finds_nothing(tmp_path):
    # The cache goes to tmp_path: nothing is written into the checkout
    # (pytest.ini keeps its own cache out too).
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(PYPROJECT),
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    print(output)
    assert result.returncode == 0, f"mypy found problems:\n{output}"
    # Every module was checked: `files` has not been narrowed.
    modules = len(list((ROOT / "gchat").rglob("*.py")))
    checked = re.search(r"in (\d+) source files?", output)
    assert checked and int(checked.group(1)) == modules, (
        f"mypy checked {checked and checked.group(1)} files, gchat/ has {modules}:\n{output}"
    )


def test_the_strict_core_is_listed_as_strict():
    """Each pure module is under disallow_untyped_defs and
    disallow_incomplete_defs, so that the list cannot silently shrink."""
    config = mypy_config()
    assert config.get("files") == ["gchat"]
    assert config.get("check_untyped_defs") is True
    for module in STRICT:
        tables = overrides_for(module)
        assert any(t.get("disallow_untyped_defs") is True for t in tables), (
            f"{module} is not under disallow_untyped_defs = true in pyproject.toml"
        )
        assert any(t.get("disallow_incomplete_defs") is True for t in tables), (
            f"{module} is not under disallow_incomplete_defs = true in pyproject.toml"
        )
        # Nor is it let off by another table.
        for table in tables:
            assert not table.get("ignore_errors"), f"{module}: ignore_errors in {table}"
            assert not table.get("disable_error_code"), f"{module}: errors disabled in {table}"
            assert table.get("disallow_untyped_defs", True) is True, (
                f"{module}: disallow_untyped_defs turned off in {table}"
            )
            assert table.get("disallow_incomplete_defs", True) is True, (
                f"{module}: disallow_incomplete_defs turned off in {table}"
            )
            assert table.get("check_untyped_defs", True) is True, (
                f"{module}: check_untyped_defs turned off in {table}"
            )


def test_overrides_for_matches_exact_names_and_wildcards():
    # The matcher itself (the strict test relies on it).
    assert overrides_for("gchat.chat")
    assert any("gevent.*" in t["module"] for t in overrides_for("gevent.event"))
    assert any("gevent.*" in t["module"] for t in overrides_for("gevent"))
    assert not overrides_for("gchat.chatter")
