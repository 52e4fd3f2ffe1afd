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
from api.routes import artifacts, catalog, health, jobs, metrics, results
from api.security import BodySizeLimitMiddleware
from api.settings import Settings, get_settings

log = logging.getLogger("pretextlab.api")

DESCRIPTION = """Self-supervised pretraining as a service: submit pretraining (Rotation, Exemplar-CNN,
relative position, Jigsaw, SimCLR, MoCo) and evaluation (kNN, linear probe, fine-tune) jobs, follow
their metrics, download checkpoints and backbones, compare results.

Errors are always `{"error": {"code", "message", "details"}}`. When `PRETEXTLAB_API_TOKENS` is set,
every `/v1` call needs `Authorization: Bearer <token>`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    install_log_redaction()  # no URL password or token in any log line, tracebacks included

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        try:
            check_schema_current(engine)  # SchemaOutOfDate: refuse to start
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
                  docs_url="/docs", openapi_url="/openapi.json")
    app.state.settings = settings
    errors.install(app)
    for module in (health, jobs, metrics, artifacts, catalog, results):
        app.include_router(module.router)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    prometheus.install(app)  # GET /metrics; its latency middleware wraps the body limit too
    return app


app = create_app()
