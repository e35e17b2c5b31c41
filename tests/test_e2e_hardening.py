"""Bad input, floods, connection limits and peer faults, end to end over
real sockets: the server keeps serving everyone else and every bad input
gets a clear answer."""

import os
import re
import resource
import select
import socket
import struct
import time

import pytest
from chat_client import ChatClient


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def stats(client) -> dict:
    client.say("/stats")
    line = client.expect(r"stats: .*", skip=True)
    return {key: int(value) for key, value in re.findall(r"(\w+)=(-?\d+)", line)}


def wait_until(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling /proc, which cannot notify; bounded by the deadline


# --- Input -------------------------------------------------------------


def test_long_line_is_discarded_with_an_error_and_the_client_stays(start_gchat):
    server = start_gchat("--max-line", "100")
    a = server.named("a")
    b = server.named("b")
    a.expect("b has arrived")
    a.say("x" * 100)
    a.expect("a: " + "x" * 100)  # exactly the limit is fine
    a.say("y" * 101)
    a.expect("error: line longer than 100 bytes discarded")
    a.say("still here")
    a.expect("a: still here")
    b.expect("a: " + "x" * 100)
    b.expect("a: still here")  # b never saw the long line


def test_endless_line_does_not_grow_server_memory(start_gchat):
    server = start_gchat("--max-line", "4096", "--idle-timeout", "0")
    a = server.named("a")
    watcher = server.named("w")
    a.expect("w has arrived")
    before = rss_kib(server.proc.pid)
    chunk = b"z" * (1 << 20)
    for _ in range(64):  # 64 MiB with no newline
        a.send(chunk)
    a.send(b"\nafter the flood\n")
    a.expect("error: line longer than 4096 bytes discarded")
    a.expect("a: after the flood")
    watcher.expect("a: after the flood")
    grown = rss_kib(server.proc.pid) - before
    assert grown < 16 * 1024, f"server RSS grew by {grown} KiB"


def test_invalid_utf8_becomes_replacement_characters(gchat):
    a = gchat.named("a")
    b = gchat.named("b")
    a.expect("b has arrived")
    a.send(b"caf\xc3\xa9 \xff\xfe ok\n")
    b.expect("a: café \ufffd\ufffd ok")


def test_terminal_controls_never_reach_another_client_raw(gchat):
    a = gchat.named("a")
    b = gchat.named("b")
    a.expect("b has arrived")
    a.send("\x1b[2J\x1b]0;pwned\x07 bell\x00nul\x7fdel \u009b c1\ttab\n".encode())
    line = b.expect(r"a: .*")
    assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]", line)
    assert line.endswith("\ttab") and "[2J" in line  # text kept, controls replaced
    a.send(b"/me \x1b[31mturns red\n")
    assert "\x1b" not in b.expect(r"\* a .*")


def test_control_characters_cannot_be_part_of_a_name(gchat):
    c = gchat.client()
    c.line()
    c.send(b"evil\x1b[0m\n")
    assert c.line().startswith("error: ")
    assert b"\x1b" not in c.raw


@pytest.mark.parametrize("mode", [(), ("--compat",)])
def test_http_request_gets_one_line_and_is_closed(start_gchat, mode):
    server = start_gchat(*mode)
    c = server.client()
    if not mode:
        c.line()  # the name prompt
    else:
        c.line()  # You are ...
    c.send(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
    lines = c.closed_after()
    assert lines == ["error: this is a chat server, not an HTTP server; connect with nc or telnet"]


# --- Floods ------------------------------------------------------------


def test_flooder_is_delayed_not_dropped_and_delays_nobody_else(start_gchat):
    server = start_gchat("--flood-rate", "20", "--flood-burst", "5")
    watcher = server.named("watcher")
    flooder = server.named("flooder")
    polite = server.named("polite")
    watcher.expect("flooder has arrived")
    watcher.expect("polite has arrived")
    flooder.send("".join(f"flood {i}\n" for i in range(60)))  # 3 s of its allowance
    watcher.expect("flooder: flood 0")  # the burst passes at once
    polite.say("hello")
    seen = []
    while True:
        line = watcher.line()
        seen.append(line)
        if line == "polite: hello":
            break
    # polite's line overtook most of the flood: only the flood's first
    # lines (burst plus rate) went before it.
    assert len(seen) < 30
    flood = [line for line in seen if line.startswith("flooder: ")]
    flood += [watcher.expect(r"flooder: flood \d+", skip=True) for _ in range(60 - 1 - len(flood))]
    assert flood == [f"flooder: flood {i}" for i in range(1, 60)]  # all of it, in order


def test_flood_control_is_off_in_compat(start_gchat):
    server = start_gchat("--compat", "--flood-burst", "1", "--flood-rate", "0.1")
    # An explicit --flood-rate applies even in --compat...
    a = server.client()
    a.expect("You are .*")
    a.send(b"one\ntwo\n")
    a.expect(".*: one")
    assert a.quiet(0.5)  # "two" waits ten seconds for its token
    plain = start_gchat("--compat", "--flood-burst", "1")
    # ...and without it there is none.
    b = plain.client()
    b.expect("You are .*")
    b.send(b"".join(b"line %d\n" % i for i in range(200)))
    for i in range(200):
        b.expect(f".*: line {i}")


# --- Connections -------------------------------------------------------


def test_max_clients_refuses_with_server_full(start_gchat):
    server = start_gchat("--max-clients", "3")
    clients = [server.named(name) for name in ("a", "b", "c")]
    extra = server.client()
    assert extra.closed_after() == ["error: server full"]
    clients[0].close()
    clients[1].expect("a has left.*", skip=True)
    server.named("d")  # room again


def test_max_per_ip(start_gchat):
    server = start_gchat("--max-per-ip", "2")
    held = [server.named("a"), server.named("b")]  # two from 127.0.0.1, kept open
    third = server.client()
    assert third.closed_after() == ["error: too many connections from your address"]
    other = socket.create_connection(
        (server.host, server.port), timeout=10, source_address=("127.0.0.2", 0)
    )
    other.settimeout(10)
    assert b"name" in other.recv(1000)  # another address is admitted
    other.close()
    assert all(not c.eof for c in held)


def _limit_files(count):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))

    return set_limit


def greeted(socks, timeout):
    """The sockets among socks that receive "You are ..." within timeout."""
    pending = dict.fromkeys(socks, b"")
    done = []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        readable, _, _ = select.select(list(pending), [], [], max(0.0, deadline - time.monotonic()))
        for sock in readable:
            pending[sock] += sock.recv(100)
            if b"\n" in pending[sock]:
                assert pending.pop(sock).startswith(b"You are ")
                done.append(sock)
    return done


def test_running_out_of_descriptors_pauses_accepting_and_recovers(start_gchat, monkeypatch):
    """With RLIMIT_NOFILE lowered for the server, connections beyond it wait
    in the backlog; the server lives on, and admits them once descriptors
    are free again."""
    import subprocess

    real_popen = subprocess.Popen

    def popen_with_low_limit(*args, **kw):
        kw["preexec_fn"] = _limit_files(48)
        return real_popen(*args, **kw)

    monkeypatch.setattr(subprocess, "Popen", popen_with_low_limit)
    server = start_gchat("--compat", "--max-clients", "1000")
    monkeypatch.setattr(subprocess, "Popen", real_popen)
    clients = [socket.create_connection((server.host, server.port), timeout=10) for _ in range(70)]
    server.wait_for_log(r"accept failed .*pausing accepts")
    served = greeted(clients, timeout=2)
    assert 0 < len(served) < 70  # the rest wait in the backlog
    waiting = [sock for sock in clients if sock not in served]
    for sock in served:  # free descriptors: the waiting ones get in
        sock.close()
    # As many as were served before fit now (all of them, here: the limit
    # leaves room for about 40 of the 70).
    assert len(greeted(waiting, timeout=10)) == min(len(waiting), len(served))
    assert server.proc.poll() is None
    for sock in waiting:
        sock.close()


def test_peer_faults_leak_no_descriptors_or_greenlets(start_gchat):
    server = start_gchat("--flood-rate", "0")
    observer = server.named("observer")
    pid = server.proc.pid
    base = stats(observer)
    base_fds = fd_count(pid)
    assert base["fds"] == base_fds
    crowd = []
    for i in range(300):
        c = ChatClient(server.host, server.port)
        c.send(f"c{i}\n" if i % 3 else b"")  # two in three take a name
        crowd.append(c)
    talker = server.named("talker")
    for i in range(50):  # output is flowing while they die
        talker.say(f"busy {i} " + "x" * 2000)
    for i, c in enumerate(crowd):
        if i % 3 == 0:  # reset: RST at once, perhaps in the middle of a send
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        elif i % 3 == 1:  # half-close: the client has left
            c.sock.shutdown(socket.SHUT_WR)
        else:
            c.close()
    talker.close()
    wait_until(lambda: stats(observer)["clients"] == 1, what="clients back to 1")
    for c in crowd:
        c.close()
    wait_until(lambda: fd_count(pid) == base_fds, what="descriptors back to baseline")
    after = stats(observer)
    assert after["greenlets"] == base["greenlets"]
    assert after["watchers"] == base["watchers"]
    assert after["connections"] == base["connections"] == 1
