"""Token verification (gchat/auth.py), pure: tokens made by PyJWT with a
shared secret, an RSA and an EC key, valid and every way of not."""

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gchat.auth import Refused, load_key, may_enter, verify

NOW = 1_800_000_000.0
SECRET = "a shared secret of the application's backend"


def pem(public) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def claims(**more):
    return {"sub": "alice", "exp": NOW + 600, **more}


def refused(key, token, reason):
    with pytest.raises(Refused) as caught:
        verify(key, token, NOW, 30)
    assert caught.value.reason == reason


def test_a_secret_an_rsa_and_an_ec_key_each_verify_their_own_tokens():
    hs = load_key(f"\n  {SECRET}\n")
    assert hs.algorithms == ("HS256",)
    got = verify(hs, jwt.encode(claims(rooms=["ops"], role="op"), SECRET, "HS256"), NOW, 30)
    assert (got.name, got.expires, got.rooms, got.operator) == ("alice", NOW + 600, ("ops",), True)
    rs = load_key(pem(RSA_KEY.public_key()))
    assert rs.algorithms == ("RS256",)
    assert verify(rs, jwt.encode(claims(), RSA_KEY, "RS256"), NOW, 30).rooms is None
    es = load_key(pem(EC_KEY.public_key()))
    assert es.algorithms == ("ES256",)
    assert verify(es, jwt.encode(claims(), EC_KEY, "ES256"), NOW, 30).operator is False


def test_times_are_checked_with_the_leeway():
    key = load_key(SECRET)
    assert verify(key, jwt.encode(claims(exp=NOW - 29), SECRET, "HS256"), NOW, 30)
    refused(key, jwt.encode(claims(exp=NOW - 31), SECRET, "HS256"), "expired")
    assert verify(key, jwt.encode(claims(nbf=NOW + 29), SECRET, "HS256"), NOW, 30)
    refused(key, jwt.encode(claims(nbf=NOW + 31), SECRET, "HS256"), "not yet valid")
    refused(key, jwt.encode(claims(iat=NOW + 60), SECRET, "HS256"), "not yet valid")
    refused(key, jwt.encode(claims(exp="soon"), SECRET, "HS256"), "malformed")
    refused(key, jwt.encode(claims(exp=True), SECRET, "HS256"), "malformed")


def test_the_key_alone_says_which_algorithms_are_accepted():
    key = load_key(SECRET)
    refused(
        key,
        jwt.encode(claims(), "another secret, of another application backend", "HS256"),
        "bad signature",
    )
    # alg none: no signature at all.
    refused(key, jwt.encode(claims(), None, "none"), "bad signature")
    rs = load_key(pem(RSA_KEY.public_key()))
    # The confusion: an HS256 token whose secret is the RSA public key.
    header = {"alg": "HS256", "typ": "JWT"}

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    import hashlib
    import hmac

    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}"
    mac = hmac.new(pem(RSA_KEY.public_key()).encode(), signing.encode(), hashlib.sha256)
    refused(rs, f"{signing}.{b64(mac.digest())}", "bad signature")
    refused(rs, jwt.encode(claims(), EC_KEY, "ES256"), "bad signature")


def test_missing_claims_bad_names_and_garbage():
    key = load_key(SECRET)
    refused(key, jwt.encode({"exp": NOW + 60}, SECRET, "HS256"), "missing claim sub")
    refused(key, jwt.encode({"sub": "alice"}, SECRET, "HS256"), "missing claim exp")
    for name in ("", "a b", "x" * 100, "@root", 7):
        refused(key, jwt.encode(claims(sub=name), SECRET, "HS256"), "invalid name")
    refused(key, jwt.encode(claims(rooms="ops"), SECRET, "HS256"), "malformed")
    refused(key, jwt.encode(claims(rooms=["ops", 3]), SECRET, "HS256"), "malformed")
    for garbage in ("", "x", "a.b.c", "....", "é" * 10, "eyJ.eyJ.sig"):
        refused(key, garbage, "malformed")


def test_keys_that_are_neither():
    for text in ("", "   \n", "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"):
        with pytest.raises(ValueError):
            load_key(text)


def test_rooms_claims_match_folded_names_with_wildcards():
    claim = ["#ops", "team-*", "Dev"]
    for room in ("ops", "#OPS", "team-a", "team-", "TEAM-Blue", "dev"):
        assert may_enter(claim, room), room
    for room in ("ops2", "teams", "xteam-a", "lobby", "de"):
        assert not may_enter(claim, room), room
    assert not may_enter(None, "ops") and not may_enter([], "ops")
    assert may_enter(["*"], "anything")
    assert not may_enter(["a.c"], "abc")  # "." is itself, not any character
