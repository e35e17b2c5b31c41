"""gchat-bench over WebSocket (--ws) and TLS (--tls) against a spawned gchat,
and the generator's WebSocket frame parsing at every split point.

Exact accounting only (0 lost, the right expected count), never timings.
"""

import json
import os
import socket
import ssl
import subprocess
import sys

import pytest

from gchat_bench.cli import run_spawned
from gchat_bench.runner import Options
from gchat_bench.servers import Server, gchat_command, spawn_argv
from gchat_bench.transports import (
    Closed,
    TlsTransport,
    WsDecoder,
    WsTransport,
    make_cert,
    spawn_options,
    ws_frame,
    ws_unmask,
)

CLIENTS = 20
SENDERS = 2
RUN_TIMEOUT = 120


def server_frame(payload: bytes, opcode: int = 1, len64: bool = False) -> bytes:
    """An unmasked server frame, as gchat sends them (len64: with a 64-bit
    length even for a short payload, to test that header cheaply)."""
    n = len(payload)
    if len64:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    elif n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


def fanout(transport, **kw):
    o = Options(
        scenario="fanout",
        clients=CLIENTS,
        senders=SENDERS,
        rate=20.0,
        duration=2.0,
        workers=2,
        progress=False,
        drain_timeout=20.0,
        settle_timeout=30.0,
        connect_timeout=20.0,
        transport=transport,
        **kw,
    )
    return run_spawned(o)


@pytest.mark.parametrize("transport", ["ws", "tls"])
def test_fanout_over_transport(transport):
    r = fanout(transport)
    assert r["transport"] == transport
    assert r["connect_errors"] == 0, r.get("connect_error_samples")
    assert r["connected"] == CLIENTS
    assert r["disconnected"] == 0
    # 2 senders at 20 msg/s together for 2 s: 40 lines, each to all 20.
    assert r["sent"] == 40
    assert r["expected"] == r["sent"] * CLIENTS == 800
    assert r["received"] == r["expected"]
    assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0)
    assert r["drain_complete"] is True
    assert r["server_cpu_us_per_delivery"] > 0
    assert "server_exit_code" not in r


def test_idle_over_ws():
    o = Options(
        scenario="idle",
        clients=CLIENTS,
        duration=1.0,
        workers=2,
        progress=False,
        connect_timeout=20.0,
        transport="ws",
    )
    r = run_spawned(o)
    assert r["connect_errors"] == 0
    assert r["received"] == r["expected"] == CLIENTS and r["lost"] == 0


def test_spawn_options():
    assert spawn_options("tcp", "--sendq 1") == "--sendq 1"
    assert spawn_options("ws", "") == "--http 0"
    assert spawn_options("ws", "--http 0") == "--http 0"
    cert, key = make_cert()
    assert spawn_options("tls", "") == "--tls-cert %s --tls-key %s" % (cert, key)
    assert open(cert).read().startswith("-----BEGIN CERTIFICATE-----")


def test_spawned_gchat_reports_both_ports():
    srv = Server.spawn("gchat", spawn_argv(gchat_command(), "--http 0", compat=False))
    try:
        assert srv.http_port and srv.port and srv.http_port != srv.port
    finally:
        srv.stop()


# ------------------------------------------------------------ frame parsing

STREAM_LINES = [b"welcome\n", b"a" * 130 + b"\n", b"x\ny\n", b""]


def frames_and_payload():
    """Frames with 7-bit, 16-bit and 64-bit lengths, an empty one, a ping
    and a continuation in between; and the line bytes they carry."""
    wire = b""
    for p in STREAM_LINES:
        wire += server_frame(p)
    wire += server_frame(b"b" * 40 + b"\n", len64=True)
    wire += server_frame(b"ping!", opcode=9)
    wire += bytes((0x01, 3)) + b"one" + bytes((0x80, 2)) + b"\n\n"  # text + continuation
    wire += server_frame(b"last\n")
    return wire, b"".join(STREAM_LINES) + b"b" * 40 + b"\none\n\nlast\n"


def test_ws_decoder_whole():
    wire, payload = frames_and_payload()
    assert WsDecoder().decode(wire) == payload
    big = b"c" * 70000 + b"\n"  # a real 64-bit length
    d = WsDecoder()
    wire = server_frame(big)
    assert d.decode(wire[:5]) + d.decode(wire[5:12]) + d.decode(wire[12:]) == big


def test_ws_decoder_every_split_point():
    """Split the stream in two at every byte (headers included) and in
    three around every header: the payload comes out the same."""
    wire, payload = frames_and_payload()
    for cut in range(len(wire) + 1):
        d = WsDecoder()
        assert d.decode(wire[:cut]) + d.decode(wire[cut:]) == payload, cut
    # Three pieces: every cut inside the first 300 bytes x every second cut
    # inside the bytes around the 16-bit and 64-bit headers.
    heads = [i for i in range(len(wire)) if wire[i] in (0x81, 0x89, 0x01, 0x80)]
    for a in range(0, 300):
        for h in heads[:12]:
            for b in (h, h + 1, h + 2, h + 3, h + 5, h + 9, h + 10):
                if a <= b <= len(wire):
                    d = WsDecoder()
                    got = d.decode(wire[:a]) + d.decode(wire[a:b]) + d.decode(wire[b:])
                    assert got == payload, (a, b)


def test_ws_decoder_byte_by_byte():
    wire, payload = frames_and_payload()
    d = WsDecoder()
    assert b"".join(d.decode(wire[i : i + 1]) for i in range(len(wire))) == payload


def test_ws_close_frame():
    t = WsTransport()
    with pytest.raises(Closed) as e:
        t.decode(server_frame(b"bye\n") + server_frame(b"\x03\xe8", opcode=8))
    assert e.value.args[0] == b"bye\n"


def test_ws_client_frames_are_masked():
    for n in (0, 5, 125, 126, 65535, 65536):
        payload = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
        f = ws_frame(payload)
        assert f[0] == 0x81 and f[1] & 0x80
        ln = f[1] & 0x7F
        off = 2 if ln < 126 else 4 if ln == 126 else 10
        key, body = f[off : off + 4], f[off + 4 :]
        assert len(body) == n and ws_unmask(body, key) == payload


def test_tls_transport_roundtrip():
    """TlsTransport against a real TLS server socket (the generated cert)."""
    cert, key = make_cert()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    import threading

    def serve():
        conn, _ = ls.accept()
        with ctx.wrap_socket(conn, server_side=True) as s:
            s.sendall(b"hello\n")
            data = b""
            while not data.endswith(b"\n"):
                data += s.recv(100)
            s.sendall(data.upper())

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    c = socket.create_connection(ls.getsockname())
    c.setblocking(False)
    t = TlsTransport(ssl._create_unverified_context())
    got = t.handshake(c, "127.0.0.1", 0, 10)
    import gevent.socket

    while not got.endswith(b"hello\n"):
        gevent.socket.wait_read(c.fileno(), 10)
        got += t.decode(c.recv(65536))
    c.sendall(t.encode(b"ping\n"))
    out = b""
    while not out.endswith(b"\n"):
        gevent.socket.wait_read(c.fileno(), 10)
        out += t.decode(c.recv(65536))
    assert (got, out) == (b"hello\n", b"PING\n")
    c.close()
    ls.close()
    th.join(5)


def test_cli_transports_json(tmp_path):
    """--transports tcp,ws in one invocation: a run per transport, ratios to tcp."""
    env = dict(os.environ)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gchat_bench",
            "fanout",
            "--clients",
            "10",
            "--senders",
            "1",
            "--rate",
            "10",
            "--duration",
            "1",
            "--transports",
            "tcp,ws",
            "--json",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    runs = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["server"] for r in runs] == ["gchat", "gchat+ws"]
    assert [r["transport"] for r in runs] == ["tcp", "ws"]
    assert all(r["lost"] == 0 and r["received"] == r["expected"] > 0 for r in runs)
    assert "gchat+ws vs gchat" in out.stderr
