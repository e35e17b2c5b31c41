"""The PROXY protocol, versions 1 and 2, as HAProxy's doc/proxy-protocol.txt
specifies it: a load balancer in front of gchat (--proxy-protocol) starts
every connection with a header that carries the client's real address, and
that address is the client's everywhere (--compat's "You are HOST:PORT",
--max-per-ip, the logs).

This module is the parser, pure: bytes in, and out NEED_MORE, a
ProxyHeader (with the bytes that followed the header), or
Malformed(reason).  No sockets and no gevent, so that every input, split at
every byte, is tested without a network.  The I/O stage that feeds it is
transport/proxy.py.

The spec's rules that shape the parser: the receiver must not guess whether
a header is there (so a connection without one is closed, never served with
the proxy's address); anything that does not match exactly aborts the
connection, as early as the bytes show it; a header split across reads is
still a header (the spec recommends tolerance, since nothing on the path
has to keep the header in one segment).
"""

import enum
import functools
import ipaddress
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional, Union

# Section 2.1: "PROXY" and exactly one space begin every v1 header; the
# longest line, "PROXY UNKNOWN" with two full IPv6 addresses and ports, is
# 107 bytes with its CRLF, and a line without CRLF by then is invalid.
V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107
# Section 2.2: the v2 signature (its NUL and CRLFs make it fail fast in
# HTTP, TLS, SMTP...), then version/command, family/protocol and length.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LENGTH = 16

_LOCAL, _PROXY = 0x0, 0x1
# Family (high nibble of byte 14) -> length of its address block.
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_ADDRESS_LENGTH = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
# Protocol (low nibble): UNSPEC, STREAM, DGRAM; others must be rejected.
_UNSPEC, _STREAM, _DGRAM = 0x0, 0x1, 0x2
_PP2_TYPE_CRC32C = 0x03


class _NeedMore(enum.Enum):
    """The header is not complete yet: feed more bytes.  An enum of one
    member, so that a type checker narrows `result is NEED_MORE`."""

    NEED_MORE = "NEED_MORE"

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE = _NeedMore.NEED_MORE


@dataclass(frozen=True)
class ProxyHeader:
    """A complete, valid header."""

    version: int  # 1 or 2
    command: str  # "PROXY", or "LOCAL" (v2: the proxy's own health check)
    transport: str  # "TCP4", "TCP6" or "UNKNOWN" (no usable addresses)
    source: Optional[tuple[str, int]]  # (host, port) of the client; None unless TCP4/TCP6
    destination: Optional[tuple[str, int]]  # (host, port) the client connected to; likewise
    length: int  # bytes of the header itself
    leftover: bytes  # bytes received after the header: the client's own

    def client_address(self, real: tuple[str, int]) -> tuple[str, int]:
        """The address the client is known by: the one the header carries,
        or, for LOCAL, UNKNOWN and families without one (AF_UNIX, UNSPEC),
        the real connection's (the spec says to use it as if there were no
        header)."""
        if self.source is not None:
            return self.source
        return (real[0], real[1])


@dataclass(frozen=True)
class Malformed:
    """Not a valid header; the connection must be closed."""

    reason: str


Result = Union[_NeedMore, ProxyHeader, Malformed]


class ProxyHeaderParser:
    """Bytes of a connection's start in, a result out: feed() answers
    NEED_MORE until the header is complete or known to be invalid, and then
    the same final result whatever the bytes were split into."""

    __slots__ = ("_buffer", "result")

    def __init__(self) -> None:
        self._buffer: Optional[bytearray] = bytearray()  # None once the result is known
        # the final ProxyHeader or Malformed, once known
        self.result: Optional[Union[ProxyHeader, Malformed]] = None

    def feed(self, data: bytes) -> Result:
        buffer = self._buffer
        if buffer is None:  # the result is known
            raise RuntimeError("the header is already parsed; its leftover holds later bytes")
        buffer += data
        result = parse(bytes(buffer))
        if result is not NEED_MORE:
            self.result = result
            self._buffer = None
        return result


def parse(data: bytes) -> Result:
    """Everything received so far -> NEED_MORE, a ProxyHeader or Malformed.
    The first byte tells the versions apart ("P" or CR); anything else is
    not a header, and the spec forbids serving it anyway."""
    if not data:
        return NEED_MORE
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data)
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(data)
    return Malformed(f"no PROXY header: starts with {_show(data[:1])}")


# Version 1 ------------------------------------------------------------------


def _parse_v1(data: bytes) -> Result:
    for index, byte in enumerate(data[: len(V1_PREFIX)]):
        if byte != V1_PREFIX[index]:
            # Shown up to the byte that decided, so that the reason is the
            # same however the bytes arrived.
            return Malformed(f"no PROXY header: starts with {_show(data[: index + 1])}")
    if len(data) < len(V1_PREFIX):
        return NEED_MORE
    # The line ends at the first CR, which must be followed by LF; a bare
    # LF or CR is not an end of line (the spec: "must not tolerate a
    # single CR or LF character").
    window = data[:V1_MAX_LENGTH]
    cr, lf = window.find(b"\r"), window.find(b"\n")
    if lf != -1 and (cr == -1 or lf < cr):
        return Malformed("v1 line ends in LF without CR")
    if cr == -1:
        if len(data) >= V1_MAX_LENGTH:
            return Malformed(f"v1 line has no CRLF within {V1_MAX_LENGTH} bytes")
        return NEED_MORE
    if cr + 2 > V1_MAX_LENGTH:
        return Malformed(f"v1 line has no CRLF within {V1_MAX_LENGTH} bytes")
    if cr + 1 == len(data):
        return NEED_MORE
    if data[cr + 1] != 0x0A:
        return Malformed("v1 line has a CR without LF")
    end = cr + 2
    line, leftover = data[len(V1_PREFIX) : cr], data[end:]
    # UNKNOWN: the rest of the line may be anything (or nothing), and the
    # real connection's addresses are used.
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        return ProxyHeader(1, "PROXY", "UNKNOWN", None, None, end, leftover)
    fields = line.split(b" ")  # exactly one space apart: "" fields fail below
    if fields[0] not in (b"TCP4", b"TCP6"):
        return Malformed(f"v1 protocol {_show(fields[0])} is not TCP4, TCP6 or UNKNOWN")
    if len(fields) != 5:
        return Malformed(f"v1 line has {len(fields)} fields, not 5")
    transport = fields[0].decode()
    try:
        src, dst = (_v1_address(field, transport) for field in fields[1:3])
        sport, dport = (_v1_port(field) for field in fields[3:5])
    except ValueError as err:
        return Malformed(f"v1 {transport} line: {err}")
    return ProxyHeader(1, "PROXY", transport, (src, sport), (dst, dport), end, leftover)


_V1_IPV4 = re.compile(rb"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
# Hex groups and colons; dots too, for an embedded IPv4 tail
# (::ffff:1.2.3.4), which inet_ntop writes and HAProxy's inet_pton reads.
# No "%": a scope id names an interface of the sender, meaningless here.
_V1_IPV6 = re.compile(rb"[0-9A-Fa-f:.]{2,45}")
_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")


def _v1_address(field: bytes, transport: str) -> str:
    """A v1 address in its family's canonical text -> gchat's host text.
    IPv4: four decimal numbers 0-255 without leading zeros (the spec
    forbids them lest they be read as octal)."""
    if transport == "TCP4":
        if not _V1_IPV4.fullmatch(field) or any(int(part) > 255 for part in field.split(b".")):
            raise ValueError(f"bad IPv4 address {_show(field)}")
        return str(ipaddress.IPv4Address(field.decode()))
    if not _V1_IPV6.fullmatch(field):
        raise ValueError(f"bad IPv6 address {_show(field)}")
    try:
        address = ipaddress.IPv6Address(field.decode())
    except ValueError:
        raise ValueError(f"bad IPv6 address {_show(field)}") from None
    return _host(address)


def _v1_port(field: bytes) -> int:
    """A decimal port 0-65535, without leading zeros (the spec)."""
    if not _V1_PORT.fullmatch(field) or int(field) > 65535:
        raise ValueError(f"bad port {_show(field)}")
    return int(field)


# Version 2 ------------------------------------------------------------------


def _parse_v2(data: bytes) -> Result:
    seen = data[: len(V2_SIGNATURE)]
    if seen != V2_SIGNATURE[: len(seen)]:
        return Malformed("bad v2 signature")
    if len(data) < V2_HEADER_LENGTH:
        return NEED_MORE
    # The fixed part decides validity before the address block arrives, so
    # a bad header is dropped at once rather than after a wait.
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        return Malformed(f"v2 signature with version {version}")
    if command not in (_LOCAL, _PROXY):
        return Malformed(f"unknown v2 command {command:#x}")
    family, protocol = data[13] >> 4, data[13] & 0x0F
    if command == _PROXY and (family > _AF_UNIX or protocol > _DGRAM):
        return Malformed(f"unknown v2 family/protocol {data[13]:#04x}")
    # 16 bits: a v2 header is at most 16 + 65,535 bytes, so the protocol
    # itself bounds what one connection can make the reader buffer (and
    # only peers in --proxy-from get that far).
    (length,) = struct.unpack_from(">H", data, 14)
    total = V2_HEADER_LENGTH + length
    if len(data) < total:
        return NEED_MORE
    header, leftover = data[:total], data[total:]
    if command == _LOCAL:
        # The proxy's own connection (a health check): the real endpoints
        # are used and the block, family included, is discarded unread
        # (the spec: it need not be empty).
        return ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, total, leftover)
    if family == _AF_UNSPEC or protocol == _UNSPEC:
        # Unknown or unsupported: addresses ignored, like v1's UNKNOWN.
        return ProxyHeader(2, "PROXY", "UNKNOWN", None, None, total, leftover)
    needed = _ADDRESS_LENGTH[family]
    if length < needed:
        return Malformed(f"v2 address block of {length} bytes; family {family} needs {needed}")
    problem = _check_tlvs(header, V2_HEADER_LENGTH + needed)
    if problem is not None:
        return Malformed(problem)
    if protocol != _STREAM or family == _AF_UNIX:
        # UDP or a UNIX socket: no TCP address to give the client, so the
        # real connection's (the spec's fallback to UNSPEC).
        return ProxyHeader(2, "PROXY", "UNKNOWN", None, None, total, leftover)
    size = 4 if family == _AF_INET else 16
    block = header[V2_HEADER_LENGTH:]
    src = _host(ipaddress.ip_address(block[:size]))
    dst = _host(ipaddress.ip_address(block[size : 2 * size]))
    sport, dport = struct.unpack_from(">HH", block, 2 * size)
    transport = "TCP4" if family == _AF_INET else "TCP6"
    return ProxyHeader(2, "PROXY", transport, (src, sport), (dst, dport), total, leftover)


def _check_tlvs(header: bytes, offset: int) -> Optional[str]:
    """Why the TLVs after the addresses are invalid, or None.  Their values
    are not used, but as in HAProxy's own receiver each must fit in the
    header exactly, and a CRC32C TLV must match: a header that fails these
    was damaged or forged, and its addresses cannot be trusted either."""
    total = len(header)
    while offset < total:
        if offset + 3 > total:
            return f"v2 TLV header truncated at byte {offset}"
        kind = header[offset]
        (size,) = struct.unpack_from(">H", header, offset + 1)
        value = offset + 3
        offset = value + size
        if offset > total:
            return f"v2 TLV {kind:#04x} of {size} bytes overruns the header"
        if kind == _PP2_TYPE_CRC32C:
            if size != 4:
                return f"v2 CRC32C TLV of {size} bytes, not 4"
            (expected,) = struct.unpack_from(">I", header, value)
            zeroed = header[:value] + b"\0\0\0\0" + header[value + 4 :]
            if crc32c(zeroed) != expected:
                return "v2 CRC32C mismatch"
    return None


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as RFC 4960 appendix B computes it."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# Shared ---------------------------------------------------------------------


def _host(address: Union[ipaddress.IPv4Address, ipaddress.IPv6Address]) -> str:
    """An address as gchat writes hosts: an IPv4-mapped IPv6 address as
    plain IPv4, as Go's net.IP.String() does, so that a client is one
    host whichever way the proxy spelled it."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _show(data: bytes) -> str:
    """Untrusted bytes for a log line: short and escaped."""
    return repr(bytes(data[:24])) + ("..." if len(data) > 24 else "")


_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@functools.lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def peer_allowed(host: str, cidrs: Iterable[str]) -> bool:
    """Whether a peer at host may send a PROXY header (--proxy-from): any
    other could claim to be anyone.  A dual-stack listener sees IPv4 peers
    as ::ffff:a.b.c.d, which counts as a.b.c.d."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _networks(tuple(cidrs)))
