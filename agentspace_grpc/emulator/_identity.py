"""End-user identity: the bearer tokens that the emulator issues and accepts.

The emulator is the identity provider of its own users, like Google is for the hosted service.
Tokens are stateless and signed with a MAC key derived from the data directory's key, so every
emulator process on that directory accepts them and a restart keeps them valid:

- identity refresh token ``aer1.<b64 email>.<mac>``: never expires; what
  :meth:`Emulator.user_credentials` puts in a google-auth ``Credentials``;
- identity access token ``aea1.<b64 email and expiry>.<mac>``: the bearer token the service
  checks, minted by the token endpoint (``grant_type=refresh_token``).

The identity OAuth client is public (RFC 6749 section 2.1): its id is checked when sent, its
"secret" is a fixed placeholder that google-auth insists on and nobody verifies.

Consent states (``st1.<b64 json>.<mac>``) bind a consent to the connector and the user who
started it, and expire. Each state implies a PKCE code verifier (RFC 7636), a MAC of the state
under a key of its own: it never leaves the emulator before the code exchange, and every
process on the data directory derives the same one, so nothing needs storing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from agentspace_grpc.emulator._clock import Clock
from agentspace_grpc.emulator._crypto import Keyring

IDENTITY_CLIENT_ID: Final = "agentspace-grpc-emulator"
IDENTITY_CLIENT_SECRET: Final = "public-client-no-secret"  # noqa: S105 - a public client
_EMAIL: Final = re.compile(r"[^@\s/]+@[^@\s/]+")
_MAC_BYTES: Final = 16
_CACHE_LIMIT: Final = 10_000
STATE_LIFETIME: Final = 600.0


class IdentityError(Exception):
    """The caller's identity is missing, unknown or expired (UNAUTHENTICATED)."""


def check_email(email: str) -> str:
    """Validates an end-user email (the identity key); returns it unchanged."""
    if (
        not isinstance(email, str)
        or len(email) > 254
        or not email.isprintable()
        or not _EMAIL.fullmatch(email)
        or not _encodable(email)
    ):
        raise ValueError(f"not an email address: {email!r}")
    return email


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def same_text(given: str, expected: str) -> bool:
    """Constant-time comparison that is simply False for text no MAC holds (non-ASCII)."""
    return given.isascii() and hmac.compare_digest(given.encode(), expected.encode())


def b64url(data: bytes) -> str:
    """Unpadded URL-safe base64 (tokens, MACs and state values)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    """The inverse of :func:`b64url`."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Identity:
    """Issues and checks end-user identity tokens."""

    def __init__(self, keyring: Keyring, token_lifetime: float, clock: Clock) -> None:
        self._key = keyring.mac_key("identity")
        self.token_lifetime = token_lifetime
        self._clock = clock
        self._verified: dict[str, tuple[str, float]] = {}

    def __repr__(self) -> str:
        return f"Identity(token_lifetime={self.token_lifetime:g})"

    def _mac(self, kind: str, body: str) -> str:
        digest = hmac.new(self._key, f"{kind}.{body}".encode(), hashlib.sha256).digest()
        return b64url(digest[:_MAC_BYTES])

    def refresh_token_for(self, email: str) -> str:
        """The (non-expiring) identity refresh token of ``email``."""
        body = b64url(check_email(email).encode())
        return f"aer1.{body}.{self._mac('aer1', body)}"

    def access_token_for(self, email: str) -> tuple[str, float]:
        """A fresh bearer token for ``email`` and its lifetime in seconds."""
        expiry_ms = int((self._clock() + self.token_lifetime) * 1000)
        body = b64url(f"{check_email(email)}\n{expiry_ms}".encode())
        return f"aea1.{body}.{self._mac('aea1', body)}", self.token_lifetime

    def user_from_refresh_token(self, token: str) -> str:
        """The email an identity refresh token belongs to."""
        body = self._verify(token, "aer1")
        return body.decode()

    def user_from_authorization(self, header: str | None) -> str:
        """The caller's email from an ``authorization`` header value ("Bearer <token>")."""
        if not header:
            raise IdentityError(
                "request has no end-user credentials: send 'authorization: Bearer <token>' "
                "with a token from the emulator's token endpoint"
            )
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise IdentityError("the authorization header is not a Bearer token")
        known = self._verified.get(token)
        if known is None:
            body = self._verify(token, "aea1")
            try:
                email, expiry_text = body.decode().rsplit("\n", 1)
                expiry = int(expiry_text) / 1000
            except ValueError:
                raise IdentityError("the bearer token was not issued by this emulator") from None
            if len(self._verified) >= _CACHE_LIMIT:
                self._verified.clear()
            known = self._verified[token] = (email, expiry)
        email, expiry = known
        if self._clock() >= expiry:
            raise IdentityError(
                f"the bearer token of {email} expired; refresh the credentials at the "
                "emulator's token endpoint"
            )
        return email

    def _verify(self, token: str, kind: str) -> bytes:
        if not token.isascii():  # every token issued here is ASCII
            raise IdentityError("the bearer token was not issued by this emulator")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != kind:
            raise IdentityError("the bearer token was not issued by this emulator")
        _, body, mac = parts
        if not same_text(mac, self._mac(kind, body)):
            raise IdentityError(
                "the bearer token was not issued by this emulator (or by one with another key)"
            )
        try:
            return unb64url(body)
        except (binascii.Error, ValueError):
            raise IdentityError("the bearer token was not issued by this emulator") from None


@dataclass(frozen=True, slots=True)
class Consent:
    """What a valid consent state names."""

    connector: str
    user: str
    scopes: tuple[str, ...]


class ConsentStates:
    """Issues and reads signed consent states and derives their PKCE verifiers."""

    def __init__(self, keyring: Keyring, clock: Clock) -> None:
        self._key = keyring.mac_key("consent-state")
        self._pkce_key = keyring.mac_key("pkce-verifier")
        self._clock = clock

    def __repr__(self) -> str:
        return "ConsentStates()"

    def _mac(self, body: str) -> str:
        return b64url(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:16])

    def issue(self, connector: str, user: str, scopes: Sequence[str]) -> str:
        """A state for ``user``'s consent to ``connector``, valid for ``STATE_LIFETIME``."""
        payload = {
            "c": connector,
            "u": user,
            "s": list(scopes),
            "e": int(self._clock() + STATE_LIFETIME),
            "n": secrets.token_hex(4),
        }
        body = b64url(json.dumps(payload, separators=(",", ":")).encode())
        return f"st1.{body}.{self._mac(body)}"

    def read(self, state: str) -> Consent:
        """The consent a state names.

        Raises:
            ValueError: the state was not issued here, is malformed or expired (the message
                says which, and is phrased to follow "the state ").
        """
        parts = state.split(".")
        if (
            not state.isascii()
            or len(parts) != 3
            or parts[0] != "st1"
            or not same_text(parts[2], self._mac(parts[1]))
        ):
            raise ValueError("was not issued by this emulator")
        try:
            payload = json.loads(unb64url(parts[1]))
            connector, user, expiry = payload["c"], payload["u"], payload["e"]
            scopes = tuple(s for s in payload.get("s", []) if isinstance(s, str))
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise ValueError("is malformed") from None
        if expiry < self._clock():
            raise ValueError("expired: start the consent again")
        return Consent(str(connector), str(user), scopes)

    def verifier(self, state: str) -> str:
        """The PKCE code verifier of ``state`` (43 characters of base64url)."""
        return b64url(hmac.new(self._pkce_key, state.encode(), hashlib.sha256).digest())


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE code verifier."""
    return b64url(hashlib.sha256(verifier.encode()).digest())
