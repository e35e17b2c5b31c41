"""gchat_bench: the load generator of gchat (the ``gchat-bench`` command).

Modules: ``cli`` (arguments, tables, JSON), ``runner`` (scenarios, worker
pool), ``worker`` (one generator process, made of ``worker_channel``: the
commands from the parent, ``worker_sockets``: the client sockets,
``worker_receive``: the handshake and the accounting of what arrives,
``worker_send``: the pacing of the senders), ``stats`` (payloads,
histograms, loss accounting), ``servers`` (spawning and measuring the
server under test), ``processes`` (free ports, redis-server and a Redis
Cluster of them: process control shared with the tests), ``report`` and ``plot``.  The cluster
soak is ``cluster_soak`` (the scenario and its command line) with
``soak_checks`` (its pure checks), ``soak_client`` and ``soak_procs``.
The baseline servers are in ``gchat_bench.baselines``.
"""
