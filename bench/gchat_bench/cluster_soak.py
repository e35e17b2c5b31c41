"""Cluster chaos soak: N gchat nodes on one Redis, churning clients, and
Redis and a node killed (kill -9) and restarted while they talk.

    python -m gchat_bench.cluster_soak --duration 120 --clients 200 --nodes 2 --json

It starts everything itself, on 127.0.0.1 only: a redis-server on a free
port (no persistence, so a restart comes back empty, as after a crash
without AOF), and N `gchat --redis URL --node-timeout 2 --flood-rate 0`
nodes.  One gevent process plays all the clients, in one room (#lobby):

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
(also when something could not be started).  Every process started is in
its own process group, killed at exit, and told to die with this one
(PR_SET_PDEATHSIG).  Logs go to a temporary directory, kept on failure.

This module is the scenario and the command line; the checks are in
soak_checks.py, a client in soak_client.py, the processes (redis-server
through processes.RedisServer, as for the bench and the tests) in
soak_procs.py.
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

from gchat_bench.processes import HOST
from gchat_bench.soak_checks import PROBLEMS_SHOWN, check_session, owed, verify, warnings
from gchat_bench.soak_client import RECV_SIZE, Client
from gchat_bench.soak_procs import START_TIMEOUT, Node, RedisProc, gchat_command, kill_all, stop_all

NAME_TIMEOUT = 10.0  # a stayer or churner getting "You are NAME"
ACCOUNT_WAIT = 1.0  # a churner waits this long for its lines to come back before it leaves
GRACE = 1.0  # after the drain: late duplicates and refusals still count
CHAOS_AT = (("redis", 0.20), ("node", 0.35), ("redis", 0.55))
SCHEDULE_MARGIN = 1.0  # seconds between one event's end and the next's start


def plan(duration: float, redis_down: float, node_down: float) -> list:
    """The chaos schedule: [(kind, kill at, restart at)], in order, each
    event over SCHEDULE_MARGIN s before the next and before the end."""
    events = []
    for kind, frac in CHAOS_AT:
        at = round(duration * frac, 2)
        events.append((kind, at, round(at + (redis_down if kind == "redis" else node_down), 2)))
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
        self.redis = RedisProc(a.redis_server, logdir)
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

    def node_argv(self) -> list:
        argv = gchat_command() + [
            "--redis",
            self.redis.url,
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
        node.start(self.node_argv())

    # clients -----------------------------------------------------------

    def start_stayers(self, count: int):
        homes = [n.index for n in self.nodes if n is not self.victim]
        for i in range(count):
            c = Client(self, "s%d" % i, homes[i % len(homes)], stayer=True)
            c.connect(self.nodes[c.node].port)
            self.stayers.append(c)
        for c in self.stayers:
            c.named.wait(NAME_TIMEOUT)
            if c.state == 0 or c.closed:
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
            c = Client(self, "c%d_%d" % (slot, generation), node.index, stayer=False)
            try:
                c.connect(node.port)
            except OSError:
                self.connect_errors += 1
                gevent.sleep(0.2)
                continue
            c.named.wait(NAME_TIMEOUT)
            if c.state == 0:
                self.name_failures += 1
                why = c.name_error or ("closed" if c.closed else "no answer")
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
        last = {c.nameb: c.echo_max for c in self.stayers + self.sessions if c.echo_max >= 0}
        for r in self.stayers:
            if r.closed:
                continue
            mx = r.max_seen
            for sender, top in last.items():
                if mx.get(sender, -1) < top:
                    return False
        return True

    # chaos -------------------------------------------------------------

    def chaos(self, schedule: list):
        for kind, at, back in schedule:
            pause = self.t0 + at - time.monotonic()
            if pause > 0:
                gevent.sleep(pause)
            if kind == "redis":
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
                self.event("node killed", node=node.index, pid=pid, signal="SIGKILL")
                gevent.sleep(max(0.0, self.t0 + back - time.monotonic()))
                try:
                    self.start_node(node)
                except RuntimeError as e:
                    self.failures.append(str(e))
                    self.event("node restart failed", node=node.index)
                    return
                self.event("node restarted", node=node.index, pid=node.proc.pid, port=node.port)

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
        schedule = plan(a.duration, a.redis_down, a.node_down)
        self.redis.start()
        for node in self.nodes:
            self.start_node(node)
        self.event(
            "started",
            redis_port=self.redis.port,
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
        return self.report(drained, drain_s, elapsed, cpu, node_stats, schedule, dropped)

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
        res = verify({c.name: (keys[i] for i in c.seen) for c in checked}, owed_by)
        ref = res.pop("reference")
        breaks = {"gaps": 0, "duplicated": 0, "out_of_order": 0, "order": 0}
        broken_sessions = 0
        for c in self.sessions:
            r = check_session((keys[i] for i in c.seen), owed_by, ref)
            if any(r.values()):
                broken_sessions += 1
                if len(res["problems"]) < PROBLEMS_SHOWN:
                    res["problems"].append("session %s on node%d: %s" % (c.name, c.node, r))
            for k in breaks:
                breaks[k] += r[k]
        refusals = sum(c.refusals for c in self.stayers + self.sessions)
        events = self.timeline()
        kills = {
            "redis": sum(1 for e in events if e["event"] == "redis killed"),
            "node": sum(1 for e in events if e["event"] == "node killed"),
        }
        restarts = {
            "redis": sum(1 for e in events if e["event"] == "redis restarted"),
            "node": sum(1 for e in events if e["event"] == "node restarted"),
        }
        planned = {
            "redis": sum(1 for e in schedule if e[0] == "redis"),
            "node": sum(1 for e in schedule if e[0] == "node"),
        }
        out = {
            "result": None,
            "seed": a.seed,
            "duration_s": a.duration,
            "elapsed_s": elapsed,
            "nodes": a.nodes,
            "victim": self.victim.index,
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
            "other_errors": self.error_lines,
            "drained": drained,
            "drain_s": drain_s,
            "redis_kills": kills["redis"],
            "node_kills": kills["node"],
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
            and restarts == planned
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
        out["warnings"] = warnings(node_stats)
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
        default=2.0,
        help="the nodes' --node-timeout (default %(default)s)",
    )
    p.add_argument(
        "--redis-down",
        type=float,
        default=None,
        help="seconds Redis stays dead (default: 5%% of --duration, 1-3)",
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
    if a.stayers is None:
        a.stayers = max(2, a.clients // 4)
    if not 2 <= a.stayers <= a.clients:
        p.error("--stayers must be between 2 and --clients")
    if a.rate <= 0 or a.churn_rate <= 0 or not 0 < a.min_stay <= a.max_stay:
        p.error("rates must be > 0 and 0 < --min-stay <= --max-stay")
    if a.redis_down is None:
        a.redis_down = min(3.0, max(1.0, a.duration * 0.05))
    if a.node_down is None:
        a.node_down = a.node_timeout + 1.0
    try:
        plan(a.duration, a.redis_down, a.node_down)
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
    except (RuntimeError, OSError) as e:
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
