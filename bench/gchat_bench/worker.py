"""One load-generator process: a share of the simulated clients on its own
gevent loop.  The parent (runner.py) starts several of these with
``python -m gchat_bench.worker`` and drives them over stdin/stdout with one
JSON object per line.

Why this shape:

- Several processes, because one CPython process cannot use more than one
  core, and the generator must not be what limits the figures.  The parent
  measures each worker's CPU and reports when one was near a full core.
- Receiving is the hot path (a broadcast to N clients is N deliveries):
  every client socket sits in one epoll (worker_sockets.py), whose ready
  sockets are read in 64 KiB chunks and scanned in C (worker_receive.py).
- Senders are greenlets, one per sending client (worker_send.py), where
  gevent's timers and cooperative blocking sends are what is needed.

A Worker is those parts put together, one concern each: ClientSockets
(connect, read, write, close), Receiver (handshake, accounting), Senders
(pacing), and the CommandChannel to the parent (worker_channel.py).  Its
``cmd_*`` methods are the commands, each documented there with its reply.
While a command runs the worker also emits ``{"ev": "progress", ...}``
lines twice a second.
"""

from __future__ import annotations

import os
import resource
import sys
import time

from gchat_bench.stats import LatencyRecorder, latency_bucket
from gchat_bench.worker_channel import CommandChannel, emit, parent_input, read_config
from gchat_bench.worker_receive import Receiver
from gchat_bench.worker_send import Senders
from gchat_bench.worker_sockets import READY, Client, ClientSockets


class Worker:
    """The clients of one process, their sockets, receiver and senders."""

    def __init__(self, cfg: dict):
        self.clients = [Client(i, False) for i in cfg["clients"]]
        self.slow_clients = [Client(i, True) for i in cfg.get("slow", [])]
        # --rooms K: client i joins room i % K after naming.
        self.rooms = cfg.get("rooms", 0)
        if self.rooms:
            for c in self.clients:
                c.room = c.idx % self.rooms
        self.sender_of = {int(k): v for k, v in cfg["sender_of"].items()}
        self.sockets = ClientSockets(cfg)
        self.receiver = Receiver(cfg, self.clients, self.sockets)
        self.senders = Senders(cfg, self.clients, self.sockets)
        self.sockets.start(self.receiver.on_data, self.receiver.on_close)

    def progress(self) -> dict:
        rx = self.receiver
        return {
            "connected": sum(1 for c in self.clients if c.state == READY),
            "synced": sum(1 for c in self.clients if c.sync >= rx.sync_target and rx.sync_target),
            "sent": self.senders.sent,
            "unique": rx.unique_total,
            "lines": rx.lines,
        }

    def close(self) -> None:
        self.sockets.close_all(self.clients + self.slow_clients)

    # ----------------------------------------------------------- commands

    def cmd_connect(self, msg: dict) -> dict:
        """Connect ("which": "normal" or "slow") clients through the handshake.

        Reply: ok, errors (count and first messages), the handshake
        latencies (connect start to "You are") as an encoded histogram, and
        t_last_ready (monotonic ns).
        """
        todo = self.slow_clients if msg.get("which") == "slow" else self.clients
        self.sockets.connect_all(todo, msg.get("concurrency", 200), msg.get("timeout", 60.0))
        rec = LatencyRecorder()
        ok = [c for c in todo if c.state == READY]
        for c in ok:
            us = (c.t_ready - c.t_start) // 1000
            rec.buckets[latency_bucket(us)] += 1
        for c in ok:
            if c.idx in self.sender_of:
                c.sender_id = self.sender_of[c.idx]
        errs = [c.error for c in todo if c.state != READY]
        reply = {
            "ok": len(ok),
            "errors": len(errs),
            "error_samples": errs[:3],
            "hist": rec.encoded(),
            "t_last_ready": max([c.t_ready for c in ok], default=0),
        }
        nodes = self.sockets.nodes
        if len(nodes) > 1:
            # A cluster: how many got through on each node and, with
            # rooms, the rooms they are members of there.
            by_node = [0] * len(nodes)
            rooms_by_node: list = [set() for _ in nodes]
            for c in ok:
                n = self.sockets.node_index(c)
                by_node[n] += 1
                rooms_by_node[n].add(c.room)
            reply["by_node"] = by_node
            if self.rooms:
                reply["rooms_by_node"] = [sorted(r) for r in rooms_by_node]
        return reply

    def cmd_sync(self, msg: dict) -> dict:
        """Wait until every reading client has seen sync marker k.

        The server relays lines in order, so a client that received marker k
        has also received everything the server sent it before (arrivals of
        a join storm, the last messages of a phase).  If "send" is true this
        worker sends the marker from one of its clients first.
        Reply: missing (clients that did not see it in time), t_done.
        """
        k = msg["k"]
        self.receiver.sync_target = k
        deadline = time.monotonic() + msg.get("timeout", 60.0)
        if msg.get("send"):
            self.senders.send_sync(k)
        return self.receiver.wait_sync(k, deadline)

    def cmd_arm(self, msg: dict) -> dict:
        """Get ready for phase msg["run"]: its receivers recognise its lines
        and its counters start from zero.  The runner arms every worker
        before any of them sends, so that no worker meets a line of a phase
        it does not know yet."""
        self.receiver.arm(msg["run"])
        self.senders.reset()
        return {}

    def cmd_send(self, msg: dict) -> dict:
        """Run one measured phase of sending from this worker's senders.

        msg: run (random id of the phase), t0 (monotonic ns, the same for
        all workers), duration (s), mode "open" (rate_per_sender, msgs/s) or
        "closed" (window).  Resets the phase counters, sends until
        t0+duration, and replies with sent, offered and the send-lag
        histogram (how late the open-loop senders were on their schedule).
        """
        if self.receiver.armed != msg["run"]:
            self.cmd_arm(msg)
        return self.senders.run_phase(msg)

    def cmd_drain(self, msg: dict) -> dict:
        """Wait for the messages of the phase to arrive, then report.

        msg: total_sent (by all workers), quiet (s without progress that
        ends the wait), timeout (s, hard bound).  Every reading client
        should get every message, its own included.
        """
        return self.receiver.drain(msg)

    def cmd_slowcheck(self, msg: dict) -> dict:
        """How many never-reading clients the server has closed (after
        "quiet" seconds with nothing to read, a client counts as open)."""
        return self.sockets.slowcheck(self.slow_clients, msg.get("quiet", 1.0))


def raise_fd_limit() -> None:
    """Use the hard limit on open files: each client is one descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    raise_fd_limit()
    fin = parent_input()
    w = Worker(read_config(fin))
    emit({"ev": "hello", "pid": os.getpid()})
    CommandChannel(w, w.progress).serve(fin)
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
