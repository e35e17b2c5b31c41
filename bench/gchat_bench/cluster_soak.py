"""Cluster chaos soak: N gchat nodes on one Redis (or a Redis Cluster),
churning clients, and Redis and a node killed (kill -9) and restarted while
they talk.

    python -m gchat_bench.cluster_soak --duration 120 --clients 200 --nodes 2 --json
    python -m gchat_bench.cluster_soak --redis-cluster 3x1 --nodes 3 --rooms 50 --json

It starts everything itself, on 127.0.0.1 only: a redis-server on a free
port (no persistence, so a restart comes back empty, as after a crash
without AOF), and N `gchat --redis URL --node-timeout 2 --flood-rate 0`
nodes.  One gevent process plays all the clients, in one room (#lobby), or
with --rooms K in K rooms (#r0 ... #rK-1, each client /joins its own once
named; what is checked below is then checked room by room, and a line of
another room counts as unexpected):

stayers   named before anyone says anything, connected for the whole soak,
          each sending "~RUN SEQ" lines at --rate lines/s.  They are on the
          nodes that are never killed (every node but the last, the
          victim): a client of a killed node is disconnected, which is not
          what is checked here.  Every stayer must receive every line of
          every stayer (its own included) exactly once, each sender's lines
          in order, and every chat line of the room in the same relative
          order as every other stayer.
churners  the rest, over all the nodes, the victim included: each connects,
          takes a new name (cN_G), sends a few numbered lines, listens for
          a while and leaves (/quit, close or reset), then comes back under
          a new name to whichever node is up; those on the victim are cut
          when it dies and come back elsewhere.  Their lines are owed to
          every stayer too (see `owed`), and what each session saw must be
          an unbroken run of every sender's lines, in the stayers' order.

Chaos (fractions of --duration): Redis is killed at 20 % and started again
(same port, empty) --redis-down seconds later; the victim node is killed at
35 % and started again --node-down seconds later (after --node-timeout, so
the others have declared it lost); Redis again at 55 %.  The events run in
sequence, each waiting for the restarted process to be ready.

With --redis-cluster MxR (issue 17) the nodes run over a Redis Cluster of
M masters with R >= 1 replicas each (processes.RedisCluster, in the log
directory; node i is given master i % M's URL) and the chaos is the
cluster's: the master that holds the most rooms is killed at 20 % (kill
-9), its replica takes over, and it is started again --redis-down seconds
later at the earliest (it rejoins as a replica); the victim node is killed
at 40 % as above; at 65 % --reshard-slots slots (1,000) move from one
master to another, keys and all (redis-cli --cluster reshard), from the
master whose lowest slots hold the most rooms.  Each event waits for the
cluster to converge (with a deadline) before the next.  The nodes'
--node-timeout is then 5 s by default (gchat's own), not 2: a failover
takes 2-3 s, during which a node's heartbeat may wait, and a node silent
for longer than --node-timeout is declared lost although it is alive.

At the end the churners leave, the stayers stop sending, and the soak
waits (up to --drain-timeout) until every stayer's every line has been
echoed to its sender or refused, and has reached every stayer.  Then the
checks (the pure functions `owed`, `verify` and `check_session` of
soak_checks.py, which the tests feed synthetic logs).  A line refused with "error: ... not sent"
(past --bus-backlog while Redis is down) is not owed: the sender was told.
The error does not say which line it refused, so the check does not rely
on when it comes: a sender's lines that reached nobody are its refused
ones, as many as it got refusals; more are lost, fewer is a refused line
delivered after all (`owed`).

Exit status 0 when nothing was lost, duplicated or reordered, 1 otherwise
(also when something could not be started).  Reported as warnings, not
failed on: node counters not back at rest, churners whose name or /join
went unanswered, nodes that were declared lost while alive (their logs'
warnings are counted in log_warnings).  Every process started is in
its own process group, killed at exit, and told to die with this one
(PR_SET_PDEATHSIG).  Logs go to a temporary directory, kept on failure.

This module is the scenario and the command line; the checks are in
soak_checks.py, a client in soak_client.py, the processes (redis-server
through processes.RedisServer and a Redis Cluster through
processes.RedisCluster, as for the bench and the tests) in soak_procs.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import sys
import tempfile
import time
from typing import Optional

import gevent
from gevent import socket as gsocket  # cooperative sockets, without monkey-patching

from gchat_bench.processes import BAD_FLAGS, HOST, ReplyError
from gchat_bench.servers import BenchError, parse_redis_cluster
from gchat_bench.soak_checks import PROBLEMS_SHOWN, check_session, owed, verify, warnings
from gchat_bench.soak_client import RECV_SIZE, Client
from gchat_bench.soak_procs import (
    START_TIMEOUT,
    Node,
    RedisClusterProc,
    RedisProc,
    gchat_command,
    kill_all,
    stop_all,
)

NAME_TIMEOUT = 10.0  # a stayer or churner getting "You are NAME"
ACCOUNT_WAIT = 1.0  # a churner waits this long for its lines to come back before it leaves
GRACE = 1.0  # after the drain: late duplicates and refusals still count
CHAOS_AT = (("redis", 0.20), ("node", 0.35), ("redis", 0.55))
# Over a Redis Cluster: a master killed, a node killed, slots moved.
CLUSTER_CHAOS_AT = (("master", 0.20), ("node", 0.40), ("reshard", 0.65))
SCHEDULE_MARGIN = 1.0  # seconds between one event's end and the next's start
# What a reshard of 1,000 slots takes, for planning (it is waited for).
RESHARD_SPAN = 3.0
# The events of each kind of chaos in the timeline: (done, back).
EVENTS = {
    "redis": ("redis killed", "redis restarted"),
    "node": ("node killed", "node restarted"),
    "master": ("master killed", "master restarted"),
    "reshard": ("slots moved", None),
}


def plan(duration: float, redis_down: float, node_down: float, redis_cluster: bool = False) -> list:
    """The chaos schedule: [(kind, kill at, restart at)], in order, each
    event over SCHEDULE_MARGIN s before the next and before the end.
    redis_cluster: a master, a node, a reshard (CLUSTER_CHAOS_AT)."""
    events = []
    down = {"redis": redis_down, "master": redis_down, "node": node_down, "reshard": RESHARD_SPAN}
    for kind, frac in CLUSTER_CHAOS_AT if redis_cluster else CHAOS_AT:
        at = round(duration * frac, 2)
        events.append((kind, at, round(at + down[kind], 2)))
    ends = [e[2] for e in events[:-1]]
    starts = [e[1] for e in events[1:]]
    if (
        any(s - e < SCHEDULE_MARGIN for e, s in zip(ends, starts))
        or duration - events[-1][2] < SCHEDULE_MARGIN
    ):
        raise ValueError(
            "--duration %g is too short for the chaos schedule %s; make it longer "
            "or --redis-down/--node-down shorter" % (duration, events)
        )
    return events


class Soak:
    """One soak: its processes, its clients, the chaos, and the report."""

    def __init__(self, a: argparse.Namespace, logdir: str):
        self.a = a
        self.logdir = logdir
        self.rng = random.Random(a.seed)
        self.run = self.rng.randrange(1, 1 << 30)
        self.chat_re = re.compile(rb"([^\s:]+): ~%d (\d+)\r?\Z" % self.run)
        self.ids: dict = {}
        self.keys: list = []
        if a.redis_cluster:
            self.redis = RedisClusterProc(a.redis_server, logdir, *a.redis_cluster)
        else:
            self.redis = RedisProc(a.redis_server, logdir)
        self.rooms = ["r%d" % k for k in range(a.rooms)]
        self.nodes = [Node(i, logdir) for i in range(a.nodes)]
        self.victim = self.nodes[-1]
        self.stayers: list = []
        self.sessions: list = []
        self.stop_sending = False
        self.stop_churn = False
        self.began = time.monotonic()
        self.sendlog = open(os.path.join(logdir, "sent.log"), "wb") if a.dump else None
        self.t0 = None  # sending started: the chaos schedule counts from here
        self.events: list = []
        self.failures: list = []
        self.problems: list = []
        self.error_lines: dict = {}
        self.connect_errors = 0
        self.name_failures = 0
        self.name_errors: dict = {}
        # node -> [seconds since sending started] of its name failures
        self.name_failure_times: dict = {}
        self.cut_by_kill = 0

    def intern(self, sender: bytes, seq: int) -> int:
        key = (sender, seq)
        i = self.ids.get(key)
        if i is None:
            i = self.ids[key] = len(self.keys)
            self.keys.append((sender.decode("utf-8", "replace"), seq))
        return i

    def event(self, what: str, **extra):
        """A chaos event; its t is seconds since sending started (before: < 0)."""
        now = time.monotonic()
        self.events.append(({"event": what, **extra}, now))
        if not self.a.quiet:
            print(
                "cluster_soak %7.2fs %s %s" % (now - self.began, what, extra or ""),
                file=sys.stderr,
                flush=True,
            )

    def timeline(self) -> list:
        zero = self.t0 if self.t0 is not None else self.began
        return [{"t": round(now - zero, 2), **ev} for ev, now in self.events]

    # processes ---------------------------------------------------------

    def node_argv(self, node: Node) -> list:
        url = self.redis.url_for(node.index) if self.a.redis_cluster else self.redis.url
        argv = gchat_command() + [
            "--redis",
            url,
            "--host",
            HOST,
            "--port",
            "0",
            "--node-timeout",
            "%g" % self.a.node_timeout,
            "--flood-rate",
            "0",
        ]
        if self.a.bus_backlog is not None:
            argv += ["--bus-backlog", str(self.a.bus_backlog)]
        return argv + shlex.split(self.a.node_args)

    def start_node(self, node: Node):
        node.start(self.node_argv(node))

    # clients -----------------------------------------------------------

    def room_of_stayer(self, i: int) -> tuple:
        """(room, home node) of stayer i: stayer i in room i % K, and the
        stayers of a room dealt over the nodes that are never killed."""
        homes = [n.index for n in self.nodes if n is not self.victim]
        if not self.rooms:
            return "", homes[i % len(homes)]
        k = len(self.rooms)
        return self.rooms[i % k], homes[(i // k + i % k) % len(homes)]

    def start_stayers(self, count: int):
        for i in range(count):
            room, home = self.room_of_stayer(i)
            c = Client(self, "s%d" % i, home, stayer=True, room=room)
            c.connect(self.nodes[c.node].port)
            self.stayers.append(c)
        for c in self.stayers:
            c.named.wait(NAME_TIMEOUT)
            if not c.live or c.closed:
                raise RuntimeError(
                    "stayer %s was not named on node%d: %s"
                    % (c.name, c.node, c.name_error or "no answer")
                )

    def stayer_send(self, c: Client, phase: float):
        interval = 1.0 / self.a.rate
        start = time.monotonic() + phase
        while not self.stop_sending:
            pause = start + c.sent * interval - time.monotonic()
            if pause > 0:
                gevent.sleep(pause)
            if self.stop_sending:
                return
            if c.closed:
                self.event("stayer disconnected", name=c.name, node=c.node)
                return
            try:
                c.say()
            except OSError:
                c.closed = True

    def churner(self, slot: int):
        rng = random.Random(self.rng.random())
        generation = 0
        while not self.stop_churn:
            generation += 1
            up = [n for n in self.nodes if n.up]
            if not up:
                gevent.sleep(0.1)
                continue
            node = rng.choice(up)
            room = rng.choice(self.rooms) if self.rooms else ""
            c = Client(self, "c%d_%d" % (slot, generation), node.index, stayer=False, room=room)
            try:
                c.connect(node.port)
            except OSError:
                self.connect_errors += 1
                gevent.sleep(0.2)
                continue
            c.named.wait(NAME_TIMEOUT)
            if not c.live:
                self.name_failures += 1
                zero = self.t0 if self.t0 is not None else self.began
                self.name_failure_times.setdefault("node%d" % node.index, []).append(
                    round(time.monotonic() - zero, 1)
                )
                unanswered = "no answer to /join" if c.state == 3 else "no answer"
                why = c.name_error or ("closed" if c.closed else unanswered)
                why = re.sub(r"c\d+_\d+", "NAME", why)[:100]
                self.name_errors[why] = self.name_errors.get(why, 0) + 1
                c.close()
                gevent.sleep(rng.uniform(0.5, 1.5))  # Redis is down: no herd of retries
                continue
            self.sessions.append(c)
            try:
                self.session(c, rng)
            finally:
                c.close(rng.randrange(3))

    def session(self, c: Client, rng: random.Random):
        """Talk a bit, wait (a little) for the lines to come back, go."""
        a = self.a
        stay_until = time.monotonic() + rng.uniform(a.min_stay, a.max_stay)
        interval = 1.0 / a.churn_rate
        try:
            while not c.closed and not self.stop_churn and time.monotonic() < stay_until:
                c.say()
                gevent.sleep(
                    min(interval * rng.uniform(0.5, 1.5), max(0.0, stay_until - time.monotonic()))
                )
            wait_until = time.monotonic() + ACCOUNT_WAIT
            while not c.closed and not c.accounted() and time.monotonic() < wait_until:
                gevent.sleep(0.05)
        except OSError:
            c.closed = True
        c.settled = c.accounted()
        if c.closed:
            self.cut_by_kill += 1

    def drained(self) -> bool:
        """Every stayer's lines have come back to it (or were refused) and
        every line that came back to its sender reached every stayer."""
        if not all(c.accounted() for c in self.stayers if not c.closed):
            return False
        last: dict = {}  # room -> {sender: highest seq that came back}
        for c in self.stayers + self.sessions:
            if c.echo_max >= 0:
                last.setdefault(c.room, {})[c.nameb] = c.echo_max
        for r in self.stayers:
            if r.closed:
                continue
            mx = r.max_seen
            for sender, top in last.get(r.room, {}).items():
                if mx.get(sender, -1) < top:
                    return False
        return True

    # chaos -------------------------------------------------------------

    def chaos(self, schedule: list):
        for kind, at, back in schedule:
            pause = self.t0 + at - time.monotonic()
            if pause > 0:
                gevent.sleep(pause)
            if kind in ("master", "reshard"):
                try:
                    if kind == "master":
                        self.kill_master(back - at)
                    else:
                        self.reshard(self.a.reshard_slots)
                except (RuntimeError, OSError, ReplyError) as e:  # ClusterError: a deadline passed
                    self.failures.append("%s: %s" % (kind, e))
                    self.event("%s failed" % kind)
                    return
            elif kind == "redis":
                pid = self.redis.pid
                self.redis.stop(signal.SIGKILL)
                self.event("redis killed", pid=pid, signal="SIGKILL")
                gevent.sleep(max(0.0, self.t0 + back - time.monotonic()))
                try:
                    self.redis.start()
                except RuntimeError as e:
                    self.failures.append(str(e))
                    self.event("redis restart failed")
                    return
                self.event("redis restarted", pid=self.redis.pid, port=self.redis.port)
            else:
                node = self.victim
                pid = node.proc.pid
                node.up = False
                node.proc.stop(signal.SIGKILL)
                killed = time.monotonic()
                self.event("node killed", node=node.index, pid=pid, signal="SIGKILL")
                # Down --node-down s, even if an earlier event ran late.
                gevent.sleep(max(0.0, killed + (back - at) - time.monotonic()))
                try:
                    self.start_node(node)
                except (RuntimeError, OSError, ReplyError) as e:
                    self.failures.append(str(e))
                    self.event("node restart failed", node=node.index)
                    return
                self.event("node restarted", node=node.index, pid=node.proc.pid, port=node.port)

    # the Redis Cluster's chaos ----------------------------------------

    def room_slots(self) -> dict:
        """{room: its slot}: where each room's keys live ({CLUSTER:r:ROOM},
        the hash tag of gchat's room logs, CLUSTER being gchat's default)."""
        rc = self.redis.cluster
        return {room: rc.keyslot("{gchat:r:%s}" % room) for room in self.rooms}

    def masters_now(self) -> list:
        """[(master, its slot ranges)], the masters as a node alive sees them."""
        rc = self.redis.cluster
        by_id = {n.node_id: n for n in rc.nodes}
        return [
            (by_id[line.id], sorted(line.slots))
            for line in rc.view().values()
            if "master" in line.flags and not line.flags & BAD_FLAGS and line.id in by_id
        ]

    def kill_master(self, down: float):
        """Kill the master that holds the most rooms, wait for its replica
        to take over, start it again (at the earliest down s after the
        kill) and wait until it has rejoined, as a replica."""
        rc = self.redis.cluster
        slots = self.room_slots()

        def rooms_in(ranges):
            return sorted(r for r, q in slots.items() if any(a <= q <= b for a, b in ranges))

        victim, ranges = max(self.masters_now(), key=lambda m: len(rooms_in(m[1])))
        control = any(a <= rc.keyslot("{gchat:ctl}") <= b for a, b in ranges)
        self.redis.kill(victim)
        killed = time.monotonic()
        self.event(
            "master killed",
            redis_node=victim.name,
            port=victim.port,
            rooms=len(rooms_in(ranges)),
            control=control,
            signal="SIGKILL",
        )
        new = rc.wait_failover(victim)
        self.event(
            "failed over",
            to=new.name,
            port=new.port,
            seconds=round(time.monotonic() - killed, 2),
        )
        gevent.sleep(max(0.0, killed + down - time.monotonic()))
        rc.restart(victim)
        self.event("master restarted", redis_node=victim.name, role=rc.role(victim))

    def reshard(self, count: int):
        """Move count slots (redis-cli moves the lowest of the source's),
        keys and all, from the master whose lowest count slots hold the
        most rooms to the master with the fewest slots."""
        rc = self.redis.cluster
        slots = self.room_slots()
        masters = self.masters_now()

        def lowest(ranges):
            out: list = []
            for a, b in ranges:
                out.extend(range(a, min(b, a + count - len(out) - 1) + 1))
                if len(out) >= count:
                    break
            return set(out)

        def moving(ranges):
            low = lowest(ranges)
            return sorted(r for r, q in slots.items() if q in low)

        sources = [m for m in masters if sum(b - a + 1 for a, b in m[1]) >= count]
        if not sources:
            raise RuntimeError("no master has %d slots to move" % count)
        src, src_ranges = max(sources, key=lambda m: len(moving(m[1])))
        dst = min(
            (m for m in masters if m[0] is not src),
            key=lambda m: sum(b - a + 1 for a, b in m[1]),
        )[0]
        rooms = moving(src_ranges)
        t = time.monotonic()
        self.event("resharding", slots=count, src=src.name, to=dst.name, rooms=len(rooms))
        rc.reshard(src, dst, count)
        self.event(
            "slots moved",
            slots=count,
            src=src.name,
            to=dst.name,
            rooms=rooms,
            seconds=round(time.monotonic() - t, 2),
        )

    def redis_masters(self) -> list:
        """[{redis node, port, slots, rooms}] of the masters at the end."""
        slots = self.room_slots()
        return [
            {
                "redis_node": m.name,
                "port": m.port,
                "slots": sum(b - a + 1 for a, b in ranges),
                "rooms": sum(1 for q in slots.values() if any(a <= q <= b for a, b in ranges)),
            }
            for m, ranges in sorted(self.masters_now(), key=lambda m: m[0].name)
        ]

    def probe_stats(self, node: Node) -> dict:
        """/stats of a node, through a client of its own: its bus counters."""
        out: dict = {}
        buf = b""
        sock = None
        try:
            with gevent.Timeout(5, False):
                sock = gsocket.create_connection((HOST, node.port), timeout=5)
                sock.sendall(b"probe%d\n" % node.index)
                asked = False
                while True:
                    data = sock.recv(RECV_SIZE)
                    if not data:
                        break
                    buf += data
                    if not asked and b"You are probe" in buf:
                        sock.sendall(b"/stats\n")
                        asked = True
                    m = re.search(rb"^stats: (.*)$", buf, re.M)
                    if m:
                        for pair in m.group(1).decode("utf-8", "replace").split():
                            k, _, v = pair.partition("=")
                            if k.startswith("bus_") or k == "nodes":
                                out[k] = int(v) if v.isdigit() else v
                        sock.sendall(b"/quit\n")
                        break
        except OSError:
            pass
        finally:
            if sock is not None:
                sock.close()
        return out

    # the run -----------------------------------------------------------

    def run_all(self) -> dict:
        a = self.a
        schedule = plan(a.duration, a.redis_down, a.node_down, bool(a.redis_cluster))
        self.redis.start()
        for node in self.nodes:
            self.start_node(node)
        if a.redis_cluster:
            where = {"redis_masters": self.redis_masters()}
        else:
            where = {"redis_port": self.redis.port}
        self.event(
            "started",
            **where,
            nodes=[n.port for n in self.nodes],
            victim=self.victim.index,
        )
        self.start_stayers(a.stayers)
        self.event("stayers named", stayers=len(self.stayers))
        chaos_start = self.t0 = time.monotonic()
        senders = [
            gevent.spawn(self.stayer_send, c, self.rng.uniform(0, 1.0 / a.rate))
            for c in self.stayers
        ]
        churners = [gevent.spawn(self.churner, slot) for slot in range(a.clients - a.stayers)]
        chaos = gevent.spawn(self.chaos, schedule)
        gevent.sleep(a.duration)
        self.stop_sending = self.stop_churn = True
        self.event("sending stopped")
        chaos.join(timeout=START_TIMEOUT)
        if not chaos.dead:
            chaos.kill()
            self.failures.append("the chaos schedule did not finish")
        gevent.joinall(senders, timeout=5)
        gevent.joinall(churners, timeout=a.max_stay + ACCOUNT_WAIT + NAME_TIMEOUT)
        gevent.killall(churners, timeout=1)
        drain_start = time.monotonic()
        while not self.drained() and time.monotonic() - drain_start < a.drain_timeout:
            gevent.sleep(0.1)
        drained = self.drained()
        drain_s = round(time.monotonic() - drain_start, 2)
        self.event("drained" if drained else "drain timed out", seconds=drain_s)
        gevent.sleep(GRACE)
        for c in self.stayers:
            c.settled = c.accounted()
        dropped = [c for c in self.stayers if c.closed]
        if dropped:
            self.failures.append("stayers disconnected: %s" % " ".join(c.name for c in dropped))
        for c in self.stayers:
            c.reader.kill()
        for proc in [n.proc for n in self.nodes] + [self.redis]:
            if not proc.alive():  # died by itself: the chaos restarted all it killed
                self.failures.append(
                    "%s is not running at the end (exit %s):\n%s"
                    % (proc.name, proc.returncode, proc.log_tail())
                )
        node_stats = {"node%d" % n.index: self.probe_stats(n) for n in self.nodes if n.up}
        masters_at_end = None
        if a.redis_cluster and self.redis.alive():
            try:
                masters_at_end = self.redis_masters()
            except (RuntimeError, OSError, ReplyError) as e:
                self.failures.append("the Redis Cluster at the end: %s" % e)
        cpu = {"node%d" % n.index: n.proc.cpu() for n in self.nodes}
        cpu["redis"] = self.redis.cpu()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu["bench"] = round(ru.ru_utime + ru.ru_stime, 3)
        elapsed = round(time.monotonic() - chaos_start, 1)
        for c in self.stayers:
            c.close()
        for n in self.nodes:
            n.proc.stop(signal.SIGTERM)
        self.redis.stop(signal.SIGTERM)
        out = self.report(drained, drain_s, elapsed, cpu, node_stats, schedule, dropped)
        if a.redis_cluster:
            out["redis_masters"] = masters_at_end
        return out

    def report(self, drained, drain_s, elapsed, cpu, node_stats, schedule, dropped) -> dict:
        a = self.a
        keys = self.keys
        present: dict = {}
        for c in self.stayers:
            for i in c.seen:
                sender, seq = keys[i]
                present.setdefault(sender, set()).add(seq)
        owed_by = {}
        refused = unexplained = 0
        for c in self.stayers + self.sessions:
            want, gone, odd = owed(
                c.sent, c.refusals, present.get(c.name, set()) | c.echoed, c.settled
            )
            owed_by[c.name] = want
            refused += len(gone)
            unexplained += odd
            if odd and len(self.problems) < PROBLEMS_SHOWN:
                self.problems.append(
                    "refusals: %s got %d, but only %d of its lines reached "
                    "nobody" % (c.name, c.refusals, len(gone))
                )
        checked = [c for c in self.stayers if c not in dropped]
        # Room by room: a stayer is owed the lines of its room's senders,
        # and a line of another room is unexpected.
        room_of = {c.name: c.room for c in self.stayers + self.sessions}
        owed_in: dict = {}
        for name, want in owed_by.items():
            owed_in.setdefault(room_of[name], {})[name] = want
        counts = ("expected", "received", "lost", "duplicated", "out_of_order", "unexpected")
        res: dict = dict.fromkeys((*counts, "order_mismatches"), 0)
        res["problems"] = []
        refs: dict = {}
        for room in sorted(set(room_of.values())):
            r = verify(
                {c.name: (keys[i] for i in c.seen) for c in checked if c.room == room},
                owed_in.get(room, {}),
                limit=PROBLEMS_SHOWN - len(res["problems"]),
            )
            refs[room] = r.pop("reference")
            res["problems"] += r.pop("problems")
            for k in r:
                res[k] += r[k]
        breaks = {"gaps": 0, "duplicated": 0, "out_of_order": 0, "order": 0}
        broken_sessions = 0
        for c in self.sessions:
            r = check_session((keys[i] for i in c.seen), owed_in.get(c.room, {}), refs[c.room])
            if any(r.values()):
                broken_sessions += 1
                if len(res["problems"]) < PROBLEMS_SHOWN:
                    res["problems"].append("session %s on node%d: %s" % (c.name, c.node, r))
            for k in breaks:
                breaks[k] += r[k]
        refusals = sum(c.refusals for c in self.stayers + self.sessions)
        events = self.timeline()
        kinds = sorted({e[0] for e in schedule})
        kills = {k: sum(1 for e in events if e["event"] == EVENTS[k][0]) for k in kinds}
        restarts = {
            k: sum(1 for e in events if e["event"] == EVENTS[k][1]) for k in kinds if EVENTS[k][1]
        }
        planned = {k: sum(1 for e in schedule if e[0] == k) for k in kinds}
        out = {
            "result": None,
            "seed": a.seed,
            "duration_s": a.duration,
            "elapsed_s": elapsed,
            "nodes": a.nodes,
            "victim": self.victim.index,
            "redis_cluster": (
                {"masters": a.redis_cluster[0], "replicas": a.redis_cluster[1]}
                if a.redis_cluster
                else None
            ),
            "rooms": a.rooms,
            "clients": a.clients,
            "stayers": len(self.stayers),
            "churners": a.clients - a.stayers,
            "rate": a.rate,
            "churn_rate": a.churn_rate,
            "lines_sent": sum(c.sent for c in self.stayers + self.sessions),
            "stayer_lines_sent": sum(c.sent for c in self.stayers),
            "churner_lines_sent": sum(c.sent for c in self.sessions),
            "sessions": len(self.sessions),
            "deliveries_expected": res["expected"],
            "deliveries_received": res["received"],
            "lost": res["lost"],
            "duplicated": res["duplicated"],
            "out_of_order": res["out_of_order"],
            "unexpected": res["unexpected"],
            "order_mismatches": res["order_mismatches"],
            "refusals": refusals,
            "refused_lines_missing": refused,
            "refusals_unexplained": unexplained,
            "session_breaks": broken_sessions,
            "session_gaps": breaks["gaps"],
            "session_duplicated": breaks["duplicated"],
            "session_out_of_order": breaks["out_of_order"],
            "session_order": breaks["order"],
            "stayers_dropped": len(dropped),
            "sessions_cut": self.cut_by_kill,
            "server_lost_departures_seen": self.stayers[0].server_lost if self.stayers else 0,
            "connect_errors": self.connect_errors,
            "name_failures": self.name_failures,
            "name_errors": self.name_errors,
            "name_failures_by_node": {
                node: {"count": len(ts), "first_s": ts[0], "last_s": ts[-1]}
                for node, ts in sorted(self.name_failure_times.items())
            },
            "log_warnings": log_warnings(self.logdir, [n.proc.name for n in self.nodes]),
            "other_errors": self.error_lines,
            "drained": drained,
            "drain_s": drain_s,
            "redis_kills": kills.get("redis", 0),
            "node_kills": kills.get("node", 0),
            "master_kills": kills.get("master", 0),
            "reshards": kills.get("reshard", 0),
            "restarts": restarts,
            "chaos": events,
            "cpu_s": cpu,
            "node_stats": node_stats,
            "exit_codes": {
                p.name: p.exit_codes for p in [n.proc for n in self.nodes] + [self.redis]
            },
            "failures": self.failures,
            "problems": self.problems + res["problems"],
            "logs": self.logdir,
        }
        ok = (
            not self.failures
            and drained
            and kills == planned
            and restarts == {k: n for k, n in planned.items() if k in restarts}
            and all(
                out[k] == 0
                for k in (
                    "lost",
                    "duplicated",
                    "out_of_order",
                    "unexpected",
                    "order_mismatches",
                    "refusals_unexplained",
                    "session_breaks",
                    "stayers_dropped",
                )
            )
        )
        out["result"] = "PASS" if ok else "FAIL"
        out["warnings"] = warnings(node_stats) + self.more_warnings(out)
        return out

    def more_warnings(self, out: dict) -> list:
        """What is wrong without losing a line (reported, not failed on):
        churners whose name or /join went unanswered, nodes declared lost
        while they were alive."""
        found = []
        unanswered = sum(n for why, n in self.name_errors.items() if why.startswith("no answer"))
        if unanswered:
            found.append(
                "%d churners got no answer to their name or /join within %g s (%s)"
                % (
                    unanswered,
                    NAME_TIMEOUT,
                    ", ".join(
                        "%s: %d" % (node, v["count"])
                        for node, v in out["name_failures_by_node"].items()
                    ),
                )
            )
        for node, counts in out["log_warnings"].items():
            n = sum(v for text, v in counts.items() if text.startswith(DECLARED_LOST))
            if n:
                found.append(
                    "%s was declared lost while alive (%d 'declared lost ... rejoining' lines)"
                    % (node, n)
                )
        return found


# How a node says that the others took it for lost while it was alive.
DECLARED_LOST = "this node was declared lost"
WARNING_RE = re.compile(rb"^\S+ \S+ WARNING \S+ (.*)$", re.M)
SHOWN_WARNINGS = 8


def log_warnings(logdir: str, names: list) -> dict:
    """{node: {warning, ids and numbers blanked: count}}: what each node's
    logs (every incarnation) warned of, the most frequent first: a node
    declared lost, Redis lost, a room that lacked entries."""
    out: dict = {}
    for name in names:
        counts: dict = {}
        for fname in sorted(os.listdir(logdir)):
            if not (fname.startswith(name + ".") and fname.endswith(".log")):
                continue
            with open(os.path.join(logdir, fname), "rb") as f:
                for m in WARNING_RE.finditer(f.read()):
                    text = m.group(1).decode("utf-8", "replace")
                    text = re.sub(r"\b[0-9a-f]{12}\b", "ID", text)
                    text = re.sub(r"#[^\s:;,]+", "#ROOM", text)
                    text = re.sub(r"\d+(\.\d+)?", "N", text)[:160]
                    counts[text] = counts.get(text, 0) + 1
        if counts:
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:SHOWN_WARNINGS]
            out[name] = dict(top)
    return out


# ---------------------------------------------------------------------------


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m gchat_bench.cluster_soak", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--duration",
        type=float,
        default=120.0,
        help="seconds of sending, chaos included (default %(default)s)",
    )
    p.add_argument(
        "--clients", type=int, default=200, help="stayers + churners (default %(default)s)"
    )
    p.add_argument(
        "--stayers",
        type=int,
        default=None,
        help="clients that stay and are checked in full (default: a quarter)",
    )
    p.add_argument("--nodes", type=int, default=2, help="gchat nodes, >= 2 (default %(default)s)")
    p.add_argument(
        "--rooms",
        type=int,
        default=0,
        help="the clients in K rooms (#r0...), checked room by room (default: all in #lobby)",
    )
    p.add_argument(
        "--redis-cluster",
        metavar="MxR",
        default=None,
        help="run the nodes over a Redis Cluster of M masters with R >= 1 replicas "
        "each, and kill a master, kill a node and move --reshard-slots slots "
        "instead of killing Redis (default: one redis-server)",
    )
    p.add_argument(
        "--reshard-slots",
        type=int,
        default=1000,
        help="with --redis-cluster: slots the reshard moves (default %(default)s)",
    )
    p.add_argument(
        "--rate", type=float, default=1.0, help="lines/s each stayer sends (default %(default)s)"
    )
    p.add_argument(
        "--churn-rate",
        type=float,
        default=1.0,
        help="lines/s a churner sends while connected (default %(default)s)",
    )
    p.add_argument("--min-stay", type=float, default=1.0, help="(default %(default)s s)")
    p.add_argument(
        "--max-stay",
        type=float,
        default=5.0,
        help="a churner stays connected this long at most (default %(default)s s)",
    )
    p.add_argument(
        "--node-timeout",
        type=float,
        default=None,
        help="the nodes' --node-timeout (default 2; with --redis-cluster 5, gchat's "
        "own: a failover takes 2-3 s, and a node whose heartbeat waits that long "
        "must not be taken for lost)",
    )
    p.add_argument(
        "--redis-down",
        type=float,
        default=None,
        help="seconds Redis (with --redis-cluster: the killed master) stays dead "
        "(default: 5%% of --duration, 1-3)",
    )
    p.add_argument(
        "--node-down",
        type=float,
        default=None,
        help="seconds the victim node stays dead (default: --node-timeout + 1)",
    )
    p.add_argument(
        "--bus-backlog", type=int, default=None, help="the nodes' --bus-backlog (default: theirs)"
    )
    p.add_argument("--node-args", default="", help="more options for every node")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="longest wait for the last lines after sending stops (default %(default)s)",
    )
    p.add_argument(
        "--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server"
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep-logs", action="store_true", help="keep the logs on success too")
    p.add_argument(
        "--dump",
        action="store_true",
        help="write what each stayer sent and received into the logs (implies --keep-logs)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.seed is None:
        a.seed = random.randrange(1 << 31)
    a.keep_logs = a.keep_logs or a.dump
    if a.nodes < 2:
        p.error("--nodes must be at least 2 (one of them is killed)")
    if a.redis_cluster is not None:
        try:
            a.redis_cluster = parse_redis_cluster(a.redis_cluster)
        except BenchError as e:
            p.error(str(e))
        if a.redis_cluster[1] < 1:
            p.error(
                "--redis-cluster needs a replica per master (MxR, R >= 1): "
                "a master is killed and its replica takes over"
            )
        if not 0 < a.reshard_slots < 16384:
            p.error("--reshard-slots must be between 1 and 16383")
    if a.node_timeout is None:
        a.node_timeout = 5.0 if a.redis_cluster else 2.0
    if a.rooms < 0:
        p.error("--rooms must not be negative")
    if a.stayers is None:
        a.stayers = max(2, a.clients // 4, 2 * a.rooms)
        a.stayers = min(a.stayers, a.clients)
    if not 2 <= a.stayers <= a.clients:
        p.error("--stayers must be between 2 and --clients")
    if a.stayers < a.rooms:
        p.error("--stayers must be at least --rooms (every room is checked through its stayers)")
    if a.rate <= 0 or a.churn_rate <= 0 or not 0 < a.min_stay <= a.max_stay:
        p.error("rates must be > 0 and 0 < --min-stay <= --max-stay")
    if a.redis_down is None:
        a.redis_down = min(3.0, max(1.0, a.duration * 0.05))
    if a.node_down is None:
        a.node_down = a.node_timeout + 1.0
    try:
        plan(a.duration, a.redis_down, a.node_down, bool(a.redis_cluster))
    except ValueError as e:
        p.error(str(e))
    return a


def print_table(res: dict):
    skip = {
        "chaos",
        "problems",
        "node_stats",
        "cpu_s",
        "other_errors",
        "failures",
        "name_errors",
        "name_failures_by_node",
        "log_warnings",
        "warnings",
        "exit_codes",
    }
    for key, value in res.items():
        if key not in skip:
            print("%-28s %s" % (key, value))
    print("%-28s %s" % ("cpu_s", " ".join("%s=%s" % kv for kv in res["cpu_s"].items())))
    print(
        "%-28s %s"
        % (
            "exit_codes",
            " ".join("%s=%s" % (k, ",".join(map(str, v))) for k, v in res["exit_codes"].items()),
        )
    )
    for node, stats in res["node_stats"].items():
        print("%-28s %s" % ("stats " + node, " ".join("%s=%s" % kv for kv in stats.items())))
    print("chaos:")
    for ev in res["chaos"]:
        extra = {k: v for k, v in ev.items() if k not in ("t", "event")}
        print("  %8.2fs  %-20s %s" % (ev["t"], ev["event"], extra or ""))
    for line in res["failures"] + res["problems"]:
        print("  ! " + line)
    for line in res["warnings"]:
        print("  warning: " + line)
    if res["name_errors"]:
        print("name refused: %s" % res["name_errors"])
        print("name failures by node: %s" % res["name_failures_by_node"])
    for node, counts in res["log_warnings"].items():
        for text, n in counts.items():
            print("  log %s: %dx %s" % (node, n, text))
    if res["other_errors"]:
        print("other error lines: %s" % res["other_errors"])
    print(res["result"])


def main(argv=None) -> int:
    a = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logdir = tempfile.mkdtemp(prefix="gchat-cluster-soak-")

    def on_term(*_):
        kill_all()
        os._exit(143)

    signal.signal(signal.SIGTERM, on_term)
    # Bounded: startup, the soak, the churners' last sessions, the drain.
    limit = 2 * START_TIMEOUT + a.duration + a.max_stay + a.drain_timeout + 60
    soak: Optional[Soak] = None
    try:
        soak = Soak(a, logdir)
        with gevent.Timeout(limit, RuntimeError("the soak overran its %g s bound" % limit)):
            res = soak.run_all()
    except (RuntimeError, OSError, ReplyError) as e:
        res = {
            "result": "FAIL",
            "seed": a.seed,
            "failures": [str(e)],
            "chaos": soak.timeline() if soak is not None else [],
            "logs": logdir,
        }
    finally:
        stop_all()
    if res["result"] == "PASS" and not a.keep_logs:
        shutil.rmtree(logdir, ignore_errors=True)
        res["logs"] = None
    if a.json:
        print(json.dumps(res, default=str))
    elif "lost" in res:
        print_table(res)
    else:
        print("FAIL: %s (logs: %s)" % ("; ".join(res["failures"]), logdir))
    return 0 if res["result"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
