"""/healthz (the process answers) and /readyz (database at the schema head, broker reachable)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.db.session import SchemaOutOfDate, check_schema_current
from api.dispatch import broker_reachable
from api.errors import RETRY_AFTER_S, error_response

log = logging.getLogger("pretextlab.api")
router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: database reachable and migrated, broker reachable when configured")
def readyz(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    checks: dict[str, str] = {}
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
        check_schema_current(request.app.state.engine)
        checks["schema"] = "ok"
    except SchemaOutOfDate as exc:
        checks["schema"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        log.warning("readyz: database unreachable (%s)", type(exc).__name__)
        checks["database"] = "unreachable"
    if settings.broker_url is None:
        checks["broker"] = "embedded"
    else:
        checks["broker"] = "ok" if broker_reachable(settings) else "unreachable"
    if all(v in ("ok", "embedded") for v in checks.values()) and "schema" in checks:
        return JSONResponse({"status": "ready", "checks": checks})
    return error_response(503, "not_ready", "not ready: " + ", ".join(f"{k}={v}" for k, v in checks.items()),
                          checks, {"Retry-After": str(RETRY_AFTER_S)})
