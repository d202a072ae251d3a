"""Who is asking: API keys, read keys, the dashboard's session cookie and its CSRF token.

Two roles. An *API key* may read and change (``write``); a *read key* may only read.
The API takes a key per request (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``).
The dashboard takes it once, in a login form, and keeps a signed session cookie:
``role.expiry.key-id.signature``, signed with HMAC-SHA256 under the key that logged in.
Nothing is stored on the server, so sessions survive restarts and work across replicas,
and removing a key ends the sessions it opened. Every dashboard action carries a CSRF
token derived from the session (a synchronizer token checked on the server).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from simpleflow.core.errors import ConfigurationError

Role = Literal["read", "write"]

#: how long a dashboard session lasts
SESSION_SECONDS = 12 * 3600
COOKIE_NAME = "simpleflow_session"
_MIN_KEY_LENGTH = 16


def _check_keys(keys: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(keys, str):
        raise ConfigurationError(f"{what} must be a list of keys, not one string (wrap it: [{what[:-1]!s}])")
    out = []
    for key in keys:
        if not isinstance(key, str) or len(key.strip()) < _MIN_KEY_LENGTH or key != key.strip():
            raise ConfigurationError(
                f"every key in {what} must be a string of at least {_MIN_KEY_LENGTH} characters without "
                "surrounding spaces; make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        out.append(key)
    return tuple(out)


def _key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Session:
    """A logged-in dashboard user: the role and the cookie value the CSRF token is bound to."""

    role: Role
    cookie: str
    secret: bytes

    @property
    def can_write(self) -> bool:
        return self.role == "write"

    def csrf_token(self) -> str:
        return hmac.new(self.secret, b"csrf|" + self.cookie.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf_token(), token)


class Keys:
    """The keys one app accepts, and the checks built on them."""

    def __init__(self, api_keys: Iterable[str] = (), read_keys: Iterable[str] = (), no_auth: bool = False) -> None:
        if not isinstance(no_auth, bool):
            raise ConfigurationError(f"no_auth must be True or False, got {no_auth!r}")
        self.api_keys = _check_keys(api_keys, "api_keys")
        self.read_keys = _check_keys(read_keys, "read_keys")
        self.no_auth = no_auth
        if not no_auth and not self.api_keys and not self.read_keys:
            raise ConfigurationError(
                "no API key: pass api_keys=[...] (or read_keys=[...]); for local development only, no_auth=True"
            )
        if set(self.api_keys) & set(self.read_keys):
            raise ConfigurationError("a key cannot be both an API key and a read key")
        # sessions of a no-auth app are signed with a secret of this process
        self._local_secret = secrets.token_bytes(32)
        self._by_id: dict[str, tuple[str, Role]] = {}
        for key in self.api_keys:
            self._by_id[_key_id(key)] = (key, "write")
        for key in self.read_keys:
            self._by_id[_key_id(key)] = (key, "read")

    def role_of(self, key: str | None) -> Role | None:
        """The role a presented key grants, or None; every key is compared in constant time."""
        if self.no_auth:
            return "write"
        if not key:
            return None
        found: Role | None = None
        for candidate, role in self._by_id.values():
            if hmac.compare_digest(candidate.encode(), key.encode()):
                found = role
        return found

    # -- dashboard sessions -----------------------------------------------------------------

    def _secret(self, key_id: str) -> tuple[bytes, Role] | None:
        if key_id == "local" and self.no_auth:
            return self._local_secret, "write"
        entry = self._by_id.get(key_id)
        if entry is None:
            return None
        return hashlib.sha256(b"simpleflow-session|" + entry[0].encode()).digest(), entry[1]

    def new_session(self, key: str | None) -> Session | None:
        """A session for a login with ``key`` (any request when ``no_auth``), or None."""
        role = self.role_of(key)
        if role is None:
            return None
        key_id = "local" if self.no_auth or key is None else _key_id(key)
        found = self._secret(key_id)
        if found is None:
            return None
        secret, role = found
        expiry = int(time.time()) + SESSION_SECONDS
        body = f"{role}.{expiry}.{key_id}"
        signature = hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()
        return Session(role=role, cookie=f"{body}.{signature}", secret=secret)

    def session(self, cookie: str | None) -> Session | None:
        """The session a cookie proves, or None (absent, forged, expired, or its key removed)."""
        if not cookie or len(cookie) > 256:
            return None
        parts = cookie.split(".")
        if len(parts) != 4:
            return None
        role, expiry, key_id, signature = parts
        found = self._secret(key_id)
        if found is None:
            return None
        secret, key_role = found
        expected = hmac.new(secret, f"{role}.{expiry}.{key_id}".encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature) or role != key_role:
            return None
        if not expiry.isdigit() or int(expiry) < time.time():
            return None
        return Session(role=key_role, cookie=cookie, secret=secret)


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key of ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None
