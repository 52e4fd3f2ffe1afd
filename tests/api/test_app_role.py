"""`pretextlab db upgrade` with PRETEXTLAB_DB_APP_PASSWORD makes the application role on PostgreSQL:
it can run the service (submit, claim, list) but is no superuser, cannot create tables, and cannot
run programs on the server (``COPY ... TO PROGRAM``)."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from api.db.roles import ensure_app_role
from api.db.session import upgrade
from api.main import create_app
from api_helpers import PRETRAIN


def test_the_app_role_runs_the_service_without_superuser_powers(postgres_url, make_settings):
    role, password = f"pretextlab_app_{uuid.uuid4().hex[:8]}", "app-password-" + uuid.uuid4().hex
    upgrade(postgres_url)
    assert ensure_app_role(postgres_url, password, role=role)
    assert ensure_app_role(postgres_url, password, role=role)  # idempotent (ALTER the second time)
    app_url = make_url(postgres_url).set(username=role, password=password).render_as_string(hide_password=False)
    try:
        with TestClient(create_app(make_settings(app_url))) as c:  # starts: reads alembic_version, api_tokens
            job = c.post("/v1/jobs", json={"spec": PRETRAIN}).json()
            assert c.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
        engine = sa.create_engine(app_url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar() is False
            for stmt in ("CREATE TABLE evil (x int)", "COPY (SELECT 1) TO PROGRAM 'id'", "DROP TABLE jobs"):
                with pytest.raises(sa.exc.ProgrammingError, match="permission denied|must be owner|must be superuser"):
                    conn.execute(sa.text(stmt))
                conn.rollback()
        engine.dispose()
        with pytest.raises(ValueError, match="16 characters"):
            ensure_app_role(postgres_url, "short", role=role)
        assert not ensure_app_role("sqlite:///x.sqlite", password)  # SQLite: nothing to do
    finally:
        admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
            conn.execute(sa.text(f'DROP ROLE "{role}"'))
        admin.dispose()
