"""The client's exceptions: one class per kind of failure, each carrying the API's error body.

Every non-2xx answer of the API is ``{"error": {"code", "message", "details"}}`` (api/errors.py);
:func:`error_from_response` turns it into the matching class, so callers catch what they can act
on (``except NotFound``) and still read ``err.code`` ("not_found", "invalid_spec", ...),
``err.message`` and ``err.details`` (for a refused spec: a list of ``{loc, type, msg}``).
"""

from __future__ import annotations

from typing import Any

import httpx


class PretextlabError(Exception):
    """Base of every error the client raises."""


class ApiError(PretextlabError):
    """The server answered with an error status."""

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 headers: dict[str, str] | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = headers or {}

    def detail(self, loc: str, default: Any = None) -> Any:
        """The ``value`` of the details entry at ``loc`` (the API's details are a list of
        ``{loc, msg, type, value?}`` objects), e.g. ``err.detail("job_id")``."""
        for d in self.details or []:
            if isinstance(d, dict) and d.get("loc") == loc:
                return d.get("value", default)
        return default

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked us to wait (``Retry-After``), if it said."""
        try:
            return float(self.headers["retry-after"])
        except (KeyError, ValueError):
            return None


class BadRequest(ApiError):
    """400 / 413: the request itself is wrong (malformed, too large, unsafe name)."""


class ValidationError(BadRequest):
    """422: a spec or parameter was refused; ``details`` lists each field (``loc``) and why (``msg``)."""


class AuthError(ApiError):
    """401 (no or malformed token) or 403 (unknown token)."""


class NotFound(ApiError):
    """404: no such job, artifact or endpoint."""


class Conflict(ApiError):
    """409: the job's state does not allow it (cancel a finished job) or an Idempotency-Key reuse."""


class RateLimited(ApiError):
    """429: too many active jobs (``queue_full``); ``retry_after`` says when to try again."""


class ServerError(ApiError):
    """5xx: the server failed."""


class ServiceUnavailable(ServerError):
    """503: the database or broker is unreachable for now; retry after ``retry_after`` seconds."""


class ConnectionFailed(PretextlabError):
    """The server could not be reached (refused, DNS, TLS, timeout)."""


class WaitTimeout(PretextlabError, TimeoutError):
    """``Client.wait`` gave up before the job finished; ``job`` is its last known state."""

    def __init__(self, message: str, job: dict[str, Any] | None = None):
        super().__init__(message)
        self.job = job


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: AuthError, 403: AuthError, 404: NotFound, 409: Conflict, 413: BadRequest,
    422: ValidationError, 429: RateLimited, 503: ServiceUnavailable,
}


def error_class(status: int) -> type[ApiError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else ApiError


def error_from_response(response: httpx.Response) -> ApiError:
    """The typed error for a non-2xx response (a body that is not the API's shape, from a proxy
    say, still gives the status and the start of the text)."""
    status = response.status_code
    code, message, details = f"http_{status}", response.reason_phrase or "error", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = str(err.get("code") or code)
        message = str(err.get("message") or message)
        details = err.get("details")
    elif response.text:
        message = response.text[:500]
    return error_class(status)(status, code, message, details, dict(response.headers))
