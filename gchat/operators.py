"""Operators (issue 19): who may /kick, /ban and /mute, and for how long.
Pure: no file, no socket, no clock (times are passed in).

An operator is a client whose token says `role: op` (auth.py), or, without
--auth-key, one that sent `/oper PASSWORD` matching the salted hash of
--oper-password-file.  `gchat --hash-password` reads a password on
standard input and prints the line to put in that file:

    scrypt$16384$8$1$SALT$HASH        (SALT and HASH in URL-safe base64)

scrypt, so that a stolen file does not give the password away cheaply;
its cost (n=2**14, r=8, p=1: about 16 MiB and a few tens of ms) is paid on
/oper alone, which is throttled like failed sign-ins.  The comparison is
in constant time (hmac.compare_digest).

Bans and mutes are by name (a token's sub), never by address: behind a
proxy or a NAT many users share one; the per-address limits already bound
what one address can do.  Each lasts a DURATION (30s, 10m, 2h, 1d) or until
lifted.
"""

import base64
import hashlib
import hmac
import re
from datetime import datetime, timezone
from typing import Optional

SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# What scrypt may use: n * r * 128 bytes is 16 MiB; OpenSSL's default cap
# (32 MiB) would refuse a larger n, so the bound is said here.
SCRYPT_MAXMEM = 64 * 1024 * 1024

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_RE = re.compile(r"([1-9][0-9]{0,5})([smhd])")
FOREVER = "further notice"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, salt: bytes) -> str:
    """The line for --oper-password-file (salt: SALT_BYTES of the CSPRNG,
    given by the caller)."""
    digest = hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=SCRYPT_MAXMEM,
        dklen=HASH_BYTES,
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_hash_line(line: str) -> None:
    """ValueError, saying why, if line is not one hash_password writes."""
    parts = line.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a line of gchat --hash-password")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise ValueError("not a line of gchat --hash-password") from None
    if n < 2 or n & (n - 1) or n * r * 128 > SCRYPT_MAXMEM or not salt or not digest or p < 1:
        raise ValueError("scrypt parameters out of range")


def password_matches(password: str, line: str) -> bool:
    """Whether password is the one line (hash_password's) was made from,
    compared in constant time."""
    parts = line.strip().split("$")
    n, r, p = (int(x) for x in parts[1:4])
    salt, expected = _unb64(parts[4]), _unb64(parts[5])
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=len(expected)
    )
    return hmac.compare_digest(digest, expected)


def parse_duration(text: str) -> Optional[float]:
    """Seconds of a DURATION (30s, 10m, 2h, 1d), None if text is not one."""
    match = DURATION_RE.fullmatch(text)
    if match is None:
        return None
    return float(int(match.group(1)) * UNITS[match.group(2)])


def render_until(until: Optional[float]) -> str:
    """When a ban or mute ends: ISO 8601 UTC, or "further notice"."""
    if until is None:
        return FOREVER
    return datetime.fromtimestamp(until, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Restrictions:
    """Bans or mutes: name key -> when it ends (seconds since the epoch),
    None for until lifted.  One process's; a cluster keeps bans in Redis
    as well (cluster.py)."""

    def __init__(self) -> None:
        self.until: dict[str, Optional[float]] = {}

    def add(self, key: str, until: Optional[float]) -> None:
        self.until[key] = until

    def lift(self, key: str) -> bool:
        return self.until.pop(key, 0) != 0

    def active(self, key: str, now: float) -> bool:
        """Whether key is restricted at now (an ended one is forgotten)."""
        if key not in self.until:
            return False
        until = self.until[key]
        if until is not None and until <= now:
            del self.until[key]
            return False
        return True

    def current(self, now: float) -> dict[str, Optional[float]]:
        """Every restriction still on at now."""
        return {key: until for key, until in list(self.until.items()) if self.active(key, now)}
