"""Regenerate the dashboard screenshots in docs/img/ (jobs list, a job page, a comparison).

Serves a throwaway SQLite store, submits a few jobs through the API, plays their worker through the
job store's functions (claim, progress, metric points shaped like a real SimCLR run), then has
headless Chromium (chromium + chromium-driver) photograph three pages; PNGs are quantised to stay small.

    python benchmarks/ui_screenshots.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "ui")]

from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from api.db.metrics import write_metrics  # noqa: E402
from ui_harness import Server, chrome  # noqa: E402

STEPS = 1170  # 6 epochs of 195 steps


def curves(rng: random.Random, lr: float, temp: float, upto: int) -> dict[str, list[float]]:
    warm = 195
    out: dict[str, list[float]] = {"train/loss": [], "train/lr": [], "train/images_per_sec": []}
    for s in range(upto):
        out["train/loss"].append(6.2 - (1.6 + 4 * temp) * (1 - math.exp(-s / 300)) + rng.gauss(0, 0.06))
        f = s / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (STEPS - warm)))
        out["train/lr"].append(lr * f)
        out["train/images_per_sec"].append(820 + rng.gauss(0, 25) - (300 if s % 195 == 0 else 0))
    out["monitor/knn_top1"] = [0.45 + (0.27 - temp * 0.2) * (1 - math.exp(-e / 2)) for e in range(upto // 195)]
    return out


def populate(server: Server) -> dict[str, int]:
    rng = random.Random(0)
    ids = {}
    for name, lr, temp, done in (("simclr-t0.5", 0.3, 0.5, STEPS), ("simclr-t0.2", 0.3, 0.2, STEPS),
                                 ("simclr-lr0.6", 0.6, 0.2, 700)):
        job = server.submit(name, method={"name": "simclr", "temperature": temp}, optim={"lr": lr},
                            data={"dataset": "fashion_mnist", "subset": 10000}, epochs=6, batch_size=256)
        lease = server.claim(job)
        for metric, values in curves(rng, lr, temp, done).items():
            if metric == "monitor/knn_top1":
                with server.sessions() as s, s.begin():
                    write_metrics(s, job, [{"name": metric, "step": (e + 1) * 195, "value": v, "epoch": e}
                                           for e, v in enumerate(values)])
            else:
                server.metrics(job, metric, values)
        server.progress(lease, step=done, total=STEPS)
        if done == STEPS:
            lease.finish(["running"], "succeeded", "succeeded", reason="done")
        ids[name] = job
    for i in range(3):
        server.submit(f"rotation-{i}", method={"name": "rotation"}, data={"dataset": "digits"})
    return ids


def shoot(driver, url: str, ready_css: str, path: Path) -> None:
    from PIL import Image

    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.find_elements("css selector", ready_css))
    time.sleep(1.0)  # let every chart finish drawing
    raw = path.with_suffix(".raw.png")
    driver.save_screenshot(str(raw))
    Image.open(raw).convert("RGB").quantize(colors=96).save(path, optimize=True)
    raw.unlink()
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp))
        driver = chrome()
        try:
            driver.set_window_size(1400, 860)
            ids = populate(server)
            shoot(driver, server.base + "/ui/", "#jobs tbody tr", args.out / "dashboard-jobs.png")
            shoot(driver, f"{server.base}/ui/jobs/{ids['simclr-lr0.6']}", '.chart[data-metric="train/loss"] canvas',
                  args.out / "dashboard-job.png")
            shoot(driver, f"{server.base}/ui/compare?ids={','.join(str(i) for i in ids.values())}",
                  '.chart[data-metric="monitor/knn_top1"] canvas', args.out / "dashboard-compare.png")
        finally:
            driver.quit()
            server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
