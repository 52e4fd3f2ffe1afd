"""The dashboard's pages, session cookie and CSRF guard, and the offline API docs (TestClient, on
SQLite and PostgreSQL); the browser tests are in tests/ui."""

from __future__ import annotations

import re
import time
from typing import Any, Callable

import pytest
from api_helpers import submit
from fastapi.testclient import TestClient

from api.db.metrics import write_metrics
from api.main import create_app
from api.settings import Settings
from api.ui import session as ui_session

CDN = re.compile(r"""(src|href)=["']?(https?:)?//""")


def test_pages_render_without_tokens(client: TestClient, db: Callable[[], Any]) -> None:
    a = submit(client, name="alpha", tags=["sweep"])["id"]
    b = submit(client, {"method": {"name": "rotation"}, "data": {"dataset": "digits"}, "epochs": 3},
               name="beta", tags=["sweep"])["id"]
    with db() as s, s.begin():
        write_metrics(s, a, [{"name": "train/loss", "step": i, "value": 1.0} for i in range(5)])
    page = client.get("/ui/")
    assert page.status_code == 200 and "alpha" in page.text and "beta" in page.text
    assert not CDN.search(page.text)  # every asset is served by us
    assert "alpha" not in client.get("/ui/?tag=nope").text
    assert "beta" in client.get("/ui/?tag=sweep&status=queued").text
    bad = client.get("/ui/?status=bogus")
    assert bad.status_code == 200 and "status: unknown status" in bad.text
    assert "cursor:" in client.get("/ui/?cursor=garbage").text
    paged = client.get("/ui/?limit=1")
    assert 'id="older"' in paged.text
    older = re.search(r'id="older" href="([^"]+)"', paged.text).group(1).replace("&amp;", "&")
    assert "alpha" in client.get(older).text
    job = client.get(f"/ui/jobs/{a}")
    assert job.status_code == 200 and "Clone and edit" in job.text and "&#34;epochs&#34;" in job.text
    assert client.get("/ui/jobs/999").status_code == 404
    cmp = client.get(f"/ui/compare?ids={a},{b}")
    assert cmp.status_code == 200
    assert re.search(r'<tr class="differs"><th>epochs</th>', cmp.text)
    assert "sweep" in client.get("/ui/compare?tag=sweep").text
    assert client.get("/ui/compare?ids=x").status_code == 400
    assert client.get("/ui/leaderboard").status_code == 200
    assert 'id="nav-workers"' not in page.text or client.get("/v1/workers").status_code != 404


def test_user_text_is_escaped(client: TestClient) -> None:
    evil = '<script>alert(1)</script>'
    job = submit(client, name=evil, tags=["<b>x</b>"])["id"]
    for path in ("/ui/", f"/ui/jobs/{job}", f"/ui/compare?ids={job}"):
        text = client.get(path).text
        assert evil not in text and "<b>x</b>" not in text
        assert "&lt;script&gt;" in text


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_are_served_from_the_package(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "fonts.googleapis" not in page.text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert any(a.endswith((".js")) for a in assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        assert client.get(asset).status_code == 200, asset


TOK_A, TOK_B = "tok-a-" + "a" * 32, "tok-b-" + "b" * 32  # the API refuses tokens under 32 characters


def secured(make_settings: Callable[..., Settings], settings: Settings) -> TestClient:
    return TestClient(create_app(make_settings(settings.database_url, api_tokens=f"{TOK_A},{TOK_B}", auth="on")))


def test_nothing_without_a_token_then_login_then_csrf(make_settings: Callable[..., Settings],
                                                      settings: Settings) -> None:
    with secured(make_settings, settings) as c:
        job = c.post("/v1/jobs", json={"name": "hidden", "spec": {"method": {"name": "rotation"}}}, headers={"Authorization": f"Bearer {TOK_A}"}).json()["id"]
        for path in ("/ui/", f"/ui/jobs/{job}", "/ui/compare?ids=1", "/ui/leaderboard", "/ui/workers"):
            r = c.get(path, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?next=")
        assert c.get("/v1/events/stream").status_code == 401
        assert c.post("/ui/login", data={"token": "wrong"}).status_code == 403
        assert c.post("/ui/login", data={"token": ""}).status_code == 403
        r = c.post("/ui/login", data={"token": TOK_B, "next": "https://evil.example/"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/"  # never an open redirect
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOK_B not in cookie
        page = c.get(f"/ui/jobs/{job}")
        assert page.status_code == 200 and "hidden" in page.text
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
        assert c.get(f"/v1/jobs/{job}").status_code == 200
        refused = c.post(f"/v1/jobs/{job}/cancel")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
        assert c.post(f"/v1/jobs/{job}/cancel", headers={"X-CSRF-Token": "nope"}).status_code == 403
        assert c.post(f"/v1/jobs/{job}/cancel", headers={"X-CSRF-Token": csrf}).status_code == 200
        assert c.post("/ui/logout", data={"csrf": "nope"}).status_code == 403
        assert c.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303


def test_forged_expired_and_stale_cookies_are_refused(make_settings: Callable[..., Settings],
                                                      settings: Settings) -> None:
    with secured(make_settings, settings) as c:
        s = c.app.state.settings
        good = ui_session.encode(s, ui_session.UiSession("env-1", True, "c", int(time.time()) + 60))
        expired = ui_session.encode(s, ui_session.UiSession("env-1", True, "c", int(time.time()) - 1))
        other = make_settings(settings.database_url, api_tokens="another-token-" + "c" * 32, auth="on")  # tokens changed since
        stale = ui_session.encode(other, ui_session.UiSession("env-1", True, "c", int(time.time()) + 60))
        payload, _, sig = good.partition(".")
        forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + sig
        for value, status in ((good, 200), (expired, 401), (stale, 401), (forged, 401), ("x.y", 401)):
            c.cookies.set(ui_session.COOKIE, value)
            assert c.get("/v1/jobs").status_code == status, value
