"""Sessions through a cluster's failures (issue 18): a node killed with
every session client on it, or every node restarted in turn.

    python -m gchat_bench.failover_storm --clients 10000 --rooms 1000 --json
    python -m gchat_bench.failover_storm --rolling --clients 2000 --rooms 200 --json

It starts a redis-server and two gchat nodes over it on free ports of
127.0.0.1, and plays every client itself, in one gevent process (the
clients of resume_storm.py):

failover  (default) every session client is on node A, named, in its room,
          holding a session; one sender per room is on node B, saying
          "~SEQ" lines at --rate lines/s over all rooms (1 line/s per room
          at the defaults).  After --warmup seconds node A is killed (-9);
          every client reconnects to node B and resumes with its last id.
rolling   the same start, the senders holding sessions too; node A is
          stopped (SIGTERM: "server stopping; resume elsewhere") and its
          clients resume on B; A comes back; then B is stopped and every
          client, senders included, resumes on the new A.

Measured: from the kill (or each stop) until every client has its
"resumed" line, the resuming node's CPU over that time and per resume;
then, after --settle seconds of live traffic, every session client must
have read every line that its room's sender saw echoed, exactly once, in
order, across everything.  The run stops by itself; exit 1 if anything was
lost, doubled, out of order, or a resume failed.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

from gchat_bench import resume_storm  # noqa: E402
from gchat_bench.resume_storm import (  # noqa: E402
    PORT,
    READY_TIMEOUT,
    RESUMED,
    SessionClient,
    accounting,
    report,
)
from gchat_bench.servers import ClusterRedis, Server, gchat_command, process_cpu_s  # noqa: E402

HOST = resume_storm.HOST
ECHO = re.compile(rb"(?:@\S+ )?snd\d+: ~(\d+)$")
# A node of this bench declares another lost after 2 s without a heartbeat;
# the resumes do not wait for it.
NODE_TIMEOUT = "2"


def node_command(redis_url: str) -> list:
    return gchat_command() + [
        "--host",
        HOST,
        "--port",
        "0",
        "--flood-rate",
        "0",
        "--resume-window",
        "600",
        "--redis",
        redis_url,
        "--node-timeout",
        NODE_TIMEOUT,
    ]


class EchoSender(SessionClient):
    """A room's sender: says "~SEQ" lines, and keeps the numbers it saw
    come back (those lines the room surely said); with sessions, it resumes
    like the others."""

    def __init__(self, room: int, session: bool) -> None:
        super().__init__(room, room)
        self.name = b"snd%d" % room
        self.sender = self.name
        self.session = session
        self.seq = 0
        self.echoed: set[int] = set()

    def connect(self) -> None:
        """Its node's socket, now (PORT says which node)."""
        self.sock = resume_storm.LineSocket()

    def start(self) -> None:
        assert self.sock is not None  # connect() first
        asks = b"/session\n" if self.session else b""
        self.sock.send(self.name + b"\n/join r%d\n" % self.room + asks)
        if not self.session:
            self.ready.set()
        self.read()

    def take(self, line: bytes) -> None:
        if not self.ready.is_set() and line.startswith(b"session "):
            self.token = line.split()[1]
            self.ready.set()
            return
        super().take(line)
        match = ECHO.match(line)
        if match:
            self.echoed.add(int(match.group(1)))

    def say(self) -> None:
        if self.sock is not None and self.resumed_or_first():
            try:
                self.sock.send(b"~%d\n" % self.seq)
                self.seq += 1
            except OSError:
                pass  # its node went: it resumes, and talks again then

    def resumed_or_first(self) -> bool:
        return not self.away

    away = False


def start_node(redis: ClusterRedis) -> Server:
    return Server.spawn("gchat", node_command(redis.url))


def wait_resumed(clients: list, t0: float) -> float:
    for c in clients:
        c.resumed.wait(max(0.0, t0 + READY_TIMEOUT - time.monotonic()))
    return time.monotonic() - t0


def resume_all(clients: list, port: int) -> list:
    PORT[0] = port
    for c in clients:
        c.resumed.clear()
        c.outcome = b""
    return [gevent.spawn(c.come_back) for c in clients]


def run(opts: argparse.Namespace) -> dict:
    redis = ClusterRedis.spawn_redis()
    nodes = [start_node(redis), start_node(redis)]
    stop = Event()
    phases = []
    try:
        PORT[0] = nodes[1].port
        senders = [EchoSender(r, session=opts.rolling) for r in range(opts.rooms)]
        for s in senders:
            s.connect()  # to node B, before PORT changes
            gevent.spawn(s.start)
        PORT[0] = nodes[0].port
        clients = [SessionClient(i, i % opts.rooms) for i in range(opts.clients - opts.rooms)]
        for c in clients:
            gevent.spawn(c.start)
        deadline = time.monotonic() + READY_TIMEOUT
        for c in clients + senders:
            if not c.ready.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError("client %s got no session in time" % c.name.decode())

        def talk() -> None:
            period = 1.0 / opts.rate
            turn = 0
            next_at = time.monotonic()
            while not stop.is_set():
                senders[turn % len(senders)].say()
                turn += 1
                next_at += period
                gevent.sleep(max(0.0, next_at - time.monotonic()))

        talker = gevent.spawn(talk)
        gevent.sleep(opts.warmup)

        def phase(label: str, gone: Server, to: Server, who: list, kill: bool) -> None:
            t0 = time.monotonic()
            for c in who:
                c.away = True
            if kill:
                gone.proc.kill()
                gone.proc.wait()
            else:
                gone.stop()
            gevent.sleep(opts.away)
            cpu0 = process_cpu_s(to.pid) or 0.0
            t1 = time.monotonic()
            resume_all(who, to.port)
            wait_resumed(who, t1)
            for c in who:
                c.away = False
            cpu = (process_cpu_s(to.pid) or 0.0) - cpu0
            phases.append(
                {
                    "phase": label,
                    "clients": len(who),
                    "resumed_in_s": time.monotonic() - t0,
                    "resumed": sum(1 for c in who if RESUMED.match(c.outcome or b"")),
                    "gaps": sum(1 for c in who if (c.outcome or b"").endswith(b" gap")),
                    "cpu_s": cpu,
                    "cpu_us_per_resume": cpu * 1e6 / max(1, len(who)),
                    "first_failure": next(
                        (
                            c.outcome.decode("utf-8", "replace")
                            for c in who
                            if not RESUMED.match(c.outcome or b"")
                        ),
                        None,
                    ),
                }
            )

        if not opts.rolling:
            phase("kill -9 A", nodes[0], nodes[1], clients, kill=True)
        else:
            phase("SIGTERM A", nodes[0], nodes[1], clients, kill=False)
            nodes.append(start_node(redis))
            gevent.sleep(opts.warmup)
            phase("SIGTERM B", nodes[1], nodes[2], clients + senders, kill=False)
        gevent.sleep(opts.settle)
        stop.set()
        talker.join(5)
        gevent.sleep(1.0)  # the last lines in flight
    finally:
        stop.set()
        for server in nodes:
            server.stop()
        redis.stop()
    readers = clients + (senders if opts.rolling else [])
    lost, dup, disorder = accounting(readers, lambda c: senders[c.room].echoed)
    failed = sum(p["clients"] - p["resumed"] for p in phases)
    return {
        "scenario": "rolling_restart" if opts.rolling else "failover_storm",
        "clients": len(clients),
        "rooms": opts.rooms,
        "rate": opts.rate,
        "phases": phases,
        "failed": failed,
        "lines_sent": sum(s.seq for s in senders),
        "lines_echoed": sum(len(s.echoed) for s in senders),
        "lost": lost,
        "duplicated": dup,
        "reordered": disorder,
    }


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gchat_bench.failover_storm", description=__doc__)
    ap.add_argument("--clients", type=int, default=10000, help="session clients, senders included")
    ap.add_argument("--rooms", type=int, default=1000, help="rooms, each with one sender")
    ap.add_argument("--rate", type=float, default=1000.0, help="lines/s over all the senders")
    ap.add_argument("--rolling", action="store_true", help="restart each node in turn instead")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before the failure")
    ap.add_argument("--away", type=float, default=1.0, help="seconds until the clients return")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of live traffic after")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args(argv)
    if opts.clients <= opts.rooms:
        ap.error("--clients must be more than --rooms (each room has a sender)")
    return report(run(opts), opts.json)


if __name__ == "__main__":
    sys.exit(main())
