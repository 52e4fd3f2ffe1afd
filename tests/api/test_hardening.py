"""Refusals that must be clean 4xx: forged or out-of-range cursors, non-JSON bodies; one error
``details`` shape; list pages that summarise specs instead of repeating them."""

from __future__ import annotations

import base64
import json

from api_helpers import PRETRAIN, submit


def _cursor(ts: str, job_id: object, sig: str = "") -> str:
    payload = base64.urlsafe_b64encode(json.dumps([ts, job_id]).encode()).decode().rstrip("=")
    return payload + (f".{sig}" if sig else "")


def test_forged_cursors_are_400(client):
    ids = [submit(client)["id"] for _ in range(3)]
    real = client.get("/v1/jobs", params={"limit": 1}).json()["next_cursor"]
    assert [j["id"] for j in client.get("/v1/jobs", params={"limit": 5, "cursor": real}).json()["items"]] == \
        sorted(ids, reverse=True)[1:]
    payload, _, sig = real.partition(".")
    ts = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))[0]
    forged = [
        _cursor(ts, 2**64),  # outside BIGINT: was a 500 OverflowError
        _cursor(ts, 2**64, sig),  # with a signature of another payload
        _cursor("2020-01-01T00:00:00+00:00", ids[1]),  # well-formed, unsigned
        _cursor("2020-01-01T00:00:00+00:00", ids[1], sig),
        payload + "." + "0" * len(sig),
        payload,  # the signature dropped
        real + "x",
    ]
    for cursor in forged:
        r = client.get("/v1/jobs", params={"cursor": cursor})
        assert r.status_code == 400, (cursor, r.text)
        err = r.json()["error"]
        assert err["code"] == "bad_cursor" and err["details"][0]["loc"] == "cursor"


def test_a_cursor_outlives_the_process_only_with_a_cursor_secret(make_settings, sqlite_url):
    from fastapi.testclient import TestClient

    from api.db.session import upgrade
    from api.main import create_app

    upgrade(sqlite_url)
    cursors = []
    for _ in range(2):  # two API processes (replicas, or a restart) sharing PRETEXTLAB_CURSOR_SECRET
        with TestClient(create_app(make_settings(sqlite_url, cursor_secret="k" * 32))) as c:
            if not cursors:
                for _ in range(3):
                    submit(c)
                cursors.append(c.get("/v1/jobs", params={"limit": 1}).json()["next_cursor"])
            else:
                assert c.get("/v1/jobs", params={"cursor": cursors[0]}).status_code == 200
    with TestClient(create_app(make_settings(sqlite_url, cursor_secret="another-secret-of-32-characters!"))) as c:
        assert c.get("/v1/jobs", params={"cursor": cursors[0]}).status_code == 400


def test_a_non_json_body_gets_a_clear_415(client):
    body = json.dumps({"spec": PRETRAIN}).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"content-type": ctype} if ctype else {}
        r = client.post("/v1/jobs", content=body, headers=headers)
        assert r.status_code == 415, (ctype, r.text)
        err = r.json()["error"]
        assert err["code"] == "unsupported_media_type"
        assert "must be JSON" in err["message"] and "Content-Type: application/json" in err["message"]
        assert "dictionary" not in err["message"]
    r = client.post("/v1/jobs", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["message"] == "the request body must be a JSON object"
    assert client.post("/v1/jobs", content=body, headers={"content-type": "application/json; charset=utf-8"}
                       ).status_code == 201


def test_every_error_has_a_list_of_loc_msg_type_details(client):
    job = submit(client)["id"]
    answers = [
        client.get("/v1/jobs/999"),  # route error with values
        client.get("/v1/nope"),  # no details at all
        client.post("/v1/jobs", json={"spec": {**PRETRAIN, "epochs": 0}}),  # spec validation
        client.get("/v1/jobs", params={"limit": 0}),  # request validation
        client.get("/v1/jobs", params={"cursor": "x"}),
        client.post("/v1/jobs", content=b"{", headers={"content-type": "application/json"}),
        client.get(f"/v1/jobs/{job}/metrics", params={"name": "nope"}),
        client.post("/v1/jobs", content=b"x" * (2 << 20), headers={"content-type": "application/json"}),
    ]
    for r in answers:
        assert 400 <= r.status_code < 500, r.text
        details = r.json()["error"]["details"]
        assert isinstance(details, list), r.text
        for d in details:
            assert {"loc", "msg", "type"} <= set(d) and all(isinstance(d[k], str) for k in ("loc", "msg", "type"))


def test_list_pages_summarise_specs(client):
    big = {**PRETRAIN, "augment": [{"name": "hflip"}] * 3000}  # a spec of ~60 KB
    r = client.post("/v1/jobs", json={"spec": big})
    if r.status_code != 201:  # spec lists may be bounded: then the largest accepted one
        big = PRETRAIN
        submit(client, big)
    for _ in range(19):
        client.post("/v1/jobs", json={"spec": big})
    spec_bytes = len(json.dumps(client.get("/v1/jobs").json()["items"][0]["summary"]))
    page = client.get("/v1/jobs")
    assert page.status_code == 200
    items = page.json()["items"]
    assert len(items) == 20 and all(i["spec"] is None for i in items)
    assert items[0]["summary"] == {"method": "simclr", "backbone": "convnet", "dataset": "synthetic",
                                   "image_size": 16, "epochs": 1, "batch_size": 16, "protocol": None,
                                   "source_job_id": None}
    assert len(page.content) < 20 * 2000 + spec_bytes  # ~1 KB a job, whatever the specs' size
    full = client.get("/v1/jobs", params={"view": "full", "limit": 2}).json()["items"]
    assert full[0]["spec"]["method"]["name"] == "simclr" and full[0]["summary"]["method"] == "simclr"
    one = client.get(f"/v1/jobs/{items[0]['id']}").json()
    assert one["spec"] is not None and one["summary"]["epochs"] == 1
    assert client.get("/v1/jobs", params={"view": "everything"}).status_code == 422
