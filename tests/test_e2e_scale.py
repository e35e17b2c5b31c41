"""2,000 clients at once, over real sockets, in name mode and --compat."""

import re
import selectors
import socket
import time

N = 2000


class Crowd:
    """N non-blocking clients read together with one selector."""

    def __init__(self, port, count):
        self.selector = selectors.DefaultSelector()
        self.socks = []
        self.data = {}
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.setblocking(False)
            self.socks.append(sock)
            self.data[sock] = bytearray()
            self.selector.register(sock, selectors.EVENT_READ)

    def read_until(self, done, timeout=60):
        """Read from every socket until done(sock, data) holds for all."""
        deadline = time.monotonic() + timeout
        waiting = {sock for sock in self.socks if not done(sock, self.data[sock])}
        while waiting:
            left = deadline - time.monotonic()
            assert left > 0, f"{len(waiting)} clients still waiting"
            for key, _ in self.selector.select(min(left, 1.0)):
                sock = key.fileobj
                chunk = sock.recv(1 << 20)
                assert chunk, "server closed a connection"
                self.data[sock] += chunk
                if sock in waiting and done(sock, self.data[sock]):
                    waiting.discard(sock)

    def close(self):
        for sock in self.socks:
            sock.close()
        self.selector.close()


def arrivals_named(text: str) -> int:
    """Arrivals announced: "X has arrived", or, merged under a storm,
    "X, Y and K more have arrived"."""
    count = 0
    for names, more in re.findall(r"^(.*?)(?: and (\d+) more)? (?:has|have) arrived$", text, re.M):
        count += len(names.split(", ")) + int(more or 0)
    return count


def roster_count(line: str) -> int:
    match = re.fullmatch(r"Also here \((\d+)\): .*", line)
    return int(match.group(1)) if match else 0


def test_two_thousand_named_clients_join_and_all_hear_a_message(gchat):
    crowd = Crowd(gchat.port, N)
    try:
        for i, sock in enumerate(crowd.socks):
            sock.sendall(f"u{i}\n".encode())
        crowd.read_until(lambda sock, data: b"\nYou are " in data and data.count(b"\n") >= 3)
        crowd.socks[0].sendall(b"go\n")
        crowd.read_until(lambda sock, data: b"\nu0: go\n" in data)
        merged = 0
        for i, sock in enumerate(crowd.socks):
            text = crowd.data[sock].decode()
            lines = text.splitlines()
            assert lines[1] == f"You are u{i}"
            assert re.fullmatch(r"Nobody else is here\.|Also here \(\d+\): .*", lines[2])
            assert text.endswith("u0: go\n")
            # Everyone learns of everyone else exactly once: in its roster,
            # or in an arrival line after it.
            assert roster_count(lines[2]) + arrivals_named(text) == N - 1, i
            merged += len(re.findall(r" have arrived$", text, re.M))
        assert merged > 0  # a storm of 2,000 joins is announced in merged lines
    finally:
        crowd.close()


def test_two_thousand_compat_clients_all_hear_every_message(compat):
    crowd = Crowd(compat.port, N)
    try:
        crowd.read_until(lambda sock, data: data.startswith(b"You are ") and b"\n" in data)
        senders = crowd.socks[:5]
        for n, sock in enumerate(senders):
            sock.sendall(f"message {n}\n".encode())
        crowd.read_until(lambda sock, data: data.count(b": message ") == len(senders))
        for sock in crowd.socks:
            got = re.findall(rb"^\S+: message (\d+)$", bytes(crowd.data[sock]), re.M)
            assert sorted(got) == [str(n).encode() for n in range(len(senders))]
    finally:
        crowd.close()
