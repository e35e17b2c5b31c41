"""Baseline servers that gchat-bench compares gchat against.

Each module here is a runnable server (``python -m gchat_bench.baselines.NAME
--host H --port 0``) that speaks the seed protocol of gopl.io ch8/chat
(what ``gchat --compat`` speaks) and prints ``listening on HOST:PORT`` to
stderr once it accepts connections.  ``BASELINES`` lists them for
``gchat-bench compare``.
"""

# name -> importable module; `gchat-bench compare` runs each with
# `python -m MODULE --host 127.0.0.1 --port 0`.
BASELINES = {
    "seed_port": "gchat_bench.baselines.seed_port",
    "seed_batched": "gchat_bench.baselines.seed_batched",
}
