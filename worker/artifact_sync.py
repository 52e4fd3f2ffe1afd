"""Moving a job's files between this worker's scratch folder and the artifact store.

The worker writes every file locally first (``Settings.job_dir``: ARTIFACT_ROOT/jobs/<id>/), then
:class:`Publisher` stores it under the same relative name (``jobs/<id>/<name>``). With the filesystem
store the two places are the same folder and storing is a no-op: today's behaviour. With S3:

* a checkpoint is the whole ``checkpoints/`` folder (whatever files the checkpoint format writes
  there), stored file by file, each object appearing only when complete;
* an upload that fails is retried (``Settings.store_retries`` tries, with backoff, on top of the
  client's own retries); if it still fails, :class:`StoreUnavailable` reaches the sink, which stops
  the run at the next step boundary: the trainer writes its stop checkpoint locally and the job goes
  back to the queue (see ``worker.runner``) -- work is kept, never reported as stored when it is not;
* before a pretraining starts, :func:`pull_checkpoint` fetches the job's checkpoint files that are
  newer than this host's copies (another worker's progress), and keeps a local file newer than the
  stored one (written while the store was down);
* an evaluation's source backbone is fetched once into this host's scratch folder (:func:`fetch_source`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ssl_core.storage import ArtifactStore, StoreUnavailable, job_prefix

log = logging.getLogger("pretextlab.worker")

CHECKPOINT_FOLDER = "checkpoints"
MAX_BACKOFF_S = 5.0


def with_retries(what: str, fn, tries: int):
    """``fn()``, tried ``tries`` times on StoreUnavailable (backoff 0.5 s, 1 s, 2 s ... at most 5 s)."""
    for attempt in range(1, max(1, tries) + 1):
        try:
            return fn()
        except StoreUnavailable as exc:
            if attempt >= tries:
                raise
            delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1))
            log.warning("%s failed (try %s of %s), retrying in %.1fs: %s", what, attempt, tries, delay, exc)
            time.sleep(delay)


class Publisher:
    """Stores what the run writes (called by the sink before it registers an artifact in SQL)."""

    def __init__(self, store: ArtifactStore, job_id: int, job_dir: Path, tries: int = 3):
        self.store, self.job_id, self.job_dir, self.tries = store, int(job_id), Path(job_dir), tries
        self.prefix = job_prefix(job_id)

    def __call__(self, rel: str, path: Path, kind: str) -> None:
        """Store the file ``rel`` (relative to the job folder); a checkpoint stores its whole folder."""
        if not self.store.remote:
            return  # the worker wrote it into the store's folder already
        top = rel.split("/", 1)[0]
        if kind == "checkpoint" and top == CHECKPOINT_FOLDER:
            folder = self.job_dir / CHECKPOINT_FOLDER
            with_retries(f"job {self.job_id}: upload {CHECKPOINT_FOLDER}/", lambda: self.store.put_folder(
                self.prefix + CHECKPOINT_FOLDER + "/", folder), self.tries)
        else:
            with_retries(f"job {self.job_id}: upload {rel}", lambda: self.store.put_changed(self.prefix + rel, Path(path)),
                         self.tries)

    def outputs(self, names: list[str]) -> None:
        """Store the final files (idempotent: the run may have stored them already)."""
        for rel in names:
            self(rel, self.job_dir / rel, "checkpoint" if rel.startswith(CHECKPOINT_FOLDER + "/") else "file")


def pull_checkpoint(store: ArtifactStore, job_id: int, job_dir: Path, tries: int = 3) -> list[str]:
    """Fetch the job's stored checkpoint files that are newer than this host's; returns the keys fetched."""
    if not store.remote:
        return []
    prefix = job_prefix(job_id) + CHECKPOINT_FOLDER + "/"
    got = with_retries(f"job {job_id}: download {CHECKPOINT_FOLDER}/",
                       lambda: store.pull_newer(prefix, Path(job_dir) / CHECKPOINT_FOLDER), tries)
    if got:
        log.info("job %s: fetched its checkpoint from %s (%s)", job_id, store.url, ", ".join(got))
    return got


def fetch_source(store: ArtifactStore, job_id: int, name: str, local: Path, size: int, tries: int = 3) -> Path:
    """The stored file ``name`` of job ``job_id`` at ``local`` (fetched unless a copy of that size is there)."""
    if not store.remote or (local.is_file() and local.stat().st_size == size):
        return local
    key = job_prefix(job_id) + name
    with_retries(f"job {job_id}: download {name}", lambda: store.get(key, local), tries)
    return local
