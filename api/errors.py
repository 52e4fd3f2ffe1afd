"""One error shape for every non-2xx answer: ``{"error": {"code", "message", "details"}}``.

Database outages become 503 with ``Retry-After`` (the pool re-pings and recovers on its own);
bad values the database refuses become 422; a unique-key race becomes 409.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("pretextlab.api")

RETRY_AFTER_S = 2
_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
    422: "validation_error", 429: "too_many_requests", 503: "service_unavailable",
}


class ApiError(Exception):
    """Raised by routes: becomes ``status`` with the JSON error body."""

    def __init__(self, status: int, code: str, message: str, details: Any = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details, headers


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details}},
                        status_code=status, headers=headers)


def _loc(loc: tuple | list) -> str:
    return ".".join(str(p) for p in loc) or "body"


def validation_details(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic errors reduced to JSON-safe {loc, type, msg} (inputs can be huge or unserialisable)."""
    return [{"loc": _loc(e.get("loc", ())), "type": e.get("type"), "msg": str(e.get("msg"))} for e in errors]


def _summary(details: list[dict[str, Any]]) -> str:
    shown = "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:5])
    more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
    return shown + more


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail
    if isinstance(detail, dict) and "code" in detail:
        return error_response(exc.status_code, detail["code"], detail.get("message", ""), detail.get("details"),
                              getattr(exc, "headers", None))
    code = _CODES.get(exc.status_code, "error")
    message = detail if isinstance(detail, str) else str(detail)
    if exc.status_code == 404 and message == "Not Found":
        message = "no such endpoint"
    return error_response(exc.status_code, code, message, None, getattr(exc, "headers", None))


async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    raw = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in raw):
        e = next(e for e in raw if e.get("type") == "json_invalid")
        ctx = e.get("ctx") or {}
        return error_response(400, "malformed_json", f"malformed JSON body: {ctx.get('error', e.get('msg'))}",
                              validation_details([e]))
    details = validation_details(raw)
    return error_response(422, "validation_error", _summary(details), details)


async def _pydantic_validation(_: Request, exc: ValidationError) -> JSONResponse:
    details = validation_details(exc.errors())
    return error_response(422, "validation_error", _summary(details), details)


def _unavailable(message: str) -> JSONResponse:
    return error_response(503, "service_unavailable", message, None, {"Retry-After": str(RETRY_AFTER_S)})


async def _db_error(_: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, sa_exc.IntegrityError):
        return error_response(409, "conflict", "the change conflicts with the stored data; retry the request")
    if isinstance(exc, sa_exc.DataError):
        return error_response(422, "validation_error", "a value was refused by the database (out of range or invalid)")
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
                        sa_exc.DisconnectionError)) or getattr(exc, "connection_invalidated", False):
        # No exception text: it may carry the database URL.
        log.warning("database unavailable: %s", type(exc).__name__)
        return _unavailable("the database is unreachable; retry shortly")
    log.exception("database error")
    return error_response(500, "internal_error", "unexpected database error")


async def _connection_error(_: Request, exc: Exception) -> JSONResponse:
    return _unavailable("a backing service is unreachable; retry shortly")


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error: %s", type(exc).__name__)
    return error_response(500, "internal_error", "unexpected server error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(ValidationError, _pydantic_validation)
    app.add_exception_handler(sa_exc.SQLAlchemyError, _db_error)
    app.add_exception_handler(ConnectionError, _connection_error)
    app.add_exception_handler(Exception, _unexpected)
