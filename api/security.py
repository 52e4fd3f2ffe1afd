"""Who gets in and what a request may touch: bearer tokens, the body-size limit, safe paths.

- :func:`authenticate` turns a bearer token into a :class:`Principal` (name, admin). Environment
  tokens (``PRETEXTLAB_API_TOKENS``, admins named env-1, env-2, ...) are compared with
  :func:`hmac.compare_digest` against every one (no early exit, so timing says nothing); named
  tokens (``pretextlab token create``) are found by their SHA-256. Tokens are never logged.
- With ``PRETEXTLAB_AUTH=off`` (allowed on a loopback bind only) every request is the admin
  ``local``, and a request that reached the server over a non-loopback address is refused anyway.
- The body limit is a pure ASGI middleware that counts bytes as they arrive, so a chunked body
  without ``Content-Length`` is cut off at the limit too.
- Artifact names (checked by ``api.db.artifacts.check_artifact_name``) and weights paths are
  resolved and must stay inside their folders (symlinks that point outside are refused after
  resolution).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sqlalchemy.orm import Session

from api.db.artifacts import UnsafePath, check_artifact_name
from api.db.tokens import find_token
from api.errors import error_body
from api.settings import Settings
from api.ui import session as ui_session
from ssl_core.paths import CONTROL_CHARS, PathOutsideRoots, resolve_inside


# -- authentication ---------------------------------------------------------------------------
bearer_scheme = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`: a named token "
                           "(`pretextlab token create`) or one of PRETEXTLAB_API_TOKENS")
LOCAL = "local"  # the principal of every request when PRETEXTLAB_AUTH=off


@dataclass(frozen=True)
class Principal:
    """Who sent a request: a token's name (jobs record it as ``created_by``) and whether it is an
    admin (admins see and act on every job; others on their own only)."""

    name: str
    admin: bool


def token_matches(given: str, tokens: list[str]) -> bool:
    """Constant-time comparison against every configured token."""
    return env_token_index(given, tokens) is not None


def env_token_index(given: str, tokens: list[str]) -> int | None:
    """The position of ``given`` among ``tokens`` (compared with every one), or None."""
    given_b = given.encode("utf-8", "surrogateescape")
    found = None
    for i, token in enumerate(tokens):
        if hmac.compare_digest(given_b, token.encode("utf-8")) and found is None:
            found = i
    return found


def authenticate(token: str, settings: Settings, session: Session) -> Principal | None:
    """The principal a bearer token stands for, or None if it is unknown or revoked."""
    i = env_token_index(token, settings.token_list())
    if i is not None:
        return Principal(f"env-{i + 1}", admin=True)
    row = find_token(session, token)
    return Principal(row.name, admin=bool(row.admin)) if row is not None else None


def unauthorized(message: str) -> HTTPException:
    return HTTPException(401, detail={"code": "unauthorized", "message": message},
                         headers={"WWW-Authenticate": 'Bearer realm="pretextlab"'})


def _reached_over_network(request: Request) -> bool:
    server = request.scope.get("server") or ("",)
    try:
        return not ipaddress.ip_address(str(server[0])).is_loopback
    except ValueError:  # a unix socket, or a test client's made-up name
        return False


def require_token(
    request: Request,
    _doc: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> Principal:
    """Dependency on every /v1 router: the request's :class:`Principal`.

    ``_doc`` only makes the OpenAPI document show the bearer scheme; the header is parsed here so
    that a missing header (401), a malformed one (401) and an unknown token (403) differ."""
    settings: Settings = request.app.state.settings
    if not settings.auth_enabled:
        if _reached_over_network(request):
            raise HTTPException(403, detail={"code": "forbidden", "message": "authentication is off "
                                             "(PRETEXTLAB_AUTH=off): this server answers loopback connections only"})
        return Principal(LOCAL, admin=True)
    header = request.headers.get("authorization")
    if not header and request.cookies.get(ui_session.COOKIE):  # the dashboard's session cookie
        session = ui_session.current(request)
        if session is not None and not ui_session.csrf_ok(request, session):
            raise HTTPException(403, detail={"code": "csrf_failed", "message":
                                             f"missing or wrong {ui_session.CSRF_HEADER} header"})
        if session is not None:
            return Principal(session.identity, session.admin)
    if not header:
        raise unauthorized("missing Authorization header: send `Authorization: Bearer <token>`")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or " " in value:
        raise unauthorized("malformed Authorization header: expected `Bearer <token>`")
    with request.app.state.sessionmaker() as session:
        principal = authenticate(value, settings, session)
    if principal is None:
        raise HTTPException(403, detail={"code": "forbidden", "message": "unknown API token"})
    return principal


PrincipalDep = Annotated[Principal, Depends(require_token)]


# -- body size limit --------------------------------------------------------------------------
class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, detail={"code": "payload_too_large",
                                      "message": f"request body exceeds the limit of {limit} bytes",
                                      "details": {"max_body_bytes": limit}})


class BodySizeLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413, by Content-Length or by counting chunks."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reject(send, 400, "bad_request", "Content-Length is not a number")
                    return
                if declared > self.max_bytes:
                    await self._reject(send, 413, **BodyTooLarge(self.max_bytes).detail)
                    return
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await self._reject(send, 413, **exc.detail)

    @staticmethod
    async def _reject(send: Callable, status: int, code: str, message: str, details: Any = None) -> None:
        body = json.dumps(error_body(code, message, details)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# -- paths ------------------------------------------------------------------------------------
def resolve_artifact(job_dir: Path, name: str) -> Path:
    """The file ``name`` inside ``job_dir``, after resolving symlinks; UnsafePath if it escapes."""
    name = check_artifact_name(name)
    root = job_dir.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise UnsafePath("artifact resolves outside the job's folder (symlink?)")
    return path


def resolve_weights(path: str, roots: list[Path]) -> Path:
    """A weights file path inside one of ``roots`` (relative paths are tried against each root)."""
    if not path or "\x00" in path or CONTROL_CHARS.search(path):
        raise UnsafePath("weights: empty path or control characters")
    if "\\" in path or any(p == ".." for p in path.split("/")):
        raise UnsafePath("weights: '..' and backslashes are not allowed")
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        resolved = candidate.resolve()
        if any(resolved.is_relative_to(r.resolve()) for r in roots):
            return resolved
    else:
        # A relative path means the first root holding it (the first root when none does yet);
        # wherever it lands after following symlinks must still be inside that root.
        pairs = [((r / candidate).resolve(), r.resolve()) for r in roots]
        chosen = next(((p, r) for p, r in pairs if p.exists()), pairs[0] if pairs else None)
        if chosen is not None and chosen[0].is_relative_to(chosen[1]):
            return chosen[0]
    raise UnsafePath(
        f"weights: {path!r} is not inside the artifact root or an allowed data root "
        f"({', '.join(str(r) for r in roots)})"
    )


def resolve_data_path(path: str, roots: list[Path], field: str = "data.path") -> Path:
    """A dataset folder inside one of ``roots`` (the data root first), checked exactly as the worker
    checks it (:func:`ssl_core.paths.resolve_inside`). Existence is not checked: the data may be
    mounted on the workers only; containment is what the API can and must refuse early."""
    try:
        return resolve_inside(path, roots, field=field)
    except PathOutsideRoots as e:
        raise UnsafePath(str(e)) from None
