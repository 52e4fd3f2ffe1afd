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


def detail_list(code: str, message: str, details: Any) -> list[dict[str, Any]]:
    """``details`` in its one documented shape: a list of ``{loc, msg, type}`` objects (docs/api.md).

    Validation errors are that list already; a route's ``{name: value}`` mapping becomes one entry
    per name carrying the ``value`` (a mapping with a ``loc`` key is one entry); None is []."""
    if details is None:
        return []
    if isinstance(details, list):
        return details
    if isinstance(details, dict) and "loc" in details:
        extra = {k: v for k, v in details.items() if k not in ("loc", "msg", "type")}
        return [{"loc": str(details["loc"]), "msg": details.get("msg", message), "type": details.get("type", code),
                 **extra}]
    if isinstance(details, dict):
        return [{"loc": str(k), "msg": message, "type": code, "value": v} for k, v in details.items()]
    return [{"loc": "", "msg": message, "type": code, "value": details}]


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": detail_list(code, message, details)}}


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


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


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    raw = list(exc.errors())
    body_errors = [e for e in raw if tuple(e.get("loc", ())) == ("body",)
                   and e.get("type") in ("model_attributes_type", "dict_type", "missing")]
    if body_errors:
        content_type = request.headers.get("content-type", "")
        sent = bool(content_type) or request.headers.get("content-length", "0") != "0" \
            or "transfer-encoding" in request.headers
        if sent and not _is_json(content_type):
            got = repr(content_type) if content_type else "no Content-Type"
            return error_response(415, "unsupported_media_type",
                                  f"the request body must be JSON: send Content-Type: application/json ({got} given)",
                                  [{"loc": "header.content-type", "msg": "expected application/json",
                                    "type": "unsupported_media_type"}])
        if body_errors[0].get("type") != "missing":
            return error_response(422, "validation_error", "the request body must be a JSON object",
                                  validation_details(body_errors))
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
