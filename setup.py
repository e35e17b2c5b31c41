"""gchat: the gopl.io ch8 chat server on gevent, and its load-benchmarking kit."""

import re
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "gchat" / "__init__.py").read_text()).group(
    1
)

setup(
    name="gchat",
    version=VERSION,
    description="Broadcast chat server on gevent (gopl.io ch8 chat, exercises 8.12-8.15 included)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # The load generator lives under bench/ (next to its baselines and
    # RESULTS.md) but installs as the importable package gchat_bench.
    packages=["gchat", "gchat.bus", "gchat.transport", "gchat_bench", "gchat_bench.baselines"],
    package_dir={
        "gchat": "gchat",
        "gchat_bench": "bench/gchat_bench",
        "gchat_bench.baselines": "bench/baselines",
    },
    # The load generator's receive path in C (bench/gchat_bench/_scan.c).
    # Optional: without a compiler the install still succeeds and the
    # generator uses the pure-Python reference (stats.scan_run_py), slower;
    # gchat-bench then says "scan: python" in its output.
    ext_modules=[Extension("gchat_bench._scan", ["bench/gchat_bench/_scan.c"], optional=True)],
    # The chat page and its files (transport/http.py serves every file in gchat/static).
    package_data={"gchat": ["static/*"]},
    # gevent for the server; h11, wsproto and prometheus-client, small and
    # pure Python, so that --http works after a plain `pip install .`.
    # tomli is Python 3.11's tomllib for --config on older Pythons.
    install_requires=[
        "gevent>=23.9",
        "h11>=0.14",
        "wsproto>=1.2",
        "prometheus-client>=0.17",
        "tomli>=1.1; python_version<'3.11'",
    ],
    extras_require={
        # playwright drives Debian's Chromium (/usr/bin/chromium, which
        # .ci/run installs); no `playwright install` is needed or used.
        # mypy and ruff are the habits the suite keeps (tests/test_typing.py,
        # tests/test_lint.py): a finding fails it.  Pinned to the versions
        # the code was checked with, since a newer ruff may format otherwise
        # and a newer mypy may find more: moving them is a change of its own.
        "test": [
            "pytest>=7",
            "hypothesis>=6",
            "playwright>=1.40",
            "mypy==2.4.1",
            "ruff==0.17.6",
        ],
        # A cluster of nodes over Redis (--redis, --workers): redis-py, with
        # hiredis parsing replies in C (redis-py picks it up by itself).
        # 8.2: its RedisCluster's sharded pub/sub (ssubscribe,
        # get_sharded_message) follows a slot's master after a failover,
        # and it is the version the Redis Cluster tests run (docs/cluster.md).
        "cluster": ["redis>=8.2,<9", "hiredis>=3"],
        # Signing in with tokens (--auth-key): PyJWT verifies them; its crypto
        # extra (cryptography) is what RS256 and ES256 keys need.
        "auth": ["PyJWT[crypto]>=2.8"],
        "bench": ["hdrhistogram>=0.10", "psutil>=5.9", "tqdm>=4.60", "matplotlib>=3.5"],
        # The documentation site (mkdocs.yml, docs/), built in strict mode by
        # tests/test_docs.py.  1.6: mkdocs.yml's validation of anchors.
        "docs": ["mkdocs>=1.6"],
    },
    entry_points={
        "console_scripts": [
            "gchat = gchat.cli:main",
            "gchat-bench = gchat_bench.cli:main",
        ],
    },
)
