"""The dashboard's session: a signed, HttpOnly, SameSite=Strict cookie and its CSRF token.

Where bearer tokens are configured, the login form checks the token once with
:func:`api.security.authenticate` and sets a cookie holding ``{identity, admin, csrf, expires}``
signed with HMAC-SHA256 under ``PRETEXTLAB_SESSION_SECRET`` (every API process that shares it accepts
the cookie: no server-side session table); unset, each process draws a random key at start, so a
restart signs everyone out. The environment tokens are mixed into the key, so changing them signs
everyone out too. The raw token is never stored in the cookie.

CSRF: requests authenticated by the cookie that change state (any method but GET/HEAD/OPTIONS)
must carry the session's CSRF token in the ``X-CSRF-Token`` header (the pages read it from a
``<meta>`` tag; a cross-site form cannot set a header, and SameSite=Strict already withholds the
cookie from cross-site requests: two independent guards).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from fastapi import Request, Response

from api.settings import Settings

COOKIE = "pretextlab_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LIFETIME_S = 12 * 3600


@dataclass(frozen=True)
class UiSession:
    identity: str  # the token's name (a job's created_by)
    admin: bool
    csrf: str
    expires: int


_PROCESS_KEY = secrets.token_bytes(32)  # the key when no PRETEXTLAB_SESSION_SECRET is set


def _key(settings: Settings) -> bytes:
    secret = settings.session_secret.get_secret_value().encode() if settings.session_secret else _PROCESS_KEY
    material = "\0".join(sorted(settings.token_list())).encode()
    return hashlib.sha256(b"pretextlab-ui-session\0" + secret + b"\0" + material).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(settings: Settings, session: UiSession) -> str:
    payload = _b64(json.dumps([session.identity, session.admin, session.csrf, session.expires]).encode())
    sig = _b64(hmac.new(_key(settings), payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{sig}"


def decode(settings: Settings, value: str | None) -> UiSession | None:
    """The session in a cookie value, or None if it is absent, forged, malformed or expired."""
    if not value or "." not in value or len(value) > 4096:
        return None
    payload, _, sig = value.partition(".")
    good = _b64(hmac.new(_key(settings), payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(sig.encode(), good.encode()):
        return None
    try:
        identity, admin, csrf, expires = json.loads(_unb64(payload))
    except (ValueError, TypeError):
        return None
    if not isinstance(expires, int) or expires < time.time():
        return None
    return UiSession(str(identity), admin is True, str(csrf), expires)


def current(request: Request) -> UiSession | None:
    return decode(request.app.state.settings, request.cookies.get(COOKIE))


def start(response: Response, settings: Settings, identity: str, admin: bool, secure: bool) -> UiSession:
    """Set a fresh session cookie (a new CSRF token each login)."""
    session = UiSession(identity, admin, secrets.token_urlsafe(24), int(time.time()) + LIFETIME_S)
    response.set_cookie(COOKIE, encode(settings, session), max_age=LIFETIME_S, path="/",
                        httponly=True, samesite="strict", secure=secure)
    return session


def end(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")


def csrf_ok(request: Request, session: UiSession) -> bool:
    """Safe methods pass; others need the session's CSRF token in the header."""
    if request.method in SAFE_METHODS:
        return True
    given = request.headers.get(CSRF_HEADER, "")
    return bool(given) and hmac.compare_digest(given.encode(), session.csrf.encode())
