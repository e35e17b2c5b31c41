"""A throwaway redis-server for tests: on a free port of 127.0.0.1, with
no persistence (a restart comes back empty, as after a crash without
AOF), killed and started again on the same port on demand."""
import os
import shutil
import socket
import subprocess
import tempfile
import time

import redis

START_TIMEOUT = 10.0
# Polling for PING: redis-server says nothing we could wait on instead.
POLL_INTERVAL = 0.02


def free_port() -> int:
    """A port nothing listens on now (bound then released: another program
    may take it meanwhile, which start() then reports)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """redis-server as a subprocess.  start() waits until it answers PING;
    kill() is a crash (SIGKILL); start() again comes back on the same
    port, empty; stop() ends it for good and removes its directory."""

    def __init__(self, password=None, executable=None, tls=None):
        """tls: (certificate, key, CA) files: it then speaks TLS only
        (rediss://), on its one port."""
        self.executable = executable or shutil.which("redis-server")
        if self.executable is None:
            raise RuntimeError("redis-server not found on PATH (apt-get install redis-server)")
        self.password = password
        self.tls = tls
        self.host = "127.0.0.1"
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="gchat-redis-")
        self.proc = None
        self.started_once = False  # then start() keeps to self.port
        self.log_path = os.path.join(self.dir, "redis.log")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}{self.host}:{self.port}/0?ssl_ca_certs={self.tls[2]}"
        return f"redis://{auth}{self.host}:{self.port}/0"

    def client(self, **kw) -> redis.Redis:
        if self.tls:
            kw.update(ssl=True, ssl_ca_certs=str(self.tls[2]))
        return redis.Redis(host=self.host, port=self.port, password=self.password, **kw)

    def start(self, timeout=START_TIMEOUT):
        """Start on self.port and wait until it answers PING; a port still
        held by the killed server's connections is retried until timeout."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("redis-server is already running")
        deadline = time.monotonic() + timeout
        while True:
            self._spawn()
            if self._wait_ready(deadline):
                self.started_once = True
                return self
            # It exited: the port was busy (reported in its log), or worse.
            if not self.started_once:
                self.port = free_port()  # free_port()'s pick was taken meanwhile
            if time.monotonic() >= deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n"
                                   f"{self.log_tail()}")
            time.sleep(POLL_INTERVAL)  # bounded by the deadline: the port frees itself

    def _spawn(self):
        port = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls[0]),
                "--tls-key-file", str(self.tls[1]), "--tls-ca-cert-file", str(self.tls[2]),
                "--tls-auth-clients", "no"] if self.tls else ["--port", str(self.port)]
        argv = [self.executable, *port, "--bind", self.host,
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--logfile", self.log_path, "--daemonize", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _wait_ready(self, deadline) -> bool:
        """True once it answers PING; False if it exited first."""
        client = self.client(socket_connect_timeout=1, socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                time.sleep(POLL_INTERVAL)  # polling a server we do not control, to a deadline
        finally:
            client.close()
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING:\n"
                           f"{self.log_tail()}")

    def log_tail(self, lines=20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self):
        """A crash: SIGKILL, and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        """End it (SIGTERM, then SIGKILL if it lingers) and remove its files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
