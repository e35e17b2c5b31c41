"""--proxy-protocol end to end: behind a real HAProxy (Debian's haproxy
package) sending v1 and v2 headers, and over raw sockets for every way a
header can be missing, wrong, late, split or from the wrong peer.  gchat runs
as the console script; every wait has a deadline."""

import ipaddress
import os
import re
import shutil
import socket
import struct
import subprocess
import time

import pytest
from chat_client import ChatClient

from gchat_bench.processes import free_port

# The configuration docs/deploying.md shows under "HAProxy in front", with its
# ports as placeholders: the page's text is this one formatted with
# v1=7000, v2=7001, gchat=8000.  Two frontends so that both header versions
# are tested: v1 (send-proxy) and v2 (send-proxy-v2) with a CRC32C and a
# unique-id TLV, which gchat checks and skips.
HAPROXY_CFG = """\
global
    maxconn 1000

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend chat_v1
    bind 127.0.0.1:{v1}
    default_backend gchat_v1

backend gchat_v1
    server gchat 127.0.0.1:{gchat} send-proxy

frontend chat_v2
    bind 127.0.0.1:{v2}
    unique-id-format %{{+X}}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid
    default_backend gchat_v2

backend gchat_v2
    server gchat 127.0.0.1:{gchat} send-proxy-v2 proxy-v2-options crc32c,unique-id{check}
"""

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# Debian installs it in /usr/sbin, which a non-root PATH may not hold.
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


class HAProxy:
    """haproxy -db (foreground, no daemon) on a configuration of its own."""

    def __init__(self, tmp_path, gchat, check=False):
        self.v1, self.v2 = free_port(), free_port()
        self.config = tmp_path / "haproxy.cfg"
        # A health check every 100 ms: HAProxy sends it a v2 LOCAL header.
        self.config.write_text(
            HAPROXY_CFG.format(
                v1=self.v1,
                v2=self.v2,
                gchat=gchat.port,
                check=" check inter 100ms" if check else "",
            )
        )
        self.proc = subprocess.Popen(
            [HAPROXY, "-f", str(self.config), "-db"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            # With health checks on, the checks themselves show HAProxy is
            # up, and a probe would be one more arrival to tell from them.
            for port in () if check else (self.v1, self.v2):
                self._wait_until_serving(port, gchat)
        except BaseException:
            self.stop()
            raise

    def _wait_until_serving(self, port, gchat, timeout=15.0):
        """A client through port is greeted, and gchat has seen it leave,
        so that it is over before the test's own clients come."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.proc.stdout.read().decode()}")
            try:
                probe = ChatClient("127.0.0.1", port, timeout=5)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)  # polling a port of a process we do not control; bounded
        address = re.escape(probe.address)
        probe.expect(f"You are {address}")
        probe.close()
        gchat.wait_for_log(f"{address} left")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def haproxy(tmp_path):
    """haproxy(gchat, check=False): a running HAProxy in front of gchat,
    stopped after the test."""
    started = []

    def start(gchat, **kw):
        proxy = HAProxy(tmp_path, gchat, **kw)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def v1(src="203.0.113.7", sport=4242, dst="127.0.0.1", dport=8000, family="TCP4") -> bytes:
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def v2(command=0x1, family=0x11, block=b"") -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack(">H", len(block)) + block


def inet4(src, sport, dst="127.0.0.1", dport=8000) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack(">HH", sport, dport)
    )


def inet6(src, sport, dst="::1", dport=8000) -> bytes:
    return (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack(">HH", sport, dport)
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack(">H", len(value)) + value


def proxied(server, header: bytes) -> ChatClient:
    """A raw client of server that sends header first, as a proxy would."""
    client = server.client()
    client.send(header)
    return client


def closed_without_a_word(client):
    """The server closed the connection and never said anything: no
    greeting, no arrival, nothing before the header was accepted."""
    assert client.closed_after() == []
    assert client.raw == b""


# --- Behind HAProxy ---------------------------------------------------------


def test_clients_through_haproxy_are_told_their_own_address(start_gchat, haproxy):
    server = start_gchat("--compat", "--proxy-protocol")
    proxy = haproxy(server)
    # v1 (send-proxy): the address is the client's own, not HAProxy's
    # connection to gchat.
    a = ChatClient("127.0.0.1", proxy.v1)
    a.expect(f"You are {re.escape(a.address)}")
    # v2 (send-proxy-v2) with CRC32C and unique-id TLVs.
    b = ChatClient("127.0.0.1", proxy.v2)
    b_address = re.escape(b.address)
    b.expect(f"You are {b_address}")
    a.expect(f"{b_address} has arrived")
    a.say("hello through haproxy")
    a.expect(f"{re.escape(a.address)}: hello through haproxy")
    b.expect(f"{re.escape(a.address)}: hello through haproxy")
    server.wait_for_log(f"connection from {re.escape(a.address)}")
    b.close()
    a.expect(f"{b_address} has left")


def test_haproxy_health_checks_are_served_as_local_with_their_real_address(start_gchat, haproxy):
    """HAProxy's health checks send a v2 LOCAL header (with a CRC32C TLV):
    gchat serves them under the address they really come from."""
    server = start_gchat("--compat", "--proxy-protocol", "--log-level", "DEBUG")
    # A client that claims an address of its own, to tell it from the checks.
    watcher = proxied(server, v1(src="203.0.113.7", sport=4242))
    watcher.expect(r"You are 203\.0\.113\.7:4242")
    haproxy(server, check=True)
    # Nobody else connects: the arrival is a check's, served, and under
    # the loopback address HAProxy connects from.
    line = watcher.expect(r"127\.0\.0\.1:\d+ has arrived")
    check = re.escape(line.split()[0])
    server.wait_for_log(
        f"PROXY header from {check}: v2 LOCAL UNKNOWN, client "
        r"\('127\.0\.0\.1', \d+\)"
    )
    watcher.expect(f"{check} has left")


# --- Raw headers, good ones ---------------------------------------------------


def test_v1_headers_give_the_client_the_address_they_carry(start_gchat):
    server = start_gchat("--compat", "--proxy-protocol")
    a = proxied(server, v1(src="198.51.100.20", sport=5555))
    a.expect(r"You are 198\.51\.100\.20:5555")
    # IPv6, shown as Go shows it.
    b = proxied(server, v1(src="::1", sport=5000, dst="::1", family="TCP6"))
    b.expect(r"You are \[::1\]:5000")
    a.expect(r"\[::1\]:5000 has arrived")
    # Bytes sent with the header (in the same segment) are the client's
    # first line, not lost.
    c = proxied(server, v1(src="192.0.2.9", sport=9) + b"first words\n")
    c.expect(r"You are 192\.0\.2\.9:9")
    a.expect(r"192\.0\.2\.9:9 has arrived")
    a.expect(r"192\.0\.2\.9:9: first words")
    # UNKNOWN: the real address.
    d = proxied(server, b"PROXY UNKNOWN\r\n")
    d.expect(f"You are {re.escape(d.address)}")


def test_v2_with_tlvs_and_tcp6(start_gchat):
    server = start_gchat("--compat", "--proxy-protocol")
    tlvs = tlv(0x01, b"h2") + tlv(0x02, b"chat.example.org") + tlv(0x05, b"x" * 100)
    a = proxied(server, v2(block=inet4("192.0.2.44", 61000) + tlvs))
    a.expect(r"You are 192\.0\.2\.44:61000")
    b = proxied(server, v2(family=0x21, block=inet6("2001:db8::7", 443) + tlvs) + b"hi\n")
    b.expect(r"You are \[2001:db8::7\]:443")
    a.expect(r"\[2001:db8::7\]:443 has arrived")
    a.expect(r"\[2001:db8::7\]:443: hi")


def test_v2_local_is_served_with_its_real_address(start_gchat):
    server = start_gchat("--compat", "--proxy-protocol")
    # A LOCAL block may hold addresses; they are ignored.
    client = proxied(server, v2(command=0x0, family=0x11, block=inet4("192.0.2.1", 1)))
    client.expect(f"You are {re.escape(client.address)}")


def test_a_header_split_across_sends_works(start_gchat):
    server = start_gchat("--compat", "--proxy-protocol")
    for header, shown in (
        (v1(src="192.0.2.77", sport=7777), r"192\.0\.2\.77:7777"),
        (v2(block=inet4("192.0.2.78", 7878) + tlv(0x04, b"pad")), r"192\.0\.2\.78:7878"),
    ):
        client = server.client()
        for start in range(0, len(header), 5):
            client.send(header[start : start + 5])
            # Each partial header leaves the server waiting: nothing said,
            # nothing closed (quiet() only checks that nothing happens).
            if start + 5 < len(header):
                assert client.quiet(0.05)
        client.expect(f"You are {shown}")


# --- Raw headers, bad ones ----------------------------------------------------


def test_bad_or_missing_headers_close_the_connection_and_spare_everyone_else(start_gchat):
    server = start_gchat("--compat", "--proxy-protocol")
    a = proxied(server, v1(src="192.0.2.1", sport=1111))
    a.expect(r"You are 192\.0\.2\.1:1111")
    # A connection that is still sending its header while the rest happens.
    slow = server.client()
    slow.send(v1(src="192.0.2.3", sport=3333)[:10])

    # No header at all: a chat line.
    plain = server.client()
    plain.say("hello, is this gchat?")
    closed_without_a_word(plain)
    server.wait_for_log(
        f"bad PROXY header from {re.escape(plain.address)}: "
        r"no PROXY header: starts with b'h'"
    )

    # Malformed ones, v1 and v2.
    cases = [
        (v1(src="192.0.2.256"), r"v1 TCP4 line: bad IPv4 address b'192\.0\.2\.256'"),
        (v1(src="192.0.2.1", sport=65536), r"v1 TCP4 line: bad port b'65536'"),
        (b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\n", r"v1 line ends in LF without CR"),
        (b"PROXY UNKNOWN " + b"x" * 100, r"v1 line has no CRLF within 107 bytes"),
        (v2(command=0x2, block=inet4("192.0.2.1", 1)), r"unknown v2 command 0x2"),
        (v2(family=0x21, block=inet4("192.0.2.1", 1)), r"v2 address block of 12 bytes"),
        (
            V2_SIGNATURE[:-1] + b"X" + b"\x21\x11\x00\x0c" + inet4("192.0.2.1", 1),
            r"bad v2 signature",
        ),
        (v2(block=inet4("192.0.2.1", 1) + tlv(0x03, b"\0\0\0\0")), r"v2 CRC32C mismatch"),
    ]
    for header, reason in cases:
        bad = proxied(server, header)
        closed_without_a_word(bad)
        server.wait_for_log(f"bad PROXY header from {re.escape(bad.address)}: {reason}")

    # Everyone else was spared: the half-sent header completes, and the
    # first line a hears after its own greeting is that arrival (none of
    # the bad connections ever arrived).
    slow.send(v1(src="192.0.2.3", sport=3333)[10:])
    slow.expect(r"You are 192\.0\.2\.3:3333")
    a.expect(r"192\.0\.2\.3:3333 has arrived")
    a.say("still here")
    a.expect(r"192\.0\.2\.1:1111: still here")
    slow.expect(r"192\.0\.2\.1:1111: still here")


def test_a_peer_outside_proxy_from_is_closed_with_a_log_line(start_gchat):
    server = start_gchat("--compat", "--proxy-protocol", "--proxy-from", "10.0.0.0/8")
    client = proxied(server, v1(src="192.0.2.1", sport=1))
    closed_without_a_word(client)
    server.wait_for_log(
        f"PROXY header refused: {re.escape(client.address)} is not in "
        r"--proxy-from \(10\.0\.0\.0/8\)"
    )


def test_no_header_within_the_handshake_timeout_closes(start_gchat):
    server = start_gchat("--compat", "--proxy-protocol", "--handshake-timeout", "0.5")
    a = proxied(server, v1(src="192.0.2.1", sport=1111))
    a.expect(r"You are 192\.0\.2\.1:1111")
    began = time.monotonic()
    silent = server.client()
    partial = server.client()
    partial.send(v1()[:20])
    closed_without_a_word(silent)
    closed_without_a_word(partial)
    elapsed = time.monotonic() - began
    assert 0.4 <= elapsed < 5, elapsed
    for client in (silent, partial):
        server.wait_for_log(
            f"no complete PROXY header from {re.escape(client.address)} "
            r"within 0\.5 s"
        )
    # A client that finished in time is not timed out later.
    a.say("after the timeout")
    a.expect(r"192\.0\.2\.1:1111: after the timeout")


def stats(client) -> dict:
    client.say("/stats")
    line = client.expect(r"stats: .*", skip=True)
    return {key: int(value) for key, value in re.findall(r"(\w+)=(-?\d+)", line)}


def test_every_way_a_header_ends_leaks_no_descriptor_watcher_or_greenlet(start_gchat):
    server = start_gchat("--proxy-protocol", "--handshake-timeout", "0.5", "--flood-rate", "0")
    observer = proxied(server, v1(src="192.0.2.1", sport=1))
    observer.expect(r".*name\?")
    observer.say("observer")
    observer.expect("You are observer")
    pid = server.proc.pid
    base = stats(observer)
    base_fds = len(os.listdir(f"/proc/{pid}/fd"))
    crowd = []
    for i in range(100):
        client = server.client()
        kind = i % 5
        if kind == 0:  # malformed: the server closes
            client.send(b"GET / HTTP/1.1\r\n")
        elif kind == 1:  # half a header, then the client leaves
            client.send(v1()[:12])
            client.sock.shutdown(socket.SHUT_WR)
        elif kind == 2:  # half a header, then a reset
            client.send(v2(block=inet4("192.0.2.2", 2))[:20])
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
        elif kind == 3:  # nothing: the handshake timeout
            pass
        else:  # a good header, then the client leaves
            client.send(v1(src="192.0.2.5", sport=i))
            client.sock.shutdown(socket.SHUT_WR)
        crowd.append(client)
    deadline = time.monotonic() + 15
    while len(os.listdir(f"/proc/{pid}/fd")) != base_fds:
        assert time.monotonic() < deadline, "descriptors did not return to their baseline"
        time.sleep(0.05)  # polling /proc, which cannot notify; bounded by the deadline
    for client in crowd:
        client.close()
    after = stats(observer)
    assert after["watchers"] == base["watchers"]
    assert after["greenlets"] == base["greenlets"]
    assert after["connections"] == base["connections"] == 1
