"""No password or token in anything printed or logged: URLs (user:pw@ and ?password=), credential
parameters, bearer tokens, and unexpected errors' messages and tracebacks."""

from __future__ import annotations

import io
import logging

from fastapi.testclient import TestClient

from api.db.session import upgrade
from api.main import create_app
from api.redact import install_log_redaction, redact
from worker.cli import _redact
from worker.runner import error_message

SECRETS = ("hunter2", "s3cr3t", "tok-123", "AKIAXYZ", "pa:ss")
TEXTS = [
    "postgresql+psycopg://app:hunter2@db:5432/pretextlab?sslmode=require",
    "postgresql+psycopg://app@db/pretextlab?sslmode=require&password=hunter2",
    "postgresql://db/pretextlab?password=s3cr3t&application_name=x",
    "redis://:s3cr3t@redis:6379/0",
    "rediss://default:s3cr3t@redis:6380/0?ssl_cert_reqs=required",
    "https://s3.example/bucket?X-Amz-Credential=AKIAXYZ&token=tok-123",
    "host=db user=app password=hunter2 dbname=x",
    "Authorization: Bearer tok-123",
    "connect failed: postgresql://app:pa:ss@db/x",
    "s3://b/k?access_key=AKIAXYZ&secret_key=s3cr3t",
]


def test_redact_hides_every_secret_and_keeps_the_rest():
    for text in TEXTS:
        clean = redact(text)
        assert not any(s in clean for s in SECRETS), (text, clean)
        assert "***" in clean
    assert redact("postgresql+psycopg://app:hunter2@db:5432/x?sslmode=require") == \
        "postgresql+psycopg://app:***@db:5432/x?sslmode=require"
    assert redact("sqlite:///./pretextlab.sqlite") == "sqlite:///./pretextlab.sqlite"
    assert redact("step 5: loss 0.3, tokens/s 1200") == "step 5: loss 0.3, tokens/s 1200"
    assert _redact("postgresql://u@h/db?password=hunter2") == "postgresql://u@h/db?password=***"  # `db upgrade`


def test_log_records_and_tracebacks_are_redacted():
    install_log_redaction()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("pretextlab.test.redaction")
    log.addHandler(handler)
    try:
        log.warning("cannot reach %s", "redis://:s3cr3t@redis:6379/0")
        try:
            raise ConnectionError("could not connect to postgresql://app@db/x?password=hunter2")
        except ConnectionError:
            log.exception("unexpected error")
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert "ConnectionError" in text and "Traceback" in text and "redis://:***@redis" in text
    assert not any(s in text for s in SECRETS), text


def test_an_unexpected_error_is_logged_redacted_and_answered_without_details(sqlite_url, make_settings, caplog):
    upgrade(sqlite_url)
    app = create_app(make_settings(sqlite_url))

    def boom() -> None:
        raise RuntimeError("lost postgresql://app:hunter2@db/x?password=hunter2 and Bearer tok-123")

    app.add_api_route("/boom", boom)
    caplog.set_level(logging.ERROR, logger="pretextlab.api")
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert r.status_code == 500 and "hunter2" not in r.text
    logged = "\n".join(f"{rec.getMessage()}\n{rec.exc_text or ''}" for rec in caplog.records)
    assert "RuntimeError" in logged and not any(s in logged for s in SECRETS), logged
    # what a job's error column says of such an exception
    msg = error_message(RuntimeError("redis://:s3cr3t@redis:6379/0 refused"))
    assert msg == "RuntimeError: redis://:***@redis:6379/0 refused"
