"""The PROXY protocol parser (gchat/proxy_header.py), pure: headers built
byte by byte from HAProxy's doc/proxy-protocol.txt, fed whole, split at
every position and in arbitrary pieces, and every way of being malformed."""

import dataclasses
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gchat.protocol import format_address
from gchat.proxy_header import (
    NEED_MORE,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    Malformed,
    ProxyHeader,
    ProxyHeaderParser,
    crc32c,
    parse,
    peer_allowed,
)

REAL = ("10.9.8.7", 40000)  # the connection's own peer, for client_address()


def v2(command=0x1, family=0x11, block=b"", version=0x2, length=None):
    """A v2 header: signature, version/command, family/protocol, length, block."""
    if length is None:
        length = len(block)
    fixed = bytes([version << 4 | command, family]) + struct.pack(">H", length)
    return V2_SIGNATURE + fixed + block


def inet4(src="192.0.2.1", dst="198.51.100.2", sport=56324, dport=443) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack(">HH", sport, dport)
    )


def inet6(src="2001:db8::1", dst="2001:db8::2", sport=56324, dport=443) -> bytes:
    return (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack(">HH", sport, dport)
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack(">H", len(value)) + value


def with_crc(header: bytes) -> bytes:
    """header (whose length field already counts a CRC32C TLV at its end,
    value zeroed) with the checksum filled in, as a sender does."""
    return header[:-4] + struct.pack(">I", crc32c(header))


def feed_in_pieces(data: bytes, cuts) -> object:
    """The parser's final answer when data arrives cut at cuts, with the
    bytes not fed yet added to its leftover (they are the client's, and
    reach the Connection after it), so that it compares with parse(data)."""
    parser = ProxyHeaderParser()
    result = NEED_MORE
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        piece = data[start:cut]
        start = cut
        if not piece:
            continue
        result = parser.feed(piece)
        if isinstance(result, ProxyHeader):
            return dataclasses.replace(result, leftover=result.leftover + data[start:])
        if result is not NEED_MORE:
            return result
    return result


# --- Version 1 -------------------------------------------------------------


def test_v1_tcp4():
    data = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n"
    result = parse(data)
    assert result == ProxyHeader(
        1, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443), 47, b"GET / HTTP/1.1\r\n"
    )
    assert result.client_address(REAL) == ("192.168.0.1", 56324)


def test_v1_tcp4_extremes():
    line = b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n"
    assert len(line) <= 56
    result = parse(line)
    assert result.source == ("255.255.255.255", 65535)
    assert result.destination == ("0.0.0.0", 0)
    assert result.leftover == b""


def test_v1_tcp6_is_shown_as_go_shows_it():
    result = parse(b"PROXY TCP6 ::1 ::1 5000 8000\r\nhi\n")
    assert result.transport == "TCP6"
    assert result.source == ("::1", 5000)
    assert result.leftover == b"hi\n"
    assert format_address(*result.client_address(REAL)) == "[::1]:5000"


def test_v1_tcp6_full_length_upper_case_is_canonicalised():
    full = "FFFF:" * 7 + "FFFF"
    line = f"PROXY TCP6 {full} 2001:DB8:0:0:0:0:0:1 65535 65535\r\n".encode()
    assert len(line) == 104 - 39 + len("2001:DB8:0:0:0:0:0:1")
    result = parse(line)
    assert result.source == ("ffff:" * 7 + "ffff", 65535)
    assert result.destination == ("2001:db8::1", 65535)


def test_v1_tcp6_ipv4_mapped_is_the_ipv4_host():
    # inet_ntop writes mapped addresses with a dotted tail; Go's String()
    # shows them as plain IPv4, and so does gchat.
    result = parse(b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n")
    assert result.source == ("192.0.2.1", 1)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        b"PROXY UNKNOWN anything at all, ignored \x01\xff\r\n",
    ],
)
def test_v1_unknown_uses_the_real_address(line):
    assert len(line) <= V1_MAX_LENGTH
    result = parse(line + b"rest")
    assert (result.version, result.command, result.transport) == (1, "PROXY", "UNKNOWN")
    assert result.source is None
    assert result.leftover == b"rest"
    assert result.length == len(line)
    assert result.client_address(REAL) == REAL


def test_v1_longest_line_is_exactly_107_bytes_and_accepted():
    six = ":".join(["ffff"] * 8)
    line = f"PROXY UNKNOWN {six} {six} 65535 65535\r\n".encode()
    assert len(line) == V1_MAX_LENGTH == 107
    assert isinstance(parse(line), ProxyHeader)


def test_v1_line_of_108_bytes_is_rejected():
    line = b"PROXY UNKNOWN " + b"x" * (108 - 16) + b"\r\n"
    assert len(line) == 108
    assert parse(line) == Malformed("v1 line has no CRLF within 107 bytes")
    # And so is a CR that comes at byte 107, whose LF would be the 108th.
    assert parse(line[:-1]) == Malformed("v1 line has no CRLF within 107 bytes")


def test_v1_without_crlf_waits_until_107_bytes_then_fails():
    prefix = b"PROXY UNKNOWN " + b"x" * 200
    assert parse(prefix[:106]) is NEED_MORE
    assert parse(prefix[:107]) == Malformed("v1 line has no CRLF within 107 bytes")


@pytest.mark.parametrize(
    "data",
    [b"P", b"PRO", b"PROXY", b"PROXY ", b"PROXY TCP4 1.2.3.4", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"],
)
def test_v1_incomplete_needs_more(data):
    assert parse(data) is NEED_MORE


@pytest.mark.parametrize(
    "line,reason",
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "v1 line ends in LF without CR"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "v1 line has a CR without LF"),
        (b"PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n", "v1 line ends in LF without CR"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "v1 protocol b'TCP5' is not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "v1 protocol b'tcp4' is not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY UNKNOWNX\r\n", "v1 protocol b'UNKNOWNX' is not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY \r\n", "v1 protocol b'' is not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "v1 line has 4 fields, not 5"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "v1 line has 6 fields, not 5"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "v1 line has 6 fields, not 5"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "v1 line has 6 fields, not 5"),
        (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "v1 protocol b'' is not TCP4, TCP6 or UNKNOWN"),
    ],
)
def test_v1_malformed_lines(line, reason):
    assert parse(line) == Malformed(reason)


@pytest.mark.parametrize(
    "address",
    [
        "256.1.1.1",
        "1.2.3",
        "1.2.3.4.5",
        "01.2.3.4",
        "1.2.3.04",
        "1.2.3.4 ",
        "-1.2.3.4",
        "1.2.3.",
        "::1",
        "1.2.3.4/8",
        "0x1.2.3.4",
        "１.2.3.4",
    ],
)
def test_v1_tcp4_bad_addresses(address):
    line = f"PROXY TCP4 {address} 5.6.7.8 1 2\r\n".encode()
    result = parse(line)
    assert isinstance(result, Malformed), result


@pytest.mark.parametrize(
    "address",
    [
        "1.2.3.4",
        "::g",
        "1:2:3:4:5:6:7:8:9",
        "1::2::3",
        "fe80::1%eth0",
        "12345::1",
        ":::",
        "::1/128",
        "",
    ],
)
def test_v1_tcp6_bad_addresses(address):
    line = f"PROXY TCP6 {address} ::1 1 2\r\n".encode()
    assert isinstance(parse(line), Malformed)


@pytest.mark.parametrize(
    "port", ["65536", "99999", "007", "00", "-1", "+1", "1e3", "", "123456", "0x10", " 1"]
)
def test_v1_bad_ports(port):
    for line in (
        f"PROXY TCP4 1.2.3.4 5.6.7.8 {port} 2\r\n",
        f"PROXY TCP4 1.2.3.4 5.6.7.8 1 {port}\r\n",
    ):
        assert isinstance(parse(line.encode()), Malformed), line


def test_v1_line_split_at_every_position():
    data = b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 5678\r\nhello\n"
    whole = parse(data)
    assert whole.source == ("2001:db8::1", 1234)
    for cut in range(1, len(data)):
        assert feed_in_pieces(data, [cut]) == whole, cut
    # One byte at a time.
    assert feed_in_pieces(data, range(len(data))) == whole


# --- Version 2 -------------------------------------------------------------


def test_v2_proxy_tcp4():
    data = v2(block=inet4()) + b"after"
    result = parse(data)
    assert result == ProxyHeader(
        2, "PROXY", "TCP4", ("192.0.2.1", 56324), ("198.51.100.2", 443), 28, b"after"
    )


def test_v2_proxy_tcp6():
    result = parse(v2(family=0x21, block=inet6(src="::1", sport=5000)))
    assert result.transport == "TCP6"
    assert result.source == ("::1", 5000)
    assert result.destination == ("2001:db8::2", 443)
    assert result.length == 16 + 36
    assert format_address(*result.client_address(REAL)) == "[::1]:5000"


def test_v2_tlvs_are_skipped():
    tlvs = (
        tlv(0x01, b"h2")
        + tlv(0x02, b"chat.example.org")
        + tlv(0x04, b"")
        + tlv(0x20, b"\x01\0\0\0\0" + tlv(0x21, b"TLSv1.3"))
        + tlv(0xE0, b"x" * 300)
    )
    for family, block in ((0x11, inet4()), (0x21, inet6())):
        data = v2(family=family, block=block + tlvs) + b"line\n"
        result = parse(data)
        assert result.transport in ("TCP4", "TCP6")
        assert result.source[1] == 56324
        assert result.length == 16 + len(block) + len(tlvs)
        assert result.leftover == b"line\n"


def test_v2_crc32c_tlv_is_checked():
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720's check value
    block = inet4() + tlv(0x05, b"id-1") + tlv(0x03, b"\0\0\0\0")
    good = with_crc(v2(block=block))
    assert parse(good).source == ("192.0.2.1", 56324)
    bad = good[:-1] + bytes([good[-1] ^ 1])
    assert parse(bad) == Malformed("v2 CRC32C mismatch")
    assert parse(v2(block=inet4() + tlv(0x03, b"\0\0\0"))) == Malformed(
        "v2 CRC32C TLV of 3 bytes, not 4"
    )


def test_v2_health_check_header_captured_from_haproxy():
    # What HAProxy 2.6 (Debian 12) sent for a health check of a server with
    # "send-proxy-v2 proxy-v2-options crc32c": LOCAL, family UNSPEC, and a
    # CRC32C TLV whose value our crc32c reproduces.
    data = V2_SIGNATURE + b" \x00\x00\x07" + b"\x03\x00\x04\xa9\xb8~\x8f"
    assert crc32c(data[:-4] + b"\0\0\0\0") == 0xA9B87E8F
    result = parse(data)
    assert (result.command, result.length, result.leftover) == ("LOCAL", 23, b"")
    assert result.client_address(REAL) == REAL


@pytest.mark.parametrize(
    "tail,reason",
    [
        (b"\x01", "v2 TLV header truncated at byte 28"),
        (b"\x01\x00", "v2 TLV header truncated at byte 28"),
        (b"\x01\x00\x05abc", "v2 TLV 0x01 of 5 bytes overruns the header"),
        (tlv(0x04, b"ok") + b"\x02\x00", "v2 TLV header truncated at byte 33"),
    ],
)
def test_v2_bad_tlvs(tail, reason):
    assert parse(v2(block=inet4() + tail)) == Malformed(reason)


@pytest.mark.parametrize(
    "family,block",
    [
        (0x00, b""),
        (0x11, inet4()),
        (0x21, inet6()),
        (0x31, b"\0" * 216),
        (0x77, b"junk"),
        (0x11, b""),
    ],
)
def test_v2_local_uses_the_real_address_and_skips_the_block(family, block):
    # The spec: LOCAL discards the block, family included, and must not
    # assume it is empty.
    result = parse(v2(command=0x0, family=family, block=block) + b"x")
    assert (result.version, result.command, result.transport) == (2, "LOCAL", "UNKNOWN")
    assert result.source is None
    assert result.leftover == b"x"
    assert result.client_address(REAL) == REAL


@pytest.mark.parametrize(
    "family,block",
    [
        (0x00, b""),  # UNSPEC
        (0x00, b"addresses to be ignored"),
        (0x10, inet4()),
        (0x20, inet6()),  # a family, protocol UNSPEC
        (0x12, inet4()),
        (0x22, inet6()),  # UDP
        (0x31, b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0")),  # AF_UNIX stream
        (0x32, b"\0" * 216 + tlv(0x04, b"")),  # AF_UNIX datagram, with a TLV
    ],
)
def test_v2_proxy_without_tcp_addresses_uses_the_real_address(family, block):
    result = parse(v2(family=family, block=block))
    assert (result.command, result.transport, result.source) == ("PROXY", "UNKNOWN", None)
    assert result.client_address(REAL) == REAL


@pytest.mark.parametrize(
    "data,reason",
    [
        (v2(version=0x1, block=inet4()), "v2 signature with version 1"),
        (v2(version=0x3, block=inet4()), "v2 signature with version 3"),
        (v2(command=0x2, block=inet4()), "unknown v2 command 0x2"),
        (v2(command=0xF, block=inet4()), "unknown v2 command 0xf"),
        (v2(family=0x41, block=inet4()), "unknown v2 family/protocol 0x41"),
        (v2(family=0x13, block=inet4()), "unknown v2 family/protocol 0x13"),
        (v2(family=0x11, block=inet4()[:11]), "v2 address block of 11 bytes; family 1 needs 12"),
        (v2(family=0x21, block=inet4()), "v2 address block of 12 bytes; family 2 needs 36"),
        (v2(family=0x31, block=b"\0" * 215), "v2 address block of 215 bytes; family 3 needs 216"),
        (b"\r\n\r\n\x00\r\nQUIT\r" + b"\x21\x11\x00\x0c" + inet4(), "bad v2 signature"),
        (b"\r\n\r\nX", "bad v2 signature"),
        (b"\r\r", "bad v2 signature"),
    ],
)
def test_v2_malformed(data, reason):
    assert parse(data) == Malformed(reason)


def test_v2_fixed_part_is_judged_before_the_block_arrives():
    # A bad command is known from 16 bytes; a good one waits for the block.
    assert parse(v2(command=0x5, length=12)) == Malformed("unknown v2 command 0x5")
    assert parse(v2(length=12)) is NEED_MORE
    assert parse(v2(length=0xFFFF) + b"\0" * 1000) is NEED_MORE


def test_v2_truncated_needs_more():
    data = v2(block=inet4() + tlv(0x04, b"pad"))
    for end in range(1, len(data)):
        assert parse(data[:end]) is NEED_MORE, end


def test_v2_split_at_every_position():
    data = (
        with_crc(
            v2(family=0x21, block=inet6() + tlv(0x02, b"example.org") + tlv(0x03, b"\0\0\0\0"))
        )
        + b"first line\n"
    )
    whole = parse(data)
    assert whole.transport == "TCP6" and whole.leftover == b"first line\n"
    for cut in range(1, len(data)):
        assert feed_in_pieces(data, [cut]) == whole, cut
    assert feed_in_pieces(data, range(len(data))) == whole


# --- Neither -------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"hello\n",
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",
        b"proxy TCP4",
        b"PROXYTCP4",
        b"PROXY\tTCP4",
        b"\0",
        b" PROXY",
        b"PRoXY ",
    ],
)
def test_anything_else_is_refused_at_once(data):
    # As soon as the bytes cannot begin a header: a chat client that
    # connects straight to a --proxy-protocol port is closed, not kept.
    result = parse(data)
    assert isinstance(result, Malformed), result
    assert feed_in_pieces(data, range(len(data))) == result


def test_parser_refuses_to_be_fed_after_its_answer():
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN\r\n").leftover == b""
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


def test_peer_allowed():
    loopback = ("127.0.0.0/8", "::1/128")
    assert peer_allowed("127.0.0.1", loopback)
    assert peer_allowed("127.9.9.9", loopback)
    assert peer_allowed("::1", loopback)
    assert peer_allowed("::ffff:127.0.0.1", loopback)  # a dual-stack listener's IPv4 peer
    assert not peer_allowed("10.0.0.1", loopback)
    assert not peer_allowed("::2", loopback)
    assert peer_allowed("10.1.2.3", ("10.0.0.0/8",))
    assert peer_allowed("10.1.2.3", ("10.1.2.3",))  # a single host
    assert not peer_allowed("127.0.0.1", ("10.0.0.0/8",))
    assert not peer_allowed("not an address", loopback)


# --- Properties ------------------------------------------------------------

ipv4s = st.ip_addresses(v=4).map(str)
ipv6s = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)
ports = st.integers(0, 65535)
tlvs = st.lists(
    st.tuples(st.integers(0, 255).filter(lambda t: t != 0x03), st.binary(max_size=40)), max_size=4
).map(lambda items: b"".join(tlv(k, v) for k, v in items))


@st.composite
def headers(draw):
    """(bytes of a valid header followed by client bytes, expected source)."""
    tail = draw(st.binary(max_size=30))
    kind = draw(st.sampled_from(["v1-4", "v1-6", "v1-unknown", "v2-4", "v2-6", "v2-local"]))
    sport, dport = draw(ports), draw(ports)
    if kind == "v1-4":
        src, dst = draw(ipv4s), draw(ipv4s)
        return f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode() + tail, (src, sport), tail
    if kind == "v1-6":
        src, dst = draw(ipv6s), draw(ipv6s)
        return f"PROXY TCP6 {src} {dst} {sport} {dport}\r\n".encode() + tail, (src, sport), tail
    if kind == "v1-unknown":
        return b"PROXY UNKNOWN\r\n" + tail, None, tail
    if kind == "v2-local":
        return v2(command=0, family=0, block=draw(st.binary(max_size=50))) + tail, None, tail
    if kind == "v2-4":
        src, dst = draw(ipv4s), draw(ipv4s)
        return v2(block=inet4(src, dst, sport, dport) + draw(tlvs)) + tail, (src, sport), tail
    src, dst = draw(ipv6s), draw(ipv6s)
    return (
        v2(family=0x21, block=inet6(src, dst, sport, dport) + draw(tlvs)) + tail,
        (src, sport),
        tail,
    )


@settings(max_examples=300, deadline=None)
@given(headers(), st.lists(st.integers(1, 400), max_size=12))
def test_any_valid_header_split_anyhow_parses_the_same(case, cuts):
    data, source, tail = case
    whole = parse(data)
    assert isinstance(whole, ProxyHeader), whole
    assert whole.source == source
    assert whole.leftover == tail
    assert data[: whole.length] + whole.leftover == data
    assert feed_in_pieces(data, [c for c in cuts if c < len(data)]) == whole


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(1, 200), max_size=8))
def test_garbage_never_crashes_and_splitting_never_changes_the_answer(data, cuts):
    whole = parse(data)
    assert whole is NEED_MORE or isinstance(whole, (ProxyHeader, Malformed))
    assert feed_in_pieces(data, [c for c in cuts if c < len(data)]) == whole


@settings(max_examples=300, deadline=None)
@given(headers(), st.data())
def test_a_corrupted_header_gets_the_same_answer_whole_or_split(case, data):
    """Flip one byte inside a header: the parser may still accept it (an
    address byte is an address byte), but it never crashes, and the answer
    is the same however the bytes are split."""
    raw, _, _ = case
    length = parse(raw).length
    index = data.draw(st.integers(0, length - 1))
    flipped = raw[:index] + bytes([raw[index] ^ data.draw(st.integers(1, 255))]) + raw[index + 1 :]
    whole = parse(flipped)
    assert whole is NEED_MORE or isinstance(whole, (ProxyHeader, Malformed))
    assert feed_in_pieces(flipped, range(1, len(flipped))) == whole
