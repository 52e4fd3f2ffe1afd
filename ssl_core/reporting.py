"""How the training and evaluation loops report: metrics, progress, artifacts, stop requests.

The loop only knows the :class:`Sink` protocol. The worker passes a SQL-backed sink
(metrics rows, heartbeats, the cancel flag); the CLI passes :class:`JsonlSink` (or a
progress-bar sink); tests pass :class:`NullSink` or a list-collecting sink.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Protocol, TextIO, runtime_checkable


@runtime_checkable
class Sink(Protocol):
    def metrics(self, step: int, values: dict[str, float], epoch: int | None = None) -> None: ...

    def progress(self, *, epoch: int, step: int, total_steps: int, images_per_sec: float, eta_s: float | None) -> None: ...

    def artifact(self, name: str, path: Path, kind: str) -> None:  # kind: checkpoint | backbone | result
        ...

    def should_stop(self) -> bool: ...

    def flush(self) -> None: ...


class NullSink:
    """Reports nowhere and never asks to stop."""

    def metrics(self, step: int, values: dict[str, float], epoch: int | None = None) -> None:
        pass

    def progress(self, *, epoch: int, step: int, total_steps: int, images_per_sec: float, eta_s: float | None) -> None:
        pass

    def artifact(self, name: str, path: Path, kind: str) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def flush(self) -> None:
        pass


def _json_float(v: float) -> float | None:
    # JSON has no NaN/Inf; a diverged metric is written as null rather than an invalid file.
    v = float(v)
    return v if math.isfinite(v) else None


class JsonlSink(NullSink):
    """Appends one JSON object per event to ``out_dir/metrics.jsonl`` and echoes a short line.

    Lines: ``{"type": "metrics", "step", "epoch", "values", "time"}``, ``{"type": "artifact", ...}``;
    progress is echoed only (it is derivable from the metrics).
    """

    def __init__(self, out_dir: Path | str, echo: bool = True, stream: TextIO | None = None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.stream = stream  # None = sys.stdout at print time (so pytest's capture sees it)
        self._fh = open(self.path, "a", encoding="utf-8")

    def _write(self, obj: dict) -> None:
        self._fh.write(json.dumps(obj) + "\n")

    def metrics(self, step: int, values: dict[str, float], epoch: int | None = None) -> None:
        vals = {k: _json_float(v) for k, v in values.items()}
        self._write({"type": "metrics", "step": int(step), "epoch": epoch, "values": vals, "time": time.time()})
        if self.echo:
            body = " ".join(f"{k}={v:.4g}" if v is not None else f"{k}=nan" for k, v in vals.items())
            ep = f"epoch {epoch} " if epoch is not None else ""
            print(f"{ep}step {step}: {body}", file=self.stream or sys.stdout, flush=True)

    def progress(self, *, epoch: int, step: int, total_steps: int, images_per_sec: float, eta_s: float | None) -> None:
        if self.echo:
            eta = f"{eta_s:.0f}s" if eta_s is not None else "?"
            print(f"epoch {epoch} step {step}/{total_steps} {images_per_sec:.0f} img/s eta {eta}",
                  file=self.stream or sys.stdout, flush=True)

    def artifact(self, name: str, path: Path, kind: str) -> None:
        self._write({"type": "artifact", "name": name, "path": str(path), "kind": kind, "time": time.time()})
        if self.echo:
            print(f"{kind}: {path}", file=self.stream or sys.stdout, flush=True)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __del__(self) -> None:  # best effort: a sink left open still lands its lines
        try:
            self.close()
        except Exception:
            pass
