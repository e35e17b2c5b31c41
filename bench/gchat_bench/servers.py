"""The server under test: spawned (gchat or a baseline) or already running.

A spawned server gets a free port (``--port 0``) and tells it on stderr
("listening on HOST:PORT"); its stderr is then drained by a thread for the
whole run (a server that logs every connection must never block on a full
pipe) and the last lines are kept for error messages.  CPU time and RSS
come from psutil with the server's pid: CPU time per delivery is the
figure that stays steady on a shared machine, wall time is not.
"""
from __future__ import annotations

import collections
import importlib.util
import ipaddress
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Optional

import psutil

HTTP_RE = re.compile(r"\bhttp\s*$")
LISTENING_RE = re.compile(r"listening on \[?([0-9A-Za-z.:_-]+?)\]?:(\d+)\b")
# How long a server may take to print "listening on": imports of gevent
# and a cold disk on a busy machine take seconds, not minutes.
START_TIMEOUT = 30.0
# SIGTERM, then this long for a graceful exit before SIGKILL.
STOP_TIMEOUT = 10.0


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the benchmark process dies.

    A benchmark killed hard must not leave a server or workers behind
    (Linux prctl PR_SET_PDEATHSIG; elsewhere a no-op).
    """
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG = 1
    except Exception:
        pass


def process_cpu_s(pid: int) -> Optional[float]:
    """CPU seconds (user + system) a process has used so far.

    Linux's /proc/PID/task/*/schedstat counts nanoseconds on the CPU; the
    user/system times of /proc/PID/stat (what psutil reads) count whole
    clock ticks (10 ms), too coarse for a short run of a small benchmark.
    Falls back to psutil where schedstat is missing.
    """
    try:
        total = 0
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/schedstat" % (pid, task)) as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


class BenchError(RuntimeError):
    """A benchmark could not run as asked (not a measured result)."""


def check_loopback(host: str) -> None:
    """Refuse targets off this machine: load goes to 127.0.0.0/8 or ::1 only."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise BenchError("refusing to load %s: only loopback targets (127.0.0.0/8, ::1)" % host)


def gchat_command() -> list:
    """How to start gchat from this Python: ``python -m gchat`` if it can."""
    try:
        if importlib.util.find_spec("gchat.__main__") is not None:
            return [sys.executable, "-m", "gchat"]
    except (ImportError, ValueError):
        pass
    for cand in (Path(sys.executable).parent / "gchat", shutil.which("gchat")):
        if cand and Path(cand).exists():
            return [str(cand)]
    raise BenchError("gchat is not installed (no gchat.__main__, no gchat script); "
                     "use --target or --server-cmd")


def baseline_command(module: str) -> list:
    """The command line of a baseline server module."""
    return [sys.executable, "-m", module]


_help_cache: dict = {}


def help_text(cmd: list) -> str:
    """The --help output of a server command (cached per command)."""
    key = tuple(cmd)
    if key not in _help_cache:
        try:
            out = subprocess.run(list(cmd) + ["--help"], capture_output=True,
                                 text=True, timeout=START_TIMEOUT)
            _help_cache[key] = out.stdout + out.stderr
        except (OSError, subprocess.TimeoutExpired):
            _help_cache[key] = ""
    return _help_cache[key]


def spawn_argv(cmd: list, options: str, compat: bool, host: str = "127.0.0.1") -> list:
    """The full argv to start a server with the user's --spawn OPTIONS.

    In name mode a server that has --flood-rate gets ``--flood-rate 0``
    (unless OPTIONS set it): gchat's per-client flood limit is on by
    default there and would rate-limit the benchmark instead of measuring
    the server.  --compat is added when the benchmark speaks the seed
    protocol, OPTIONS do not say so already and the server has the option
    (a baseline speaks only the seed protocol).
    """
    opts = shlex.split(options or "")
    argv = list(cmd) + ["--host", host, "--port", "0"]
    if compat and "--compat" not in opts and "--compat" in help_text(cmd):
        opts = ["--compat"] + opts
    set_flood = any(o == "--flood-rate" or o.startswith("--flood-rate=") for o in opts)
    if not compat and not set_flood and "--flood-rate" in help_text(cmd):
        opts += ["--flood-rate", "0"]
    return argv + opts


class Server:
    """A server under test: where it listens and, if known, its pid."""

    def __init__(self, name: str, host: str, port: int, pid: Optional[int] = None,
                 proc: Optional[subprocess.Popen] = None, argv: Optional[list] = None):
        self.name = name
        self.host = host
        self.port = port
        self.pid = pid
        self.proc = proc
        self.argv = argv
        self.exit_code: Optional[int] = None
        self.http_port: Optional[int] = None   # gchat --http: its port
        self.stderr_tail: collections.deque = collections.deque(maxlen=30)
        self._ps = None
        if pid is not None:
            try:
                self._ps = psutil.Process(pid)
            except psutil.Error:
                raise BenchError("no process with --server-pid %d" % pid)

    @classmethod
    def spawn(cls, name: str, argv: list) -> "Server":
        """Start argv and wait for its "listening on HOST:PORT" line."""
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    preexec_fn=die_with_parent)
        except OSError as e:
            raise BenchError("cannot start %s: %s" % (shlex.join(argv), e))
        tail: collections.deque = collections.deque(maxlen=30)
        found: dict = {}
        http: dict = {}
        ready = threading.Event()

        def drain():
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                tail.append(line)
                if not found:
                    m = LISTENING_RE.search(line)
                    if m and HTTP_RE.search(line[:m.start()]):
                        # gchat's "http listening on" comes before the line port's.
                        http["port"] = int(m.group(2))
                    elif m and not re.search(r"\badmin\s*$", line[:m.start()]):
                        found["host"], found["port"] = m.group(1), int(m.group(2))
                        ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True, name="stderr-" + name).start()
        ready.wait(START_TIMEOUT)
        if not found:
            proc.kill()
            proc.wait()
            raise BenchError("%s did not print 'listening on HOST:PORT' (exit %s): %s\n%s"
                             % (name, proc.returncode, shlex.join(argv), "\n".join(tail)))
        srv = cls(name, found["host"], found["port"], pid=proc.pid, proc=proc, argv=argv)
        srv.stderr_tail = tail
        srv.http_port = http.get("port")
        return srv

    def check_alive(self) -> None:
        """Raise if a spawned server has died under load."""
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError("server %s exited with code %s during the run:\n%s"
                             % (self.name, self.proc.returncode, "\n".join(self.stderr_tail)))

    def cpu_s(self) -> Optional[float]:
        """User+system CPU seconds of the server so far (None if unknown)."""
        if self.pid is None:
            return None
        return process_cpu_s(self.pid)

    def rss_bytes(self) -> Optional[int]:
        """Resident set size of the server now (None if unknown)."""
        if self._ps is None:
            return None
        try:
            return self._ps.memory_info().rss
        except psutil.Error:
            return None

    def stop(self) -> None:
        """SIGTERM a spawned server, wait for it, record its exit code."""
        if self.proc is None or self.exit_code is not None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode


class RssSampler:
    """Samples a server's RSS in a thread; keeps the peak."""

    def __init__(self, server: Server, interval: float = 0.2):
        self.server = server
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            r = self.server.rss_bytes()
            if r:
                self.peak = max(self.peak, r)
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        r = self.server.rss_bytes()
        if r:
            self.peak = max(self.peak, r)
