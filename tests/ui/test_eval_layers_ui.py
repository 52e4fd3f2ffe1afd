"""The dashboard in a real browser with per-layer evaluation results: the evaluation's layer table, the
pretraining's list of its evaluations, and the leaderboard's layer column (sortable, filterable)."""

from __future__ import annotations

from typing import Any

import pytest
from selenium.webdriver.common.by import By
from test_dashboard import text_of, wait
from ui_harness import Server

from api.db.jobs import transition

pytestmark = pytest.mark.slow
RESULT = {"top1": 0.61, "top5": 0.9, "layer": "pool", "feature_dim": 512, "protocol": "knn",
          "layers": {"layer2": {"top1": 0.74, "top5": 0.97, "feature_dim": 4608},
                     "pool": {"top1": 0.61, "top5": 0.9, "feature_dim": 512}}}


def _succeed(server: Server, job_id: int, **values: Any) -> None:
    with server.sessions() as s:
        assert transition(s, job_id, "queued", "running")
        assert transition(s, job_id, "running", "succeeded", **values)
        s.commit()


def test_layer_results_on_the_job_pages_and_the_leaderboard(server: Server, browser: Any) -> None:
    pre = server.submit("layers-src")
    r = server.http.post("/v1/jobs", json={"spec": {"kind": "evaluate", "source_job_id": pre, "data": {"dataset": "digits"},
                                                    "layers": ["layer2", "pool"]}})
    assert r.status_code == 201, r.text
    ev = r.json()["id"]
    _succeed(server, pre)
    _succeed(server, ev, top1=0.61, top5=0.9, result=RESULT)

    browser.get(f"{server.base}/ui/jobs/{ev}")
    wait(browser, lambda d: "live" in text_of(d, "#live"), "the event stream to connect")  # the page's script ran
    rows = [tr.text for tr in browser.find_elements(By.CSS_SELECTOR, "#layers tbody tr")]
    assert rows == ["layer2 4608 0.7400 0.9700", "pool (headline) 512 0.6100 0.9000"]
    assert text_of(browser, "#status") == "succeeded"

    browser.get(f"{server.base}/ui/jobs/{pre}")
    wait(browser, lambda d: "live" in text_of(d, "#live"), "the event stream to connect")
    assert "pool (+1 more) 0.6100 0.9000" in browser.find_element(By.TAG_NAME, "main").text

    browser.get(f"{server.base}/ui/leaderboard")
    layer_col = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#results thead th")].index("layer")
    cells = lambda: [tr.find_elements(By.TAG_NAME, "td")[layer_col].text  # noqa: E731
                     for tr in browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")]
    assert cells() == ["layer2", "pool"]  # best top-1 first
    browser.find_elements(By.CSS_SELECTOR, "#results thead th")[layer_col].click()
    wait(browser, lambda d: cells() == ["layer2", "pool"], "ascending by layer")
    browser.find_elements(By.CSS_SELECTOR, "#results thead th")[layer_col].click()
    wait(browser, lambda d: cells() == ["pool", "layer2"], "descending by layer")
    browser.get(f"{server.base}/ui/leaderboard?layer=layer2")
    assert cells() == ["layer2"]
