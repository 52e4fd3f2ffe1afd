"""The Celery app's settings for long GPU jobs, the tasks it registers, and serve's schema check."""

from __future__ import annotations

import sys

import pytest


def test_celery_app_settings_for_long_jobs():
    from api.settings import Settings
    from worker.celery_app import make_app

    app = make_app(Settings(broker_url="redis://127.0.0.1:1/0", visibility_timeout=7, reconcile_seconds=4))
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_concurrency == 1
    assert conf.broker_transport_options["visibility_timeout"] == 7
    assert {q.name for q in conf.task_queues} >= {"gpu", "cpu"}
    beat = conf.beat_schedule["reconcile"]
    assert beat["task"] == "pretextlab.reconcile" and beat["schedule"] == 4.0
    assert beat["options"]["expires"] == 4.0  # never piles up behind long jobs


def test_tasks_registered_and_no_torch_at_import():
    import subprocess

    from worker.celery_app import app

    import worker.tasks  # noqa: F401

    assert {"pretextlab.run_job", "pretextlab.reconcile"} <= set(app.tasks)
    code = ("import sys, worker.tasks, worker.runner, worker.local, worker.serve, worker.reconciler; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "a worker module imports torch at load"


def test_serve_refuses_an_unmigrated_database(sqlite_url):
    from api.settings import Settings
    from worker.serve import SchemaNotReady, check_schema

    with pytest.raises(SchemaNotReady, match="pretextlab db upgrade"):
        check_schema(Settings(database_url=sqlite_url))
