"""A job's progress as a bar on stderr (tqdm), fed with the job dicts the API returns.

The server reports ``progress = {epoch, step, total_steps, images_per_sec, eta_s}``; the bar
shows the steps, its description the job, status and epoch, its postfix the throughput and ETA.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class JobProgress:
    """Show one job: call :meth:`update` with each new job state, then :meth:`close`."""

    def __init__(self, job_id: int, stream: TextIO | None = None):
        from tqdm import tqdm

        self.job_id = job_id
        self.stream = stream or sys.stderr
        self.bar = tqdm(total=None, unit="step", dynamic_ncols=True, file=self.stream, leave=True)
        self.status: str | None = None

    def update(self, job: dict[str, Any]) -> None:
        status = job.get("status")
        prog = job.get("progress") or {}
        total, step = prog.get("total_steps"), prog.get("step")
        if total and self.bar.total != total:
            self.bar.total = total
        if step is not None:
            self.bar.n = step
        epoch = f" epoch {prog['epoch']}" if prog.get("epoch") is not None else ""
        self.bar.set_description(f"job {self.job_id} {status}{epoch}", refresh=False)
        post = {}
        if prog.get("images_per_sec") is not None:
            post["img/s"] = f"{prog['images_per_sec']:.0f}"
        if prog.get("eta_s") is not None and status == "running":
            post["eta"] = _duration(prog["eta_s"])
        self.bar.set_postfix(post, refresh=False)
        if status != self.status and self.status is not None:
            self.bar.write(f"job {self.job_id}: {self.status} -> {status}", file=self.stream)
        self.status = status
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class SuiteProgress:
    """A suite's children as one bar: finished of all the jobs it will have (evaluations and sweep
    trials included), with the counts by status in the postfix."""

    def __init__(self, suite_id: int, stream: TextIO | None = None):
        from tqdm import tqdm

        self.suite_id = suite_id
        self.stream = stream or sys.stderr
        self.bar = tqdm(total=None, unit="job", dynamic_ncols=True, file=self.stream, leave=True)

    def update(self, suite: dict[str, Any]) -> None:
        counts = suite.get("counts") or {}
        self.bar.total = max(suite.get("total_jobs") or 0, sum(counts.values()))
        self.bar.n = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
        self.bar.set_description(f"suite {self.suite_id} {suite.get('status')}", refresh=False)
        self.bar.set_postfix({k: v for k, v in counts.items() if v}, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
