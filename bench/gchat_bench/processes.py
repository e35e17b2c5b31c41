"""Child processes for the bench and the tests alike: a free loopback port,
children that die with this process, and redis-server.

Process control lives here once.  The bench's clusters (servers.py), the
bus cost probe (bus_cost.py), the chaos soak (soak_procs.py) and the
tests' ``redis_server`` fixture all start redis-server through
RedisServer, so a fix to how one is started, awaited or stopped reaches
them all.

RedisServer holds everything one redis-server needs: its command line
(``_argv``), where it runs (workdir), readiness, a crash, a restart on
the same port, a clean stop.  A Redis Cluster (RedisCluster) is a group
of these: ClusterNode is a RedisServer whose argv adds
``--cluster-enabled yes`` and which runs in a workdir of its own for its
nodes.conf; ``redis-cli --cluster`` joins, reshards and rebalances them,
and RedisCluster waits, with deadlines, until the nodes agree.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from typing import Callable, Optional

HOST = "127.0.0.1"
# redis-server starts in milliseconds; a busy machine with a cold disk can
# take seconds, never this long.
START_TIMEOUT = 30.0
# SIGTERM, then this long for redis-server to exit before SIGKILL.
STOP_TIMEOUT = 5.0
# Polling for an answer and for an exit: redis-server tells nothing we could
# wait on instead (its log is a file, its exit has no event to wait for
# under gevent without monkey-patching).
POLL_INTERVAL = 0.02
# The end of a log that log_tail() reads: enough for its last lines.
LOG_TAIL_BYTES = 64 * 1024


class StartError(RuntimeError):
    """A child process could not be started or did not get ready."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now, for a server
    that cannot be given port 0.  Bound then released: another program may
    take it meanwhile, so a caller that starts a server on it must be ready
    to retry (RedisServer.start does)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the process that started it dies.

    A bench or a test run killed hard must not leave a server behind
    (Linux prctl PR_SET_PDEATHSIG, which is per thread: start children
    from the thread that lives as long as they should; elsewhere a no-op).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except Exception:
        pass


def redis_executable(path: Optional[str] = None) -> str:
    """path if given, else redis-server on PATH or where Debian puts it
    (/usr/bin, or /usr/sbin, which a non-root PATH may not hold)."""
    cands = (
        [path]
        if path
        else [shutil.which("redis-server"), "/usr/bin/redis-server", "/usr/sbin/redis-server"]
    )
    for cand in cands:
        if cand and os.access(cand, os.X_OK):
            return cand
    raise StartError(
        "no redis-server at %s" % path
        if path
        else "no redis-server on PATH (apt-get install redis-server)"
    )


class RedisServer:
    """One redis-server, a child of this process, on a free port of
    127.0.0.1, with no persistence (``--save '' --appendonly no``): a
    restart comes back empty, as after a crash without AOF.

    start() waits until it answers; kill() is a crash (SIGKILL);
    start() again comes back on the same port (its clients know that
    one); stop() ends it for good.  The exit status of every process it
    ran is in exit_codes, in order; log_tail() is the end of their log.

    workdir: a directory to run in (created if need be), where its log is
    redis.log and stays (the soak keeps its logs with the others').
    Without one it leaves no file, even when this process is killed hard
    (a benchmark's cluster): it runs in the shared temporary directory
    with a dump file name of its own, which it never writes and so never
    loads (where a dump.rdb someone left would be loaded), and logs to an
    unlinked temporary file.

    sleep: how to wait between polls; gevent.sleep in a gevent program
    that does not monkey-patch, so that its other greenlets run meanwhile.
    """

    host = HOST

    def __init__(
        self,
        executable: Optional[str] = None,
        *,
        password: Optional[str] = None,
        tls: Optional[Sequence] = None,
        workdir: Optional[str] = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """tls: (certificate, key, CA) files: it then speaks TLS only
        (rediss://), on its one port, without asking clients for theirs."""
        self.executable = redis_executable(executable)
        self.password = password
        self.tls = tls
        self.sleep = sleep
        self.port = 0
        self._new_ports()
        self.dbfilename = "gchat-redis-%s.rdb" % uuid.uuid4().hex
        if workdir is None:
            self.dir = tempfile.gettempdir()
            self._log = tempfile.TemporaryFile()
        else:
            self.dir = workdir
            os.makedirs(workdir, exist_ok=True)
            self._log = open(os.path.join(workdir, "redis.log"), "a+b")
        self.proc: Optional[subprocess.Popen] = None
        self.exit_codes: list = []
        self._port_known = False  # started once: clients have self.port, keep it

    @property
    def url(self) -> str:
        auth = ":%s@" % self.password if self.password else ""
        if self.tls:
            return "rediss://%s%s:%d/0?ssl_ca_certs=%s" % (auth, self.host, self.port, self.tls[2])
        return "redis://%s%s:%d/0" % (auth, self.host, self.port)

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> RedisServer:
        """Start it and wait until it answers.  Before its first start
        a port taken since free_port() picked it is swapped for another;
        after, the same port is tried again until timeout (the one that
        took it may let go)."""
        if self.alive():
            raise StartError("redis-server is already running on port %d" % self.port)
        deadline = time.monotonic() + timeout
        while True:
            self._spawn()
            if self._wait_ready(deadline):
                self._port_known = True
                return self
            self._reap()
            if "in use" not in self.log_tail(5):
                raise StartError(
                    "redis-server exited (exit %s) on port %d:\n%s"
                    % (self.exit_codes[-1], self.port, self.log_tail())
                )
            if time.monotonic() >= deadline:
                raise StartError(
                    "redis-server found port %d taken until the timeout:\n%s"
                    % (self.port, self.log_tail())
                )
            if not self._port_known:
                self._new_ports()
            self.sleep(POLL_INTERVAL)

    def _new_ports(self) -> None:
        """Pick its port: at construction, and again when its first start
        found the port taken (ClusterNode picks its bus port too)."""
        self.port = free_port()

    def _argv(self) -> list:
        if self.tls:
            cert, key, ca = self.tls
            listen = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(cert),
                "--tls-key-file",
                str(key),
                "--tls-ca-cert-file",
                str(ca),
                "--tls-auth-clients",
                "no",
            ]
        else:
            listen = ["--port", str(self.port)]
        argv = [
            self.executable,
            *listen,
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--dbfilename",
            self.dbfilename,
            "--logfile",
            "",
            "--daemonize",
            "no",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    def _spawn(self) -> None:
        # --logfile "": it logs to stdout, our log file, with what it
        # prints before it would open a log file (a bad option).  Its own
        # session: a Ctrl-C at the terminal reaches this process only,
        # which then stops redis-server in its turn (after the nodes of a
        # cluster, so that they leave while it is there).
        try:
            self.proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        except OSError as e:
            raise StartError("cannot start %s: %s" % (self.executable, e)) from None

    def _wait_ready(self, deadline: float) -> bool:
        """True once it answers; False if it exited first."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self._answering_pid() == self.proc.pid:
                return True
            self.sleep(POLL_INTERVAL)
        self.kill()
        raise StartError(
            "redis-server on port %d did not answer:\n%s" % (self.port, self.log_tail())
        )

    def _answering_pid(self) -> Optional[int]:
        """The pid of the redis-server that answers on self.port (INFO
        server), None if none does.  Not just PING: another redis-server
        that took the port first would answer PONG while ours, unable to
        bind, is still on its way out.  A connection to loopback is refused
        or accepted at once, and a ready server answers at once."""
        tls = {}
        if self.tls:
            tls = {"ssl": True, "ssl_ca_certs": str(self.tls[2])}
        client = _redis().Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            **tls,
        )
        try:
            return int(client.info("server")["process_id"])
        except (OSError, _redis().RedisError):  # not (yet) serving us
            return None
        finally:
            client.close()

    def kill(self) -> None:
        """A crash: SIGKILL, and reap it."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
        self._reap()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """End it for good: SIGTERM (SIGKILL if it outlives timeout), and
        close its log.  Also after kill()."""
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                self.sleep(POLL_INTERVAL)
            if self.proc.poll() is None:
                self.proc.kill()
        self._reap()
        self._log.close()

    def _reap(self) -> None:
        """Wait for the ended process (at once after SIGKILL or an exit) and
        keep its status."""
        if self.proc is None:
            return
        self.exit_codes.append(self.proc.wait())
        self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        if self._log.closed:
            return "(log closed)"
        # pread: redis-server writes at the offset it shares with our file
        # object (the unlinked file is not opened for appending); reading
        # must not move it.
        fd = self._log.fileno()
        size = os.fstat(fd).st_size
        data = os.pread(fd, min(size, LOG_TAIL_BYTES), max(0, size - LOG_TAIL_BYTES))
        return b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")


# --- Redis Cluster -----------------------------------------------------------

CLUSTER_SLOTS = 16384
# How long a cluster's wait may last: to form, to agree again after a
# reshard, to fail over.  With a node timeout of 1 s each takes a few
# seconds; this is for a loaded machine, and a wait that expires says why.
CLUSTER_TIMEOUT = 60.0
# A cluster's poll asks every node three questions (on one connection):
# less eager than POLL_INTERVAL.
CLUSTER_POLL_INTERVAL = 0.05
# One exchange with one node over loopback: the answer is immediate, or the
# node is stuck.
CALL_TIMEOUT = 5.0
# The flags in CLUSTER NODES of a node that its viewer cannot count on.
BAD_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


class ClusterError(StartError):
    """A Redis Cluster did not form, agree or fail over before its deadline,
    or redis-cli --cluster failed.  The message ends with the tails of the
    nodes' logs."""


class ReplyError(Exception):
    """An error reply (``-ERR ...``, ``-MOVED ...``) from redis-server."""


def redis_cli_executable(server: str) -> str:
    """The redis-cli beside the redis-server executable server, else the
    one on PATH (the same Debian package installs both)."""
    cands = [
        os.path.join(os.path.dirname(server), "redis-cli"),
        shutil.which("redis-cli"),
        "/usr/bin/redis-cli",
    ]
    for cand in cands:
        if cand and os.access(cand, os.X_OK):
            return cand
    raise StartError("no redis-cli beside %s nor on PATH (apt-get install redis-tools)" % server)


def _redis():
    """redis-py, which the cluster extra installs (a cluster of gchat nodes
    needs it anyway); imported when a redis-server is first asked
    something, so that the rest of the bench works without it."""
    try:
        import redis
    except ImportError:
        raise StartError(
            "starting redis-server needs redis-py: pip install 'gchat[cluster]'"
        ) from None
    return redis


def redis_calls(port: int, *commands: Sequence, host: str = HOST) -> list:
    """Send commands (each a sequence of arguments: str, bytes or int) to
    the redis-server on host:port in one round trip, and return their
    replies as Redis sent them (bytes, int, None or lists of them: no
    response callbacks, so INFO is text for parse_info).  An error reply
    raises ReplyError."""
    redis = _redis()
    client = redis.Redis(
        host=host, port=port, socket_timeout=CALL_TIMEOUT, socket_connect_timeout=CALL_TIMEOUT
    )
    client.response_callbacks.clear()  # the replies as they came
    try:
        pipe = client.pipeline(transaction=False)
        for cmd in commands:
            pipe.execute_command(*cmd)
        return pipe.execute()
    except redis.ResponseError as err:
        raise ReplyError(str(err)) from None
    except redis.ConnectionError as err:
        raise ConnectionError(str(err)) from None
    finally:
        client.close()


def redis_call(port: int, *args, host: str = HOST) -> object:
    """One command to the redis-server on host:port; its reply."""
    return redis_calls(port, args, host=host)[0]


def parse_info(reply: object) -> dict:
    """{field: value} of an INFO reply (both as str)."""
    assert isinstance(reply, bytes), reply
    fields = {}
    for line in reply.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value
    return fields


class NodeLine:
    """One line of CLUSTER NODES: what its viewer thinks of one node."""

    __slots__ = ("id", "port", "flags", "master", "link", "slots", "open_slots")

    def __init__(self, line: str):
        f = line.split()
        self.id = f[0]
        # ip:port@cport[,hostname]; ":0@0" while the address is unknown
        hostport = f[1].split(",")[0].split("@")[0]
        self.port = int(hostport.rsplit(":", 1)[1] or 0)
        self.flags = frozenset(f[2].split(","))
        self.master: Optional[str] = None if f[3] == "-" else f[3]
        self.link = f[7]
        # "0-5460", "5461", and (in its own line only) "[5461->-id]"
        # migrating or "[5461-<-id]" importing.
        self.slots: list = []
        self.open_slots = False
        for tok in f[8:]:
            if tok.startswith("["):
                self.open_slots = True
                continue
            first, _, last = tok.partition("-")
            self.slots.append((int(first), int(last or first)))


def parse_cluster_nodes(reply: object) -> dict:
    """{node id: NodeLine} of a CLUSTER NODES reply."""
    assert isinstance(reply, bytes), reply
    lines = reply.decode("utf-8", "replace").splitlines()
    return {n.id: n for n in (NodeLine(line) for line in lines if line.strip())}


def _coverage_gap(slot_map: Sequence) -> Optional[str]:
    """What is wrong with sorted (first, last, id) ranges that should cover
    every slot once; None if nothing."""
    expected = 0
    for first, last, _ in slot_map:
        if first != expected:
            return "slots %d-%d %s" % (
                min(first, expected),
                max(first, expected) - 1 if first > expected else expected - 1,
                "uncovered" if first > expected else "owned twice",
            )
        expected = last + 1
    if expected != CLUSTER_SLOTS:
        return "slots %d-%d uncovered" % (expected, CLUSTER_SLOTS - 1)
    return None


class ClusterNode(RedisServer):
    """A RedisServer that is a node of a Redis Cluster.

    Its argv adds: ``--cluster-enabled yes``; ``--cluster-config-file
    nodes.conf``, in its own workdir, so that start() after kill() brings
    back the same node (its id, its view of the cluster) which rejoins as
    a replica of whoever took its slots; ``--cluster-port`` a second free
    port (the default, port + 10000, may be taken or past 65535);
    ``--cluster-node-timeout``; ``--repl-diskless-sync-delay 0`` (7.0
    waits 5 s for more replicas before a full sync: every replica would
    take 5 s to attach); ``--shutdown-timeout 0`` (stop() does not wait
    for replicas to catch up).  Needs redis-server 7.0 (as does sharded
    pub/sub)."""

    def __init__(
        self,
        executable: Optional[str] = None,
        *,
        workdir: str,
        name: str,
        node_timeout_ms: int = 1000,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.cluster_port = 0
        super().__init__(executable, workdir=workdir, sleep=sleep)
        self.name = name
        self.node_timeout_ms = node_timeout_ms
        # CLUSTER MYID once started; nodes.conf keeps it across restarts.
        self.node_id = ""

    def __repr__(self) -> str:
        return "<%s %s:%d %s>" % (self.name, self.host, self.port, self.node_id[:8])

    @property
    def address(self) -> str:
        """host:port, as redis-cli --cluster wants it."""
        return "%s:%d" % (self.host, self.port)

    def _new_ports(self) -> None:
        super()._new_ports()
        self.cluster_port = free_port()
        while self.cluster_port == self.port:
            self.cluster_port = free_port()

    def _argv(self) -> list:
        return super()._argv() + [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            str(self.cluster_port),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            "--repl-diskless-sync-delay",
            "0",
            "--shutdown-timeout",
            "0",
        ]

    def start(self, timeout: float = START_TIMEOUT) -> ClusterNode:
        super().start(timeout)
        node_id = redis_call(self.port, "CLUSTER", "MYID")
        assert isinstance(node_id, bytes)
        self.node_id = node_id.decode()
        return self


class RedisCluster:
    """A Redis Cluster of redis-servers, children of this process on free
    ports of 127.0.0.1: ``masters`` masters with ``replicas`` replicas each,
    every one a ClusterNode (a RedisServer with ``--cluster-enabled yes``
    and a workdir of its own for its nodes.conf and its redis.log).

    start() starts the nodes, joins them with ``redis-cli --cluster create
    ... --cluster-replicas R --cluster-yes``, and waits until the cluster
    has converged (below).  As a context manager it starts on entry and
    stops on exit.  stop() ends every node and removes the directory it
    made (a ``workdir`` given is kept, with the nodes' logs in it).

    Converged, what every wait here waits for, among the nodes alive:
    each answers ``cluster_state:ok``; each one's CLUSTER NODES covers all
    16384 slots exactly once, with no slot migrating or importing, and
    gives the same slot map and the same master to every replica as the
    others', every slot's master alive; each knows all the others, none
    flagged fail, pfail, handshake or noaddr; each replica says ``role:slave`` and
    ``master_link_status:up``.  Every wait polls with a deadline
    (``timeout``, CLUSTER_TIMEOUT by default) and raises ClusterError
    with what was still missing and the tails of the nodes' logs.

    - ``url``: redis://127.0.0.1:PORT/0 of the first master alive; a
      cluster client finds the other nodes from it
      (``redis.cluster.RedisCluster.from_url(cluster.url)``).
    - ``nodes``: the ClusterNodes, in the order started (the first
      ``masters`` were the masters at creation); ``node.node_id``,
      ``node.address``, and RedisServer's ``port``, ``url``, ``alive()``,
      ``log_tail()``.
    - ``masters()``, ``replicas()``: the nodes alive in that role now (each
      is asked, INFO replication); ``replicas_of(master)``.
    - ``keyslot(key)``, ``master_of_slot(slot)``, ``master_for_key(key)``,
      ``slots_of(master)``, ``slot_counts()``: asked of a node alive.
    - ``kill(node)``: SIGKILL (its replicas are noted first, for
      wait_failover); ``wait_failover(old_master)``: until one of its
      replicas is master of its slots and the cluster has converged
      again; returns the new master.  ``restart(node)``: start a killed
      node again (same ports, same nodes.conf) and wait until it has
      rejoined, as a replica if its slots were taken.
    - ``add_master()``: a new empty node, joined with ``redis-cli --cluster
      add-node``; ``reshard(from_node, to_node, slots)``: ``redis-cli
      --cluster reshard`` of that many slots (redis-cli takes the lowest
      of from_node's); ``rebalance()``: ``redis-cli --cluster rebalance
      --cluster-use-empty-masters``.  Each waits for convergence after.
    - ``commandstats()``, ``commands_processed()``, ``errorstats()``: per
      master {command: calls} (INFO commandstats), total_commands_processed
      (INFO stats), {error: count} (INFO errorstats: MOVED and ASK are how
      often clients were redirected); ``reset_stats()`` zeroes them
      (CONFIG RESETSTAT on every node).

    Nodes are questioned through redis-py (redis_calls), and redis-cli
    runs to completion (a reshard of 1,000 slots
    takes about a second): a gevent program that does not monkey-patch
    passes ``sleep=gevent.sleep`` so that its greenlets run between polls,
    but is blocked during each question and each redis-cli.  No password,
    no TLS.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 1000,
        executable: Optional[str] = None,
        *,
        workdir: Optional[str] = None,
        timeout: float = CLUSTER_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if masters < 3:
            raise ValueError("redis-cli --cluster create wants 3 masters at least")
        self.executable = redis_executable(executable)
        self.cli = redis_cli_executable(self.executable)
        self.n_masters = masters
        self.n_replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.timeout = timeout
        self.sleep = sleep
        self._workdir = workdir
        self.dir: Optional[str] = None
        self.nodes: list = []
        # {id of a killed master: ids of its replicas when it was killed}
        self._replicas_at_kill: dict = {}

    # -- life ---------------------------------------------------------------

    def start(self) -> RedisCluster:
        if self.dir is not None:
            raise ClusterError("this RedisCluster was started already")
        if self._workdir is None:
            self.dir = tempfile.mkdtemp(prefix="gchat-rcluster-")
        else:
            self.dir = self._workdir
            os.makedirs(self.dir, exist_ok=True)
        try:
            for _ in range(self.n_masters * (1 + self.n_replicas)):
                self._start_node()
            self._cli(
                "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas",
                str(self.n_replicas),
                "--cluster-yes",
            )
            self.wait_converged("the cluster to form", replicas=self.n_masters * self.n_replicas)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> RedisCluster:
        return self.start() if self.dir is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """End every node (SIGTERM to all at once, then each is awaited),
        and remove the directory made for them."""
        for node in self.nodes:
            if node.alive():
                node.proc.terminate()
        for node in self.nodes:
            node.stop()
        if self._workdir is None and self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _start_node(self) -> ClusterNode:
        assert self.dir is not None
        name = "node%d" % len(self.nodes)
        node = ClusterNode(
            self.executable,
            workdir=os.path.join(self.dir, name),
            name=name,
            node_timeout_ms=self.node_timeout_ms,
            sleep=self.sleep,
        )
        self.nodes.append(node)  # before start(): stop() closes its log
        return node.start()

    # -- what the nodes say -------------------------------------------------

    @property
    def url(self) -> str:
        masters = self.masters()
        return (masters[0] if masters else self.nodes[0]).url

    def live(self) -> list:
        return [n for n in self.nodes if n.alive()]

    def role(self, node: ClusterNode) -> str:
        """ "master" or "slave", as node says (INFO replication)."""
        return parse_info(redis_call(node.port, "INFO", "replication"))["role"]

    def masters(self) -> list:
        return [n for n in self.live() if self.role(n) == "master"]

    def replicas(self) -> list:
        return [n for n in self.live() if self.role(n) == "slave"]

    def view(self, node: Optional[ClusterNode] = None) -> dict:
        """{id: NodeLine}: CLUSTER NODES of node, or of the first node alive."""
        return parse_cluster_nodes(redis_call(self._asked(node).port, "CLUSTER", "NODES"))

    def replicas_of(self, master: ClusterNode) -> list:
        """The nodes that replicate master, as a node alive sees it."""
        return [
            self._by_id(line.id)
            for line in self.view().values()
            if line.master == master.node_id and line.id in self._ids()
        ]

    def keyslot(self, key) -> int:
        slot = redis_call(self._asked().port, "CLUSTER", "KEYSLOT", key)
        assert isinstance(slot, int)
        return slot

    def master_of_slot(self, slot: int) -> ClusterNode:
        for line in self.view().values():
            if "master" in line.flags and any(a <= slot <= b for a, b in line.slots):
                return self._by_id(line.id)
        raise ClusterError("no master owns slot %d" % slot)

    def master_for_key(self, key) -> ClusterNode:
        return self.master_of_slot(self.keyslot(key))

    def slots_of(self, master: ClusterNode) -> list:
        """[(first, last)]: the slot ranges of master."""
        return list(self.view()[master.node_id].slots)

    def slot_counts(self) -> dict:
        """{master: number of its slots}, masters without slots included."""
        return {
            self._by_id(line.id): sum(b - a + 1 for a, b in line.slots)
            for line in self.view().values()
            if "master" in line.flags and not line.flags & BAD_FLAGS
        }

    def commandstats(self) -> dict:
        """{master: {command: calls}} (INFO commandstats; subcommands as
        "cluster|nodes")."""
        return {
            m: {
                key[len("cmdstat_") :]: int(value.split(",")[0].split("=")[1])
                for key, value in parse_info(redis_call(m.port, "INFO", "commandstats")).items()
            }
            for m in self.masters()
        }

    def commands_processed(self) -> dict:
        """{master: total_commands_processed} (INFO stats)."""
        return {
            m: int(parse_info(redis_call(m.port, "INFO", "stats"))["total_commands_processed"])
            for m in self.masters()
        }

    def errorstats(self) -> dict:
        """{master: {error prefix: count}} (INFO errorstats: MOVED, ASK, ...)."""
        return {
            m: {
                key[len("errorstat_") :]: int(value.split("=")[1])
                for key, value in parse_info(redis_call(m.port, "INFO", "errorstats")).items()
            }
            for m in self.masters()
        }

    def reset_stats(self) -> None:
        for node in self.live():
            redis_call(node.port, "CONFIG", "RESETSTAT")

    def _ids(self) -> dict:
        return {n.node_id: n for n in self.nodes}

    def _by_id(self, node_id: str) -> ClusterNode:
        try:
            return self._ids()[node_id]
        except KeyError:
            raise ClusterError("node %s is not one of this cluster's" % node_id) from None

    def _asked(self, node: Optional[ClusterNode] = None) -> ClusterNode:
        if node is not None:
            return node
        for n in self.nodes:
            if n.alive():
                return n
        raise ClusterError("no node of the cluster is alive")

    # -- changes ------------------------------------------------------------

    def kill(self, node: ClusterNode) -> None:
        """A crash of node (SIGKILL).  The replicas it had are noted first:
        wait_failover waits for one of them."""
        if node.alive():
            # Asked of another node: the one to die may no longer answer
            # (a test cut it off with a password).
            viewer = next((n for n in self.nodes if n is not node and n.alive()), node)
            self._replicas_at_kill[node.node_id] = [
                line.id for line in self.view(viewer).values() if line.master == node.node_id
            ]
        node.kill()

    def kill_all(self) -> None:
        """Every node crashes at once (SIGKILL): the whole cluster is down."""
        for node in self.nodes:
            node.kill()

    def start_empty(self) -> RedisCluster:
        """After kill_all(): the same nodes on the same ports, without their
        data or their nodes.conf, joined again into a new cluster (what
        a cluster restarted empty is to its clients)."""
        for node in self.nodes:
            conf = os.path.join(node.dir, "nodes.conf")
            if os.path.exists(conf):
                os.remove(conf)
            node.start()
        self._replicas_at_kill.clear()
        self._cli(
            "create",
            *(n.address for n in self.nodes),
            "--cluster-replicas",
            str(self.n_replicas),
            "--cluster-yes",
        )
        self.wait_converged("the cluster to form again", replicas=self.n_masters * self.n_replicas)
        return self

    def restart(self, node: ClusterNode, timeout: Optional[float] = None) -> None:
        """Start a killed node again and wait until it has rejoined."""
        node.start()
        self.wait_converged("%s to rejoin" % node.name, timeout=timeout)

    def wait_failover(
        self, old_master: ClusterNode, timeout: Optional[float] = None
    ) -> ClusterNode:
        """Wait until a replica of old_master (killed) is a master, old_master
        owns no slot, and the nodes alive have converged; the new master."""
        candidates = self._replicas_at_kill.get(old_master.node_id)
        if candidates is None:
            candidates = [n.node_id for n in self.replicas_of(old_master)]
        if not candidates:
            raise self._error("%s has no replica to fail over to" % old_master.name)
        promoted: list = []

        def failed_over() -> Optional[str]:
            for node_id in candidates:
                node = self._by_id(node_id)
                if node.alive() and self.role(node) == "master":
                    break
            else:
                return "no replica of %s is master yet" % old_master.name
            why = self._unconverged()  # old_master, down, owning no slot
            if why is None:
                promoted.append(node)
            return why

        self._wait("the failover of %s" % old_master.name, failed_over, timeout)
        return promoted[0]

    def add_master(self, timeout: Optional[float] = None) -> ClusterNode:
        """Start a new node, join it as a master without slots, wait until
        every node knows it; the new node."""
        node = self._start_node()
        self._cli("add-node", node.address, self._entry().address)
        self.wait_converged("%s to join" % node.name, timeout=timeout)
        return node

    def reshard(
        self,
        from_node: ClusterNode,
        to_node: ClusterNode,
        slots: int,
        timeout: Optional[float] = None,
    ) -> None:
        """Move slots slots (redis-cli picks from_node's lowest), keys and
        all, to to_node; wait until the nodes agree on the new map."""
        self._cli(
            "reshard",
            self._entry().address,
            "--cluster-from",
            from_node.node_id,
            "--cluster-to",
            to_node.node_id,
            "--cluster-slots",
            str(slots),
            "--cluster-yes",
        )
        self.wait_converged("the nodes to agree after the reshard", timeout=timeout)

    def rebalance(self, timeout: Optional[float] = None) -> None:
        """Spread the slots evenly over the masters, empty ones included;
        wait until the nodes agree on the new map."""
        self._cli("rebalance", self._entry().address, "--cluster-use-empty-masters")
        self.wait_converged("the nodes to agree after the rebalance", timeout=timeout)

    def _entry(self) -> ClusterNode:
        masters = self.masters()
        if not masters:
            raise self._error("no master is alive")
        return masters[0]

    def _cli(self, subcommand: str, *args: str) -> str:
        """redis-cli --cluster subcommand args, to completion; its output."""
        argv = [self.cli, "--cluster", subcommand, *args]
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=self.timeout,
                preexec_fn=die_with_parent,
            )
        except subprocess.TimeoutExpired as e:
            out = (e.output or b"").decode("utf-8", "replace")
            raise self._error(
                "redis-cli --cluster %s did not finish within %.0f s:\n%s"
                % (subcommand, self.timeout, _tail(out))
            ) from None
        out = done.stdout.decode("utf-8", "replace")
        if done.returncode != 0 or "[ERR]" in out:
            raise self._error(
                "redis-cli --cluster %s failed (exit %d):\n%s"
                % (subcommand, done.returncode, _tail(out))
            )
        return out

    # -- waits --------------------------------------------------------------

    def wait_converged(
        self,
        what: str = "the cluster to converge",
        *,
        replicas: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> None:
        """Wait until the nodes alive have converged (the class's
        docstring says what that is), with replicas replicas if given."""
        self._wait(what, lambda: self._unconverged(replicas), timeout)

    def _unconverged(self, replicas: Optional[int] = None) -> Optional[str]:
        """None if the nodes alive have converged, else what is missing."""
        live = self.live()
        live_ids = {n.node_id for n in live}
        agreed: dict = {}
        n_replicas = 0
        for node in live:
            try:
                info_reply, cluster_reply, nodes_reply = redis_calls(
                    node.port, ("INFO", "replication"), ("CLUSTER", "INFO"), ("CLUSTER", "NODES")
                )
            except (OSError, ReplyError) as e:
                return "%s does not answer: %s" % (node.name, e)
            info = parse_info(info_reply)
            info.update(parse_info(cluster_reply))
            view = parse_cluster_nodes(nodes_reply)
            if info.get("cluster_state") != "ok":
                return "%s says cluster_state:%s" % (node.name, info.get("cluster_state"))
            if info.get("role") == "slave":
                n_replicas += 1
                if info.get("master_link_status") != "up":
                    return "%s: master_link_status:%s" % (
                        node.name,
                        info.get("master_link_status"),
                    )
            for node_id in live_ids:
                line = view.get(node_id)
                if line is None:
                    return "%s does not know %s" % (node.name, self._by_id(node_id).name)
                if line.flags & BAD_FLAGS:
                    return "%s sees %s as %s" % (
                        node.name,
                        self._by_id(node_id).name,
                        ",".join(sorted(line.flags)),
                    )
            if ("slave" in view[node.node_id].flags) != (info.get("role") == "slave"):
                return "%s is %s but its CLUSTER NODES says %s" % (
                    node.name,
                    info.get("role"),
                    ",".join(sorted(view[node.node_id].flags)),
                )
            if any(line.open_slots for line in view.values()):
                return "%s has slots migrating or importing" % node.name
            slot_map = tuple(
                sorted(
                    (first, last, line.id)
                    for line in view.values()
                    if "master" in line.flags
                    for first, last in line.slots
                )
            )
            gap = _coverage_gap(slot_map)
            if gap:
                return "%s: %s" % (node.name, gap)
            for _, _, owner in slot_map:
                if owner not in live_ids:
                    return "%s: %s owns slots and is down" % (
                        node.name,
                        self._by_id(owner).name if owner in self._ids() else owner,
                    )
            replica_of = tuple(sorted((i, view[i].master or "-") for i in live_ids))
            agreed[node.name] = (slot_map, replica_of)
        if len(set(agreed.values())) > 1:
            first = live[0].name
            return "%s do not agree with %s on the slot map or the replicas" % (
                ", ".join(name for name, v in agreed.items() if v != agreed[first]),
                first,
            )
        if replicas is not None and n_replicas != replicas:
            return "%d replicas, not %d" % (n_replicas, replicas)
        return None

    def _wait(
        self, what: str, condition: Callable[[], Optional[str]], timeout: Optional[float]
    ) -> None:
        """Poll condition (None when satisfied, else what is missing) until
        it is satisfied; ClusterError at the deadline."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                why = condition()
            except (OSError, ReplyError) as e:  # a node on its way up or down
                why = "%s: %s" % (type(e).__name__, e)
            if why is None:
                return
            if time.monotonic() >= deadline:
                raise self._error("waited %.0f s for %s; still: %s" % (timeout, what, why))
            self.sleep(CLUSTER_POLL_INTERVAL)

    def _error(self, message: str) -> ClusterError:
        tails = [
            "--- %s %s (%s) ---\n%s"
            % (
                n.name,
                n.address,
                "alive" if n.alive() else "exit %s" % (n.exit_codes[-1:] or ["?"])[0],
                n.log_tail(10),
            )
            for n in self.nodes
        ]
        return ClusterError("\n".join([message, *tails]))


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])
