"""The import rules of ARCHITECTURE.md, checked in fresh interpreters.

- the API (and ssl_core.specs, which it validates with) never loads torch;
- the training engine never loads fastapi, sqlalchemy or celery;
- worker modules load torch only inside the task, never at import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY_FOR_API = ["torch", "torchvision"]
SERVICE_LIBS = ["fastapi", "sqlalchemy", "celery", "starlette", "alembic", "kombu"]


def loaded_after_import(module: str, watch: list[str]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(json.dumps(sorted(m for m in {watch!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"import {module} failed:\n{out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["api.main", "api.crud", "api.db.session", "api.dispatch", "ssl_core.specs",
                                   "ssl_core"])
def test_api_side_never_loads_torch(module):
    assert loaded_after_import(module, HEAVY_FOR_API) == []


# Every ssl_core module that the trainer and evaluator are built from.
ENGINE_MODULES = ["ssl_core.train", "ssl_core.evaluate", "ssl_core.registry", "ssl_core.reporting"]


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_engine_never_loads_service_libraries(module):
    assert loaded_after_import(module, SERVICE_LIBS) == []


# Worker modules listed explicitly: each must import without torch.
WORKER_MODULES = ["worker.celery_app", "worker.tasks", "worker.runner", "worker.reconciler", "worker.local",
                  "worker.cli"]


@pytest.mark.parametrize("module", WORKER_MODULES)
def test_worker_modules_load_torch_only_inside_the_task(module):
    assert loaded_after_import(module, HEAVY_FOR_API) == []


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_console_script_sets_passive_openmp_before_torch_loads(preset, expected):
    # the policy is read when torch loads its OpenMP runtime: worker.cli (the console script)
    # must set it at import, and it must not have loaded torch by then (see above)
    import os

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    code = "import os, sys, worker.cli; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [expected, "False"]
