"""GET /metrics: Prometheus text that the official parser reads, with values that follow the jobs
(counted from SQL, so worker-side events show in the API process), and the HTTP latency histogram."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from api.db.clock import utcnow
from api.db.leases import claim
from api.db.models import Job
from api.db.session import upgrade
from api.main import create_app
from api_helpers import submit
from worker.reconciler import reconcile_once


def scrape(client, **kw) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics", **kw)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def test_metrics_parse_and_follow_the_jobs(client, db, settings):
    before = scrape(client)
    assert before[("pretextlab_store_up", ())] == 1
    assert before[("pretextlab_jobs", (("status", "queued"),))] == 0
    a, b = submit(client)["id"], submit(client)["id"]
    m = scrape(client)
    assert m[("pretextlab_jobs", (("status", "queued"),))] == 2
    sessions = db
    lease = claim(sessions, a, "w1", 30)  # a worker (another process in production) claims job a
    assert lease is not None
    with sessions() as s, s.begin():  # ... and dies: its lease runs out
        s.execute(update(Job).where(Job.id == a).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    reconcile_once(sessions, settings)
    claim(sessions, b, "w2", 30).finish(["running"], "succeeded", "succeeded", reason="completed",
                                        owner=None, lease_expires_at=None)
    m = scrape(client)
    assert m[("pretextlab_job_claims_total", ())] == 2
    assert m[("pretextlab_lease_losses_total", ())] == 1
    assert m[("pretextlab_job_requeues_total", (("reason", "lease_expired"),))] == 1
    assert m[("pretextlab_job_requeues_total", (("reason", "handed_back"),))] == 0
    assert m[("pretextlab_jobs", (("status", "queued"),))] == 1
    assert m[("pretextlab_jobs", (("status", "succeeded"),))] == 1
    assert m[("pretextlab_job_run_duration_seconds_count", (("outcome", "succeeded"),))] == 1
    assert m[("pretextlab_job_run_duration_seconds_count", (("outcome", "lost"),))] == 1
    assert m[("pretextlab_job_run_duration_seconds_bucket", (("le", "+Inf"), ("outcome", "lost")))] == 1
    # HTTP latency by route template (not the raw path) and status
    client.get(f"/v1/jobs/{a}")
    client.get("/v1/jobs/424242")
    m = scrape(client)
    ok = ("pretextlab_http_request_duration_seconds_count",
          (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200")))
    missing = ("pretextlab_http_request_duration_seconds_count",
               (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "404")))
    assert m[ok] == 1 and m[missing] == 1
    assert not any(f"/v1/jobs/{a}" in str(k) for k in m)


def test_metrics_need_the_token_when_tokens_are_set(sqlite_url, make_settings):
    upgrade(sqlite_url)
    with TestClient(create_app(make_settings(sqlite_url, api_tokens="a-metrics-scraper-token-0123456789", auth="on"))) as c:
        assert c.get("/metrics").status_code == 401
        assert scrape(c, headers={"Authorization": "Bearer a-metrics-scraper-token-0123456789"})[
            ("pretextlab_store_up", ())] == 1
