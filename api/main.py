"""The FastAPI application: ``create_app(settings)``; ``api.main:app`` for uvicorn.

Nothing touches the database at import time: the engine is made in the lifespan, from the
settings, after checking that the schema is at the migration head (otherwise the app refuses to
start and says to run ``pretextlab db upgrade``).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI

from api import errors, prometheus
from api.redact import install_log_redaction
from api.db.session import check_schema_current, make_engine, session_factory
from api.db.tokens import live_token_count
from api.routes import (artifacts, catalog, deletion, docs, events, health, jobs, metrics, results, suites, ui,
                        workers)
from api.routes.events import close_streams  # noqa: F401 - serve ends open streams at shutdown
from api.security import BodySizeLimitMiddleware
from api.settings import Settings, get_settings

log = logging.getLogger("pretextlab.api")

DESCRIPTION = """Self-supervised pretraining as a service: submit pretraining (Rotation, Exemplar-CNN,
relative position, Jigsaw, SimCLR, MoCo) and evaluation (kNN, linear probe, fine-tune) jobs, follow
their metrics, download checkpoints and backbones, compare results.

Errors are always `{"error": {"code", "message", "details"}}`. Every `/v1` call needs
`Authorization: Bearer <token>` (a named token or one of `PRETEXTLAB_API_TOKENS`) unless the
server runs with `PRETEXTLAB_AUTH=off` on loopback. Non-admin tokens see their own jobs only."""


class AuthRefused(RuntimeError):
    """The settings would expose the API without (sound) authentication: it does not start."""


def check_auth(settings: Settings, sessions) -> None:  # noqa: ANN001 - a sessionmaker
    """Raise :class:`AuthRefused` unless ``settings.auth_refusal`` accepts them."""
    with sessions() as s:
        named = live_token_count(s)
    refusal = settings.auth_refusal(named)
    if refusal is not None:
        raise AuthRefused(f"pretextlab: refusing to start: {refusal}")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    install_log_redaction()  # no URL password or token in any log line, tracebacks included

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        try:
            check_schema_current(engine)  # SchemaOutOfDate: refuse to start
            check_auth(settings, session_factory(engine))  # AuthRefused: no open API
        except BaseException:
            engine.dispose()
            raise
        app.state.engine = engine
        app.state.sessionmaker = session_factory(engine)
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(title="pretextlab", version="1", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")  # docs: offline copies
    app.state.settings = settings
    errors.install(app)
    for module in (health, jobs, deletion, metrics, artifacts, catalog, results, events, workers, suites):
        app.include_router(module.router)
    ui.install(app)
    docs.install(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    prometheus.install(app)  # GET /metrics; its latency middleware wraps the body limit too
    return app


app = create_app()
