"""What verifying a sign-in token costs (issue 19): gchat.auth.verify, the
server's own code, timed in this process for an HS256 secret and for RSA
(RS256) and elliptic curve (ES256) public keys.

    python -m gchat_bench.auth_cost --json

Each figure is the median over --rounds rounds of --calls verifications,
in microseconds per token (one core, nothing else of gchat's around it).
It needs the auth extra (pip install 'gchat[auth]').
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gchat.auth import load_key, verify

SECRET = "a bench secret, as long as a real one should be: 48 bytes"


def _pem(private) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def keys() -> dict:
    """algorithm -> (the server's key, a token signed for it)."""
    now = time.time()
    claims = {"sub": "alice", "exp": now + 3600, "rooms": ["team-*"]}
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "HS256": (load_key(SECRET), jwt.encode(claims, SECRET, "HS256")),
        "RS256": (load_key(_pem(rsa_key)), jwt.encode(claims, rsa_key, "RS256")),
        "ES256": (load_key(_pem(ec_key)), jwt.encode(claims, ec_key, "ES256")),
    }


def measure(calls: int, rounds: int) -> dict:
    out = {}
    for alg, (key, token) in keys().items():
        per_call = []
        for _ in range(rounds):
            now = time.time()
            t0 = time.perf_counter()
            for _ in range(calls):
                verify(key, token, now, 30.0)
            per_call.append((time.perf_counter() - t0) * 1e6 / calls)
        out[alg] = {"us_per_token": statistics.median(per_call), "rounds_us": per_call}
    return out


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gchat_bench.auth_cost", description=__doc__)
    ap.add_argument("--calls", type=int, default=2000, help="verifications per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args(argv)
    result = {"scenario": "auth_cost", **measure(opts.calls, opts.rounds)}
    if opts.json:
        print(json.dumps(result))
    else:
        for alg in ("HS256", "RS256", "ES256"):
            print(f"{alg}: {result[alg]['us_per_token']:.1f} us per token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
