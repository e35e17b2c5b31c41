"""Signing in with a signed token (issue 19): what a JWT (RFC 7519) says,
checked.  Pure: the key, the token and the time come in; the claims, or
the reason they are refused, go out.  No file, no socket, no clock.

The application's backend signs a token for each user; gchat only verifies
it, with PyJWT.  The key file holds either a shared secret (HS256) or a PEM
public key (RS256 for RSA, ES256 for an elliptic curve key).  The
algorithms accepted follow from the key alone, never from the token: a
token with `alg: none`, or an HS256 token "signed" with the RSA public key
as its secret (the classic confusion), is refused as a bad signature.

PyJWT checks the signature, the format and that `sub` and `exp` are there;
the times (`exp`, `nbf`, `iat`, with the leeway) are checked here against
the time the caller passes, so that the rules are tested without a clock.

Claims:

    sub    the user's name, under the name rules (protocol.validate_name)
    exp    required: when the token stops being valid
    nbf    optional: not before
    iat    optional: issued at (a token from the future is not yet valid)
    rooms  optional: the rooms the user may enter under --rooms-policy
           claims, each a room name with "*" for any run of characters
           ("team-*"), compared as room names are (folded, "#" optional)
    role   optional: "op" for an operator
"""

import re
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

from gchat import protocol as p

# The reasons a sign-in is refused, as the client is told them
# (protocol.render_auth_failed).
EXPIRED = "expired"
NOT_YET_VALID = "not yet valid"
BAD_SIGNATURE = "bad signature"
MALFORMED = "malformed"
INVALID_NAME = "invalid name"

REQUIRED = ("sub", "exp")
OPERATOR_ROLE = "op"


class AuthKey(NamedTuple):
    """The verification key and the algorithms it allows."""

    key: Any  # the shared secret (str), or a public key object
    algorithms: tuple[str, ...]


def load_key(text: str) -> AuthKey:
    """The key in a key file's text: a PEM public key, or else a shared
    secret (surrounding whitespace stripped).  ValueError, saying why, if
    it is neither."""
    stripped = text.strip()
    if not stripped:
        raise ValueError("the key file is empty")
    if stripped.startswith("-----BEGIN"):
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            public = load_pem_public_key(stripped.encode())
        except ValueError as err:
            raise ValueError(f"not a PEM public key: {err}") from None
        if isinstance(public, rsa.RSAPublicKey):
            return AuthKey(public, ("RS256",))
        if isinstance(public, ec.EllipticCurvePublicKey):
            return AuthKey(public, ("ES256",))
        raise ValueError("a public key must be RSA (RS256) or elliptic curve (ES256)")
    return AuthKey(stripped, ("HS256",))


class Claims(NamedTuple):
    """What a verified token says."""

    name: str  # its sub
    expires: float  # its exp, seconds since the epoch
    rooms: Optional[tuple[str, ...]]  # None: no rooms claim (the lobby alone)
    operator: bool


class Refused(Exception):
    """A token that does not sign anyone in; args[0] is the reason."""

    @property
    def reason(self) -> str:
        return str(self.args[0])


def verify(key: AuthKey, token: str, now: float, leeway: float) -> Claims:
    """The claims of token, checked at time now (seconds since the epoch)
    with leeway seconds of clock skew either way; raises Refused."""
    import jwt  # the auth extra's; a server without --auth-key never needs it

    try:
        payload = jwt.decode(
            token,
            key.key,
            algorithms=list(key.algorithms),
            options={
                "require": list(REQUIRED),
                # The times are checked below, against now.
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.MissingRequiredClaimError as err:
        raise Refused(f"missing claim {err.claim}") from None
    except jwt.exceptions.InvalidSubjectError:  # PyJWT's own check: sub is no string
        raise Refused(INVALID_NAME) from None
    except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError, jwt.InvalidKeyError):
        raise Refused(BAD_SIGNATURE) from None
    except (jwt.PyJWTError, ValueError, TypeError):
        raise Refused(MALFORMED) from None
    exp = _time(payload, "exp")
    if exp is None:
        raise Refused(MALFORMED)
    if now > exp + leeway:
        raise Refused(EXPIRED)
    for claim in ("nbf", "iat"):
        if claim in payload:
            at = _time(payload, claim)
            if at is None:
                raise Refused(MALFORMED)
            if now + leeway < at:
                raise Refused(NOT_YET_VALID)
    name = payload["sub"]
    if not isinstance(name, str) or p.validate_name(name) is not None:
        raise Refused(INVALID_NAME)
    rooms = payload.get("rooms")
    if rooms is not None and (
        not isinstance(rooms, list) or not all(isinstance(r, str) and r for r in rooms)
    ):
        raise Refused(MALFORMED)
    role = payload.get("role")
    if role is not None and not isinstance(role, str):
        raise Refused(MALFORMED)
    return Claims(name, exp, tuple(rooms) if rooms is not None else None, role == OPERATOR_ROLE)


def _time(payload: dict, claim: str) -> Optional[float]:
    value = payload.get(claim)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def may_enter(rooms: Optional[Sequence[str]], room: str) -> bool:
    """Whether a rooms claim names room (a room name, "#" optional); the
    chat lets everyone into the lobby besides."""
    key = p.name_key(room[1:] if room.startswith("#") else room)
    return any(_pattern(claim).fullmatch(key) for claim in rooms or ())


def _pattern(claim: str) -> "re.Pattern[str]":
    """A rooms claim as a pattern of folded room names: "*" is any run of
    characters, everything else itself."""
    folded = p.name_key(claim[1:] if claim.startswith("#") else claim)
    return re.compile(".*".join(re.escape(part) for part in folded.split("*")))
