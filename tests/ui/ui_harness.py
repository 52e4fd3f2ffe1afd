"""The dashboard tests' harness: a real `pretextlab serve` on SQLite (no local worker: the test
plays the worker through the job store's own functions), and headless Chromium driven by Selenium
through the system chromedriver (Debian's `chromium` + `chromium-driver`)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import httpx

from api.db.leases import JobLease, claim
from api.db.metrics import write_metrics
from api.db.session import make_engine, session_factory, upgrade
from tests.support.databases import sqlite_file_url
from tests.support.net import free_port, wait_for_http
from tests.support.processes import Proc, service_env
from tests.support.services import unavailable

CHROMEDRIVER = "/usr/bin/chromedriver"


class Server:
    """`pretextlab serve` with ``local_workers=0`` on a fresh SQLite file, and the test's own handle on
    the same store (``claim``/``progress``/``metrics``: what a worker would write)."""

    def __init__(self, tmp: Path, tokens: str | None = None):
        self.url = sqlite_file_url(tmp)
        upgrade(self.url)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.token = tokens.split(",")[0] if tokens else None
        env = service_env(database_url=self.url, artifact_root=tmp / "artifacts", data_root=tmp / "data",
                          port=self.port, local_workers=0, api_tokens=tokens, log_level="WARNING")
        self.proc = Proc("serve", [sys.executable, "-m", "worker.cli", "serve"], env, tmp)
        wait_for_http(self.base + "/healthz", 60, "serve to answer /healthz", alive=self.proc.alive,
                      on_timeout=lambda: self.proc.log()[-3000:])
        self.engine = make_engine(self.url)
        self.sessions = session_factory(self.engine)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=10)

    def submit(self, name: str, **spec: Any) -> int:
        body = {"spec": {"method": {"name": "rotation"}, "data": {"dataset": "digits"}, "epochs": 2, **spec},
                "name": name, "tags": ["ui-test"]}
        r = self.http.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def job(self, job_id: int) -> dict[str, Any]:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def claim(self, job_id: int) -> JobLease:
        lease = claim(self.sessions, job_id, "ui-test-worker", lease_seconds=600)
        assert lease is not None
        return lease

    @staticmethod
    def progress(lease: JobLease, step: int, total: int) -> None:
        with lease.guarded(progress={"epoch": 0, "step": step, "total_steps": total, "images_per_sec": 512.0,
                                     "eta_s": float(total - step)}):
            pass

    def metrics(self, job_id: int, name: str, values: list[float]) -> None:
        with self.sessions() as s, s.begin():
            write_metrics(s, job_id, [{"name": name, "step": i, "value": v, "epoch": 0}
                                      for i, v in enumerate(values)])

    def close(self) -> None:
        self.http.close()
        self.proc.stop()
        self.engine.dispose()


def chrome() -> Any:
    """Headless Chromium; skipped locally (failed in CI) when the browser or Selenium is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[test]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None or not Path(CHROMEDRIVER).exists():
        unavailable("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    # The system driver: Selenium Manager would try to download one, which fails offline.
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
