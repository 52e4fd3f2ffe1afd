"""Named API tokens: create (the plain token is returned once), look up by hash, list, revoke.

A token is 32 random bytes (``secrets.token_urlsafe``) behind a ``ptl_`` prefix; only its SHA-256
is stored. A salted slow hash (argon2, bcrypt) protects *guessable* secrets such as passwords; a
256-bit random token cannot be guessed from its SHA-256, and an unsalted digest lets the lookup
be one indexed equality instead of a slow hash per request per token.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api.db.clock import utcnow
from api.db.models import ApiToken

TOKEN_PREFIX = "ptl_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# env-1, env-2, ...: the names PRETEXTLAB_API_TOKENS entries get; a stored token may not take one.
RESERVED_NAME_RE = re.compile(r"^(env-\d+|local)$")


class TokenError(ValueError):
    """A token name that is invalid, reserved, taken, or unknown."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise TokenError(f"token name {name!r}: 1-64 characters of letters, digits and . _ @ -, "
                         "starting with a letter or digit")
    if RESERVED_NAME_RE.match(name):
        raise TokenError(f"token name {name!r} is reserved (env-N names PRETEXTLAB_API_TOKENS entries)")
    return name


def create_token(session: Session, name: str, *, admin: bool = False) -> str:
    """Store a new token named ``name``; returns the plain token (never stored, never shown again)."""
    check_name(name)
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise TokenError(f"a token named {name!r} exists already (revoked names are not reused)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_hash=hash_token(token), admin=admin, created_at=utcnow()))
    session.flush()
    return token


def find_token(session: Session, token: str) -> ApiToken | None:
    """The live (not revoked) token whose hash matches, or None."""
    return session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token),
                                                 ApiToken.revoked_at.is_(None)))


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(session: Session, name: str) -> None:
    """Revoke ``name`` (its requests get 403 from now on); TokenError if there is no live one."""
    res = session.execute(update(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
                          .values(revoked_at=utcnow()).execution_options(synchronize_session=False))
    if res.rowcount != 1:
        raise TokenError(f"no live token named {name!r}")


def live_token_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.revoked_at.is_(None))) or 0
