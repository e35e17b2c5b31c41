"""TLS on the line port, against the console script: Python's ssl client
and `openssl s_client` as real clients, plain text and garbage on the TLS
port, a handshake that never finishes, client certificates, and SIGHUP
reloading the certificate without dropping anyone.  The certificates are
made at test time with the openssl command."""

import re
import shutil
import signal
import socket
import ssl
import subprocess

import pytest
from chat_client import DEFAULT_TIMEOUT

HOST = "127.0.0.1"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder, name="ca"):
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN=gchat test {name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        cwd=folder,
    )
    return folder / f"{name}.pem"


def make_cert(folder, name, ca="ca", cn=None, server=True):
    """A key and a certificate signed by ca; a server one names 127.0.0.1."""
    cn = cn or name
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={cn}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        cwd=folder,
    )
    ext = folder / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n" if server else "extendedKeyUsage=clientAuth\n")
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        ext.name,
        "-out",
        f"{name}.pem",
        cwd=folder,
    )
    return folder / f"{name}.pem", folder / f"{name}.key"


@pytest.fixture
def pki(tmp_path):
    ca = make_ca(tmp_path)
    cert, key = make_cert(tmp_path, "server", cn="first")
    return {"dir": tmp_path, "ca": ca, "cert": cert, "key": key}


class TlsClient:
    """A line client over TLS (Python's ssl module, blocking, deadlines)."""

    def __init__(self, port, ca, cert=None, key=None, timeout=DEFAULT_TIMEOUT, rcvbuf=None):
        context = ssl.create_default_context(cafile=str(ca))
        if cert:
            context.load_cert_chain(str(cert), str(key))
        raw = socket.socket()
        if rcvbuf:  # before connecting, so that the window stays small
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect((HOST, port))
        self.sock = context.wrap_socket(raw, server_hostname=HOST)
        self.buffer = b""

    @property
    def peer_cn(self) -> str:
        subject = dict(item[0] for item in self.sock.getpeercert()["subject"])
        return subject["commonName"]

    def say(self, line):
        self.sock.sendall(line.encode() + b"\n")

    def line(self) -> str:
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buffer)
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def expect(self, pattern, skip=False):
        while True:
            line = self.line()
            if re.fullmatch(pattern, line):
                return line
            if not skip:
                raise AssertionError(f"expected {pattern!r}, got {line!r}")

    def named(self, name):
        self.expect(r".*name\?")
        self.say(name)
        self.expect(f"You are {name}")
        self.expect(r"(Also here|Nobody else).*")
        return self


def closed_soon(sock, timeout=5.0) -> bool:
    """True when the server closes sock (EOF or reset) within timeout."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.fixture
def tls_server(start_gchat, pki):
    server = start_gchat(
        "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]), "--tls-handshake-timeout", "1"
    )
    return server, pki


def test_two_tls_clients_chat(tls_server):
    server, pki = tls_server
    a = TlsClient(server.port, pki["ca"]).named("alice")
    b = TlsClient(server.port, pki["ca"]).named("bob")
    a.expect("bob has arrived")
    b.say("over tls")
    a.expect("bob: over tls")
    b.expect("bob: over tls")
    assert a.sock.version() in ("TLSv1.2", "TLSv1.3")


def test_openssl_s_client_is_a_client(tls_server):
    server, pki = tls_server
    watcher = TlsClient(server.port, pki["ca"]).named("watcher")
    proc = subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-connect",
            f"{HOST}:{server.port}",
            "-quiet",
            "-CAfile",
            str(pki["ca"]),
            "-verify_return_error",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        proc.stdin.write(b"sslclient\nhello from openssl\n")
        proc.stdin.flush()
        watcher.expect("sslclient has arrived")
        watcher.expect("sslclient: hello from openssl")
        proc.stdin.write(b"/quit\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=DEFAULT_TIMEOUT)
        assert b"You are sslclient" in out and b"Goodbye." in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_plain_text_garbage_and_silence_are_closed_and_nobody_else_notices(tls_server):
    server, pki = tls_server
    a = TlsClient(server.port, pki["ca"]).named("steady")
    plain = socket.create_connection((HOST, server.port), timeout=10)
    plain.sendall(b"hello, I speak no TLS\n")
    assert closed_soon(plain)
    server.wait_for_log(r"TLS handshake failed")
    silent = socket.create_connection((HOST, server.port), timeout=10)
    assert closed_soon(silent, timeout=5)  # --tls-handshake-timeout 1
    server.wait_for_log(r"no TLS handshake within 1 s")
    # Garbage in the middle of a session: bytes that are no TLS record.
    b = TlsClient(server.port, pki["ca"]).named("garbler")
    a.expect("garbler has arrived")
    raw = socket.socket(fileno=b.sock.fileno())  # the same descriptor, under TLS's feet
    raw.sendall(b"\x17\x03\x03\x00\x10" + b"not a record at all" * 2)
    raw.detach()
    a.expect(r"garbler has left.*")
    server.wait_for_log(r"TLS error, closing")
    a.say("still fine")
    a.expect("steady: still fine")


def test_client_certificates_when_a_client_ca_is_given(start_gchat, pki):
    folder = pki["dir"]
    client_cert, client_key = make_cert(folder, "client", server=False)
    server = start_gchat(
        "--tls-cert",
        str(pki["cert"]),
        "--tls-key",
        str(pki["key"]),
        "--tls-client-ca",
        str(pki["ca"]),
    )
    good = TlsClient(server.port, pki["ca"], cert=client_cert, key=client_key).named("certified")
    good.say("/who")
    good.expect(r"Here now \(1\): certified")
    with pytest.raises((ssl.SSLError, ConnectionResetError, EOFError, BrokenPipeError)):
        anonymous = TlsClient(server.port, pki["ca"])  # TLS 1.3 reports it on first read
        anonymous.named("anonymous")
    server.wait_for_log(r"TLS handshake failed")


def test_sighup_reloads_the_certificate_without_dropping_anyone(tls_server):
    server, pki = tls_server
    folder = pki["dir"]
    old = TlsClient(server.port, pki["ca"]).named("old")
    assert old.peer_cn == "first"
    make_cert(folder, "next", cn="second")
    shutil.copy(folder / "next.pem", pki["cert"])
    shutil.copy(folder / "next.key", pki["key"])
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"TLS certificate reloaded")
    new = TlsClient(server.port, pki["ca"]).named("new")
    assert new.peer_cn == "second"
    old.expect("new has arrived")
    old.say("still here")
    new.expect("old: still here")
    # A bad new file: logged, and the certificate in use stays.
    pki["cert"].write_text("not a certificate\n")
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"TLS reload failed, keeping the current certificate")
    again = TlsClient(server.port, pki["ca"]).named("again")
    assert again.peer_cn == "second"


def test_a_bad_certificate_at_start_is_one_error_and_exit_1(tmp_path):
    from chat_client import gchat_executable

    (tmp_path / "bad.pem").write_text("nothing\n")
    proc = subprocess.run(
        [
            gchat_executable(),
            "--port",
            "0",
            "--tls-cert",
            str(tmp_path / "bad.pem"),
            "--tls-key",
            str(tmp_path / "bad.pem"),
        ],
        capture_output=True,
        timeout=DEFAULT_TIMEOUT,
    )
    assert proc.returncode == 1
    assert b"cannot start" in proc.stderr


def test_the_context_asks_for_tls_1_2_at_least_and_verifies_client_certificates(pki):
    """Checked on the context itself: a client of this machine's OpenSSL
    refuses TLS 1.1 on its own, so a handshake could not tell."""
    from gchat.config import Config
    from gchat.transport.tls import TlsContext

    plain = TlsContext(Config(tls_cert=str(pki["cert"]), tls_key=str(pki["key"]))).context
    assert plain.minimum_version == ssl.TLSVersion.TLSv1_2
    assert plain.verify_mode == ssl.CERT_NONE
    mutual = TlsContext(
        Config(tls_cert=str(pki["cert"]), tls_key=str(pki["key"]), tls_client_ca=str(pki["ca"]))
    ).context
    assert mutual.verify_mode == ssl.CERT_REQUIRED


def https_get(port, ca, path):
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((HOST, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=HOST) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return data
                data += chunk


def test_http_becomes_https_and_wss_in_the_same_rooms(start_gchat, pki):
    from ws_client import WsClient

    server = start_gchat(
        "--tls-cert",
        str(pki["cert"]),
        "--tls-key",
        str(pki["key"]),
        "--http",
        "0",
        "--tls-handshake-timeout",
        "1",
    )
    health = https_get(server.http_port, pki["ca"], "/healthz")
    assert health.startswith(b"HTTP/1.1 200") and health.endswith(b"ok")
    line_client = TlsClient(server.port, pki["ca"]).named("liner")
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    browser = WsClient(HOST, server.http_port, ssl_context=context)
    browser.expect(r".*name\?")
    browser.say("webber")
    browser.expect("You are webber")
    browser.expect(r"Also here \(1\): liner")
    line_client.expect("webber has arrived")
    line_client.say("to the web, encrypted")
    browser.expect("liner: to the web, encrypted")
    line_client.expect("liner: to the web, encrypted")
    browser.say("and back\nin two lines")
    line_client.expect("webber: and back")
    line_client.expect("webber: in two lines")
    browser.say("/quit")
    browser.expect("Goodbye.", skip=True)
    assert browser.wait_closed() == 1000  # the close frame, inside TLS
    line_client.expect("webber has left")
    plain = socket.create_connection((HOST, server.http_port), timeout=10)
    plain.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # http to the https port
    assert closed_soon(plain)
    server.wait_for_log(r"TLS handshake failed")


def test_a_slow_tls_client_under_the_drop_policy_is_told_what_it_missed(start_gchat, pki):
    """Skipped lines are never encrypted, and the notice is encrypted in
    its turn: the client's TLS stream stays valid throughout."""
    server = start_gchat(
        "--tls-cert",
        str(pki["cert"]),
        "--tls-key",
        str(pki["key"]),
        "--slow-policy",
        "drop",
        "--sendq",
        "20000",
        "--sndbuf",
        "4096",
        "--flood-rate",
        "0",
    )
    slow = TlsClient(server.port, pki["ca"], rcvbuf=4096).named("slow")
    talker = TlsClient(server.port, pki["ca"]).named("talker")
    slow.expect("talker has arrived")
    for i in range(300):  # the talker reads none of it either: it is slow too
        talker.say(f"{i:04d} " + "z" * 400)
    # The slow client reads now: every line either arrives, in order, or
    # is counted in a notice; none goes missing unannounced.
    chats, skipped = [], 0
    while len(chats) + skipped < 300:
        line = slow.line()
        notice = re.fullmatch(
            r"error: you were too slow to read; (\d+) messages were skipped", line
        )
        if notice:
            skipped += int(notice.group(1))
        elif line.startswith("talker: 0"):
            chats.append(int(line.split()[1]))
    assert skipped > 0 and len(chats) + skipped == 300
    assert chats == sorted(chats)
    talker.say("the end")  # caught up: this one is not skipped
    slow.expect("talker: the end")
