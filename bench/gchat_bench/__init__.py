"""gchat_bench: the load generator of gchat (the ``gchat-bench`` command).

Modules: ``cli`` (arguments, tables, JSON), ``runner`` (scenarios, worker
pool), ``worker`` (one generator process), ``stats`` (payloads, histograms,
loss accounting), ``servers`` (spawning and measuring the server under
test), ``report`` and ``plot``.  The baseline servers are in
``gchat_bench.baselines``.
"""
