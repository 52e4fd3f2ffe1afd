"""The dashboard in a real browser (headless Chromium): live job list, a job's curves, Compare,
cancel, and the token login with its CSRF guard."""

from __future__ import annotations

from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from ui_harness import Server

pytestmark = pytest.mark.slow
WAIT_S = 20


def wait(browser: Any, cond: Any, what: str, timeout: float = WAIT_S) -> Any:
    return WebDriverWait(browser, timeout).until(lambda d: cond(d), message=what)


def text_of(browser: Any, css: str) -> str:
    found = browser.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def test_a_submitted_job_appears_and_changes_state_live(server: Server, browser: Any) -> None:
    browser.get(server.base + "/ui/")
    wait(browser, lambda d: "live" in text_of(d, "#live"), "the event stream to connect")
    browser.execute_script("window.__same_page = 'yes'")  # gone if anything reloads the page
    job_id = server.submit("live-one")
    row = f"#job-{job_id}"
    wait(browser, lambda d: text_of(d, f"{row} .status") == "queued", "the new job's row")
    lease = server.claim(job_id)
    wait(browser, lambda d: text_of(d, f"{row} .status") == "running", "the row to turn running")
    server.progress(lease, step=30, total=60)
    wait(browser, lambda d: text_of(d, f"{row} .progress") == "50%", "the progress bar at 50%")
    assert text_of(browser, f"{row} .eta") == "30 s"
    assert text_of(browser, f"{row} .attempt") == "1/3"
    assert browser.execute_script("return window.__same_page") == "yes"


def test_the_job_page_draws_the_jobs_curve(server: Server, browser: Any) -> None:
    job_id = server.submit("curvy")
    server.claim(job_id)
    server.metrics(job_id, "train/loss", [2.0 - i * 0.01 for i in range(120)])
    server.metrics(job_id, "train/lr", [0.1] * 120)
    browser.get(f"{server.base}/ui/jobs/{job_id}")
    chart = '.chart[data-metric="train/loss"]'
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"{chart} canvas"), "the train/loss chart")
    box = browser.find_element(By.CSS_SELECTOR, chart)
    assert box.get_attribute("data-points") == "120"
    assert browser.find_elements(By.CSS_SELECTOR, '.chart[data-metric="train/lr"] canvas')
    # the canvas really has ink on it (uPlot drew the series)
    inked = browser.execute_script(
        "const c = arguments[0]; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;",
        box.find_element(By.CSS_SELECTOR, "canvas"))
    assert inked > 100
    assert "curvy" in browser.find_element(By.TAG_NAME, "h1").text


def test_compare_overlays_two_jobs(server: Server, browser: Any) -> None:
    a = server.submit("lr-small", optim={"lr": 0.05})
    b = server.submit("lr-large", optim={"lr": 0.4})
    server.metrics(a, "train/loss", [1.0 / (i + 1) for i in range(50)])
    server.metrics(b, "train/loss", [2.0 / (i + 1) for i in range(80)])
    browser.get(f"{server.base}/ui/compare?ids={a},{b}")
    chart = '.chart[data-metric="train/loss"]'
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"{chart} canvas"), "the overlaid chart")
    box = browser.find_element(By.CSS_SELECTOR, chart)
    assert box.get_attribute("data-jobs") == f"{a},{b}"
    assert box.get_attribute("data-points") == "130"
    legend = box.find_element(By.CSS_SELECTOR, ".u-legend").text
    assert f"job {a}" in legend and f"job {b}" in legend
    differs = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#spec-diff tr.differs")]
    assert any(r.startswith("optim.lr") for r in differs), differs
    wait(browser, lambda d: "last train/loss" in text_of(d, "#final-metrics"), "the final numbers")


def test_cancel_from_the_job_page(server: Server, browser: Any) -> None:
    job_id = server.submit("to-cancel")
    browser.get(f"{server.base}/ui/jobs/{job_id}")
    wait(browser, lambda d: "live" in text_of(d, "#live"), "the event stream to connect")
    browser.find_element(By.ID, "cancel").click()
    wait(browser, lambda d: text_of(d, "#status") == "cancelled", "the badge to say cancelled")
    assert server.job(job_id)["status"] == "cancelled"
    assert not browser.find_element(By.ID, "cancel").is_enabled()


FETCH = """const done = arguments[arguments.length - 1];
fetch(arguments[0], {method: arguments[1], headers: arguments[2], credentials: 'same-origin'})
  .then(r => done(r.status)).catch(e => done(String(e)));"""


def test_tokens_the_login_form_and_the_csrf_guard(secured_server: Server, browser: Any) -> None:
    server = secured_server
    job_id = server.submit("secret-job")
    browser.delete_all_cookies()
    browser.get(server.base + "/ui/")
    assert "/ui/login" in browser.current_url  # nothing shown without a token
    assert "secret-job" not in browser.page_source
    assert browser.execute_async_script(FETCH, "/v1/jobs", "GET", {}) == 401
    field = browser.find_element(By.ID, "token")
    field.send_keys("not-the-token")
    field.submit()
    wait(browser, lambda d: "unknown token" in text_of(d, "#login-error"), "the wrong token refused")
    browser.find_element(By.ID, "token").send_keys(server.token)
    browser.find_element(By.ID, "login-form").submit()
    wait(browser, lambda d: d.find_elements(By.ID, f"job-{job_id}"), "the jobs list after signing in")
    assert "secret-job" in browser.page_source
    cookie = browser.get_cookie("pretextlab_session")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert server.token not in cookie["value"]
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: invisible to scripts
    # Reads work with the cookie; a write without the CSRF header is refused, with it accepted.
    assert browser.execute_async_script(FETCH, f"/v1/jobs/{job_id}", "GET", {}) == 200
    assert browser.execute_async_script(FETCH, f"/v1/jobs/{job_id}/cancel", "POST", {}) == 403
    assert server.job(job_id)["status"] == "queued"
    csrf = browser.find_element(By.CSS_SELECTOR, 'meta[name="csrf-token"]').get_attribute("content")
    assert browser.execute_async_script(FETCH, f"/v1/jobs/{job_id}/cancel", "POST", {"X-CSRF-Token": csrf}) == 200
    assert server.job(job_id)["status"] == "cancelled"
