"""Bad input gets a JSON 4xx naming the problem; nothing is half-written."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.db.models import Job, JobEvent
from api.db.session import upgrade
from api.main import create_app
from api_helpers import PRETRAIN


def _error(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message", "details"} and err["message"]
    return err


def test_malformed_json(client):
    err = _error(client.post("/v1/jobs", content=b'{"spec": {', headers={"content-type": "application/json"}), 400)
    assert err["code"] == "malformed_json" and "malformed JSON" in err["message"]


def test_unknown_fields_top_level_and_in_spec(client):
    err = _error(client.post("/v1/jobs", json={"spec": PRETRAIN, "colour": "red"}), 422)
    assert "colour" in err["message"] and err["details"][0]["type"] == "extra_forbidden"
    err = _error(client.post("/v1/jobs", json={"spec": {**PRETRAIN, "learning_rate": 1}}), 422)
    assert "spec.learning_rate" in err["message"]
    err = _error(client.post("/v1/jobs", json={"spec": {**PRETRAIN, "method": {"name": "simclr", "tau": 1}}}), 422)
    assert "tau" in err["message"]


def test_wrong_types(client):
    err = _error(client.post("/v1/jobs", json={"spec": {**PRETRAIN, "epochs": "many"}}), 422)
    assert "spec.epochs" in err["message"]
    err = _error(client.post("/v1/jobs", json={"spec": PRETRAIN, "tags": "not-a-list"}), 422)
    assert "tags" in err["message"]
    err = _error(client.post("/v1/jobs", json=[1, 2]), 422)
    err = _error(client.post("/v1/jobs", json={"spec": PRETRAIN, "priority": 10**30}), 422)
    assert "priority" in err["message"]
    err = _error(client.post("/v1/jobs", json={"spec": {**PRETRAIN, "method": {"name": "dino"}}}), 422)
    assert "method" in err["message"]
    err = _error(client.post("/v1/jobs", json={"spec": PRETRAIN, "name": "a\u0000b"}), 422)
    assert "name" in err["message"]
    err = _error(client.post("/v1/jobs", content=b"spec=1", headers={"content-type": "text/plain"}), 415)
    assert err["code"] == "unsupported_media_type"  # a clear message, not "a valid dictionary"


def test_oversized_bodies(database_url, make_settings):
    upgrade(database_url)
    with TestClient(create_app(make_settings(database_url, max_body_bytes=4096))) as c:
        big = {"spec": PRETRAIN, "name": "x", "tags": ["t" * 60] * 32, "pad": "y" * 5000}
        err = _error(c.post("/v1/jobs", json=big), 413)
        assert err["code"] == "payload_too_large" and "4096" in err["message"]

        def chunks():  # no Content-Length: the limit is enforced while counting
            for _ in range(10):
                yield b" " * 1000

        err = _error(c.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"}), 413)
        assert err["details"] == [{"loc": "max_body_bytes", "msg": err["message"], "type": "payload_too_large", "value": 4096}]
        ok = c.post("/v1/jobs", content=json.dumps({"spec": PRETRAIN}).encode(),
                    headers={"content-type": "application/json"})
        assert ok.status_code == 201
        with c.app.state.sessionmaker() as s:
            assert s.scalar(select(func.count()).select_from(Job)) == 1


def test_unknown_routes_and_methods(client):
    assert _error(client.get("/v1/nothing"), 404)["code"] == "not_found"
    assert _error(client.delete("/v1/jobs"), 405)["code"] == "method_not_allowed"


def test_failed_request_leaves_nothing_behind(client, db):
    _error(client.post("/v1/jobs", json={"spec": {"kind": "evaluate", "source_job_id": 77}}), 422)
    _error(client.post("/v1/jobs", json={"spec": {**PRETRAIN, "epochs": 0}}), 422)
    with db() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
        assert s.scalar(select(func.count()).select_from(JobEvent)) == 0


@pytest.mark.parametrize("path", ["/v1/jobs?limit=abc", "/v1/jobs?kind=train", "/v1/jobs/0",
                                  "/v1/jobs/1/metrics?max_points=x", "/v1/results?protocol=best"])
def test_bad_query_parameters(client, path):
    err = _error(client.get(path), 422)
    assert err["code"] == "validation_error" and err["details"]
