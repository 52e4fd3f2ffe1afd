"""Named tokens, owners and quotas through the HTTP API, on SQLite and PostgreSQL: a non-admin
token sees and acts on its own jobs only (404 otherwise), admins see all, events name the token,
the per-owner cap counts follow-ups, and the API refuses to start without sound authentication."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.db.session import make_engine, session_factory, upgrade
from api.db.tokens import TokenError, create_token, hash_token, list_tokens, revoke_token
from api.main import AuthRefused, create_app
from api.security import authenticate
from api_helpers import PRETRAIN, detail_values

ENV_TOKEN = "env-admin-token-" + "x" * 24


@pytest.fixture
def tokens(database_url, make_settings):
    """A migrated database with named tokens alice, bob (users) and root (admin); their bearer headers."""
    upgrade(database_url)
    engine = make_engine(database_url)
    with session_factory(engine)() as s, s.begin():
        made = {n: create_token(s, n, admin=(n == "root")) for n in ("alice", "bob", "root")}
    engine.dispose()
    return {n: {"Authorization": f"Bearer {t}"} for n, t in made.items()}


@pytest.fixture
def api(database_url, make_settings, tokens):
    with TestClient(create_app(make_settings(database_url, auth="on", api_tokens=ENV_TOKEN,
                                             max_active_jobs_per_owner=3))) as c:
        yield c


def test_tokens_are_stored_hashed_and_shown_once(database_url, tokens):
    engine = make_engine(database_url)
    with session_factory(engine)() as s:
        rows = {t.name: t for t in list_tokens(s)}
        alice = tokens["alice"]["Authorization"].split()[1]
        assert alice.startswith("ptl_") and len(alice) >= 32
        assert rows["alice"].token_hash == hash_token(alice) and alice not in rows["alice"].token_hash
        assert rows["root"].admin and not rows["alice"].admin
        with pytest.raises(TokenError, match="exists"):
            create_token(s, "alice")
        with pytest.raises(TokenError, match="reserved"):
            create_token(s, "env-1")
        with pytest.raises(TokenError, match="letters"):
            create_token(s, "bad name")
    engine.dispose()


def test_a_non_owner_gets_404_and_lists_filter(api, tokens):
    a = api.post("/v1/jobs", json={"spec": PRETRAIN}, headers=tokens["alice"]).json()
    b = api.post("/v1/jobs", json={"spec": PRETRAIN}, headers=tokens["bob"]).json()
    assert a["created_by"] == "alice" and b["created_by"] == "bob"
    for path in (f"/v1/jobs/{a['id']}", f"/v1/jobs/{a['id']}/events", f"/v1/jobs/{a['id']}/metrics",
                 f"/v1/jobs/{a['id']}/artifacts", f"/v1/jobs/{a['id']}/artifacts/result.json"):
        r = api.get(path, headers=tokens["bob"])
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
        assert api.get(path, headers=tokens["alice"]).status_code != 404 or path.endswith("result.json")
    assert api.post(f"/v1/jobs/{a['id']}/cancel", headers=tokens["bob"]).status_code == 404
    assert api.delete(f"/v1/jobs/{a['id']}", headers=tokens["bob"]).status_code == 404
    assert [j["id"] for j in api.get("/v1/jobs", headers=tokens["bob"]).json()["items"]] == [b["id"]]
    # an evaluation of someone else's pretraining: that source does not exist for bob
    r = api.post("/v1/jobs", json={"spec": {"kind": "evaluate", "source_job_id": a["id"]}}, headers=tokens["bob"])
    assert r.status_code == 422 and "does not exist" in r.json()["error"]["message"]
    # admins (named or from the environment) see everything
    for admin in (tokens["root"], {"Authorization": f"Bearer {ENV_TOKEN}"}):
        assert {j["id"] for j in api.get("/v1/jobs", headers=admin).json()["items"]} == {a["id"], b["id"]}
        assert api.get(f"/v1/jobs/{a['id']}", headers=admin).status_code == 200


def test_events_record_the_token_name(api, tokens):
    a = api.post("/v1/jobs", json={"spec": PRETRAIN}, headers=tokens["alice"]).json()
    assert api.post(f"/v1/jobs/{a['id']}/cancel", headers=tokens["root"]).status_code == 200
    events = api.get(f"/v1/jobs/{a['id']}/events", headers=tokens["alice"]).json()["items"]
    assert [(e["to_status"], e["actor"]) for e in events] == [("queued", "alice"), ("cancelled", "root")]
    e = api.post("/v1/jobs", json={"spec": PRETRAIN}, headers={"Authorization": f"Bearer {ENV_TOKEN}"}).json()
    assert e["created_by"] == "env-1"


def test_revoked_tokens_are_refused(api, tokens, database_url):
    assert api.get("/v1/jobs", headers=tokens["bob"]).status_code == 200
    engine = make_engine(database_url)
    with session_factory(engine)() as s, s.begin():
        revoke_token(s, "bob")
        with pytest.raises(TokenError):
            revoke_token(s, "bob")
        assert authenticate(tokens["bob"]["Authorization"].split()[1], api.app.state.settings, s) is None
    engine.dispose()
    assert api.get("/v1/jobs", headers=tokens["bob"]).status_code == 403


def test_the_per_owner_cap_counts_follow_ups(api, tokens):
    with_followups = {**PRETRAIN, "eval": {"after": [{"protocol": "knn"}, {"protocol": "knn", "k": 5}]}}
    assert api.post("/v1/jobs", json={"spec": with_followups}, headers=tokens["alice"]).status_code == 201
    # 1 job + 2 follow-ups = alice's cap of 3: one more plain job does not fit
    r = api.post("/v1/jobs", json={"spec": PRETRAIN}, headers=tokens["alice"])
    assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
    assert "PRETEXTLAB_MAX_ACTIVE_JOBS_PER_OWNER=3" in r.json()["error"]["message"]
    assert detail_values(r) == {"active": 3, "needed": 1, "limit": 3,
                                            "setting": "PRETEXTLAB_MAX_ACTIVE_JOBS_PER_OWNER"}
    # a job with more follow-ups than the cap can never fit
    big = {**PRETRAIN, "eval": {"after": [{"protocol": "knn"}] * 3}}
    assert api.post("/v1/jobs", json={"spec": big}, headers=tokens["bob"]).status_code == 429
    # other owners are not affected by alice's load
    assert api.post("/v1/jobs", json={"spec": PRETRAIN}, headers=tokens["bob"]).status_code == 201


def test_the_global_cap_counts_follow_ups(database_url, make_settings):
    upgrade(database_url)
    with TestClient(create_app(make_settings(database_url, max_active_jobs=3))) as c:
        spec = {**PRETRAIN, "eval": {"after": [{"protocol": "knn"}, {"protocol": "knn", "k": 5}]}}
        assert c.post("/v1/jobs", json={"spec": spec}).status_code == 201
        r = c.post("/v1/jobs", json={"spec": PRETRAIN})
        assert r.status_code == 429 and "PRETEXTLAB_MAX_ACTIVE_JOBS=3" in r.json()["error"]["message"]


def test_max_runtime_above_the_ceiling_is_refused(database_url, make_settings):
    upgrade(database_url)
    with TestClient(create_app(make_settings(database_url, max_runtime_s=600))) as c:
        r = c.post("/v1/jobs", json={"spec": {**PRETRAIN, "max_runtime_s": 601}})
        assert r.status_code == 422 and "spec.max_runtime_s" in r.json()["error"]["message"]
        assert c.post("/v1/jobs", json={"spec": {**PRETRAIN, "max_runtime_s": 600}}).status_code == 201


# -- refusing to start ----------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, needle", [
    (dict(auth="on", api_tokens=","), "empty entry"),
    (dict(auth="on", api_tokens=" , "), "empty entry"),
    (dict(auth="on", api_tokens="short-token"), "shorter than 32"),
    (dict(auth="on", api_tokens=f"{ENV_TOKEN},short"), "shorter than 32"),
    (dict(auth="on", api_tokens=None), "no API token"),
    (dict(auth="off", host="0.0.0.0"), "PRETEXTLAB_AUTH=off is refused"),
    (dict(auth="off", host="192.168.1.10"), "not a loopback address"),
    (dict(auth="off", api_tokens=ENV_TOKEN), "tokens are set"),
])
def test_the_api_refuses_to_start(sqlite_url, make_settings, overrides, needle):
    upgrade(sqlite_url)
    with pytest.raises(AuthRefused, match=needle):
        with TestClient(create_app(make_settings(sqlite_url, **overrides))):
            pass


def test_the_api_starts_with_a_named_token_only_or_auth_off_on_loopback(sqlite_url, make_settings):
    upgrade(sqlite_url)
    with TestClient(create_app(make_settings(sqlite_url, auth="off", host="::1"))) as c:
        assert c.get("/v1/jobs").status_code == 200
    engine = make_engine(sqlite_url)
    with session_factory(engine)() as s, s.begin():
        token = create_token(s, "ci")
    engine.dispose()
    with TestClient(create_app(make_settings(sqlite_url, auth="on", api_tokens=None))) as c:
        assert c.get("/v1/jobs").status_code == 401
        assert c.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
