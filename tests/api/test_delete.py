"""DELETE /v1/jobs/{id} on SQLite and PostgreSQL: a finished job's rows and folder go; an active
job, or a pretraining with active evaluations, answers 409; a folder the API may not remove (the
compose API mounts artifacts read-only) is left to the retention sweep."""

from __future__ import annotations

import errno

from sqlalchemy import func, select

from api.db.artifacts import register_artifact
from api.db.jobs import transition
from api.db.leases import claim, end_run
from api.db.metrics import write_metrics
from api.db.models import Artifact, Job, JobEvent, JobRun, JobTombstone, Metric
import api.db.retention as retention
from api_helpers import PRETRAIN, detail_values, submit


def _finish(db, settings, job_id: int) -> None:
    """Run job ``job_id`` to success by hand: a claim, metrics, an artifact row and file."""
    lease = claim(db, job_id, "w", 30, settings.job_dir(job_id))
    folder = settings.job_dir(job_id)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"weights")
    with db() as s, s.begin():
        write_metrics(s, job_id, [{"name": "train/loss", "step": i, "value": 0.5, "epoch": 0} for i in range(1, 4)])
        register_artifact(s, job_id, "checkpoints/last.pt", "checkpoint", 7)
        assert transition(s, job_id, "running", "succeeded", owner=None)
        end_run(s, job_id, lease.attempt, "succeeded")


def _rows(db, job_id: int) -> dict[str, int]:
    with db() as s:
        return {m.__name__: s.scalar(select(func.count()).select_from(m).where(
            (m.id if m is Job else m.job_id) == job_id)) for m in (Job, JobEvent, JobRun, Metric, Artifact)}


def test_delete_removes_rows_and_files(client, settings, db):
    jid = submit(client)["id"]
    _finish(db, settings, jid)
    assert all(_rows(db, jid).values())
    r = client.delete(f"/v1/jobs/{jid}")
    assert r.status_code == 204 and r.content == b""
    assert _rows(db, jid) == {"Job": 0, "JobEvent": 0, "JobRun": 0, "Metric": 0, "Artifact": 0}
    assert not settings.job_dir(jid).exists()
    assert not any(settings.job_dir(jid).parent.iterdir())  # no trash left behind
    with db() as s:
        assert s.get(JobTombstone, jid) is None  # the folder went at once: nothing for the sweep
    assert client.get(f"/v1/jobs/{jid}").status_code == 404
    assert client.delete(f"/v1/jobs/{jid}").status_code == 404


def test_delete_of_an_active_job_is_409_naming_the_status(client, settings, db):
    queued = submit(client)["id"]
    r = client.delete(f"/v1/jobs/{queued}")
    assert r.status_code == 409 and "queued" in r.json()["error"]["message"]
    assert detail_values(r)["status"] == "queued"
    claim(db, queued, "w", 30, settings.job_dir(queued))
    r = client.delete(f"/v1/jobs/{queued}")
    assert r.status_code == 409 and detail_values(r)["status"] == "running"
    assert _rows(db, queued)["Job"] == 1


def test_delete_keeps_finished_evaluations_and_refuses_with_active_ones(client, settings, db):
    pre = submit(client)["id"]
    _finish(db, settings, pre)
    ev = submit(client, {"kind": "evaluate", "source_job_id": pre})["id"]
    r = client.delete(f"/v1/jobs/{pre}")
    assert r.status_code == 409 and detail_values(r)["dependents"] == [ev]
    with db() as s, s.begin():
        assert transition(s, ev, "queued", "cancelled")
    assert client.delete(f"/v1/jobs/{pre}").status_code == 204
    kept = client.get(f"/v1/jobs/{ev}").json()
    assert kept["status"] == "cancelled" and kept["source_job_id"] is None


def test_a_folder_the_api_cannot_remove_is_swept_later(client, settings, db, monkeypatch):
    jid = submit(client, PRETRAIN)["id"]
    _finish(db, settings, jid)

    def read_only(*_a):  # what the compose API's read-only artifacts mount answers
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(retention.os, "rename", read_only)
    assert client.delete(f"/v1/jobs/{jid}").status_code == 204
    monkeypatch.undo()
    assert _rows(db, jid)["Job"] == 0 and settings.job_dir(jid).exists()
    with db() as s:
        assert s.get(JobTombstone, jid) is not None
    report = retention.prune(db, settings.artifact_root, None)  # the reconciler's sweep
    assert report["folders_removed"] == [jid] and not settings.job_dir(jid).exists()
    with db() as s:
        assert s.get(JobTombstone, jid) is None
    assert retention.prune(db, settings.artifact_root, None)["folders_removed"] == []
