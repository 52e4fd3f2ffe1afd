"""The import and layout rules of ARCHITECTURE.md and docs/internals.md.

Checked in fresh interpreters:
- the API (and ssl_core.specs, which it validates with) never loads torch;
- the training engine never loads fastapi, sqlalchemy or celery;
- worker modules load torch only inside the task, never at import.

Read from the source (ast), each failure listing file:line of every offender:
- no select/update/insert/delete statement outside api/db/ (api, worker, benchmarks);
- worker/ imports from api only api.db, api.settings, api.dispatch, at module top (worker/serve.py
  may also import api.main; worker/cli.py may import inside its per-subcommand functions);
- no module in ssl_core/, api/, worker/ over ~500 lines, no function there over 80 lines;
- each of those modules opens with a docstring, and no comment or docstring cites an issue number.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
import tokenize
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


@pytest.mark.parametrize("module", ["api.main", "api.db.jobs", "api.db.leases", "api.db.metrics",
                                   "api.db.listing", "api.db.artifacts", "api.db.session", "api.dispatch", "ssl_core.specs",
                                   "ssl_core"])
def test_api_side_never_loads_torch(module):
    assert loaded_after_import(module, HEAVY_FOR_API) == []


# The client and the remote CLI run on a laptop or in a notebook: httpx, not the server nor torch.
@pytest.mark.parametrize("module", ["pretextlab.client", "pretextlab.cli_remote", "pretextlab.progress"])
def test_client_loads_neither_torch_nor_the_server(module):
    assert loaded_after_import(module, HEAVY_FOR_API + SERVICE_LIBS) == []


# Every ssl_core module that the trainer and evaluator are built from.
ENGINE_MODULES = ["ssl_core.train", "ssl_core.evaluate", "ssl_core.registry", "ssl_core.reporting"]


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_engine_never_loads_service_libraries(module):
    assert loaded_after_import(module, SERVICE_LIBS) == []


# Worker modules listed explicitly: each must import without torch.
WORKER_MODULES = ["worker.celery_app", "worker.tasks", "worker.runner", "worker.reconciler", "worker.local",
                  "worker.cli", "worker.serve", "worker.sink"]


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


# -- static rules, read from the source with ast ----------------------------------------------
# The job store's statements live in api/db/; the worker reaches the API side only through a few
# modules, loaded at import; modules and functions stay small enough to hold; each module says
# what it is for; comments explain the code, not the history of the issues that changed it.

PACKAGES = ("ssl_core", "api", "worker", "pretextlab")
MAX_MODULE_LINES = 520  # ~500, with a small margin
MAX_FUNCTION_LINES = 80
SQL_STATEMENTS = {"select", "update", "insert", "delete"}
WORKER_MAY_IMPORT = ("api.db", "api.settings", "api.dispatch", "api.redact")  # api.redact: plain string work
WORKER_EXTRA_IMPORTS = {"worker/serve.py": ("api.main",)}  # the embedded server composes the API app
WORKER_LAZY_IMPORTS_ALLOWED = {"worker/cli.py"}  # the console dispatcher loads per subcommand
ISSUE_NUMBER = re.compile(r"\b[Ii]ssues?\s*#?\d+")
SECTION = re.compile(r"§\s*\d")
# a section of a paper is fine: "SimCLR §2.1", "He et al. 2020, §3.3", "the paper §3.3"
PAPER_BEFORE_SECTION = re.compile(r"(\bpaper|\b\d{4},?|\b[A-Z][a-z]*[A-Z]\w*)\s*$")


def python_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def in_package(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def sql_statement_calls(tree: ast.Module) -> list[tuple[int, str]]:
    """Calls of sqlalchemy's select/update/insert/delete, imported by name (``select(...)``) or
    reached through a sqlalchemy module (``sa.select(...)``, ``postgresql.insert(...)``)."""
    statements: set[str] = set()  # local names of the statement functions
    modules: set[str] = set()  # local names of sqlalchemy modules
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names if in_package(a.name, ("sqlalchemy",))}
        elif isinstance(node, ast.ImportFrom) and not node.level and in_package(node.module or "", ("sqlalchemy",)):
            for a in node.names:
                if a.name in SQL_STATEMENTS:
                    statements.add(a.asname or a.name)
                elif is_module(f"{node.module}.{a.name}"):  # from sqlalchemy.dialects import postgresql
                    modules.add(a.asname or a.name)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        by_name = isinstance(f, ast.Name) and f.id in statements
        # the module may sit behind attributes or an expression: (postgresql if pg else sqlite).insert(...)
        by_module = isinstance(f, ast.Attribute) and f.attr in SQL_STATEMENTS and \
            any(isinstance(n, ast.Name) and n.id in modules for n in ast.walk(f.value))
        if by_name or by_module:
            found.append((node.lineno, ast.unparse(f) + "("))
    return sorted(found)


def lines_inside_functions(tree: ast.Module) -> set[int]:
    return {n.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}


def api_modules_loaded(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The api modules an import statement loads: ``from api import crud`` -> ``api.crud``,
    ``from api.db.jobs import claim`` -> ``api.db.jobs``."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if in_package(a.name, ("api",))]
    if node.level or not in_package(node.module or "", ("api",)):
        return []
    if node.module == "api":
        return [f"api.{a.name}" for a in node.names]
    return [node.module]


def worker_import_offenders(name: str, tree: ast.Module) -> list[str]:
    allowed = WORKER_MAY_IMPORT + WORKER_EXTRA_IMPORTS.get(name, ())
    lazy_ok = name in WORKER_LAZY_IMPORTS_ALLOWED
    inside = lines_inside_functions(tree)
    offenders = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or not (loaded := api_modules_loaded(node)):
            continue
        if not all(in_package(m, allowed) for m in loaded):
            offenders.append(f"{name}:{node.lineno}: {ast.unparse(node)} (only {', '.join(allowed)})")
        elif node.lineno in inside and not lazy_ok:
            offenders.append(f"{name}:{node.lineno}: {ast.unparse(node)} (inside a function)")
    return sorted(offenders, key=lambda o: int(o.split(":")[1]))


def issue_reference(text: str) -> bool:
    return bool(ISSUE_NUMBER.search(text)) or any(not PAPER_BEFORE_SECTION.search(text[:m.start()])
                                                  for m in SECTION.finditer(text))


def comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    with open(path, "rb") as f:
        texts = [(t.start[0], t.string) for t in tokenize.tokenize(f.readline) if t.type == tokenize.COMMENT]
    for node in ast.walk(parse(path)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                texts += [(node.body[0].lineno + i, line) for i, line in enumerate(doc.splitlines())]
    return sorted(texts)


def test_sql_statements_only_in_the_job_store():
    offenders = [f"{rel(p)}:{line}: {call}"
                 for p in python_files("api", "worker", "benchmarks") if not rel(p).startswith("api/db/")
                 for line, call in sql_statement_calls(parse(p))]
    assert not offenders, "select/update/insert/delete outside api/db/:\n" + "\n".join(offenders)


def test_worker_imports_from_api_only_the_store_settings_and_dispatch_at_module_top():
    offenders = [o for p in python_files("worker") for o in worker_import_offenders(rel(p), parse(p))]
    assert not offenders, "worker imports from api:\n" + "\n".join(offenders)


def test_modules_and_functions_stay_small():
    offenders = []
    for path in python_files(*PACKAGES):
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            offenders.append(f"{rel(path)}: {lines} lines (max {MAX_MODULE_LINES})")
        functions = [n for n in ast.walk(parse(path)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for f in sorted(functions, key=lambda f: f.lineno):
            if (n := f.end_lineno - f.lineno + 1) > MAX_FUNCTION_LINES:
                offenders.append(f"{rel(path)}:{f.lineno}: {f.name}() {n} lines (max {MAX_FUNCTION_LINES})")
    assert not offenders, "too long:\n" + "\n".join(offenders)


def test_every_module_opens_with_a_docstring():
    offenders = [rel(p) for p in python_files(*PACKAGES) if ast.get_docstring(parse(p)) is None]
    assert not offenders, "modules without a docstring saying what they are for:\n" + "\n".join(offenders)


def test_no_issue_references_in_comments_or_docstrings():
    offenders = [f"{rel(p)}:{line}: {text.strip()}" for p in python_files(*PACKAGES)
                 for line, text in comments_and_docstrings(p) if issue_reference(text)]
    assert not offenders, "issue references (say what the code does and why instead):\n" + "\n".join(offenders)


# -- the checkers themselves, on snippets: a rule that finds nothing must mean nothing is there --
def test_sql_checker_finds_statements_however_imported():
    tree = ast.parse(
        "import sqlalchemy as sa\nfrom sqlalchemy import select as sel, func\n"
        "from sqlalchemy.dialects import postgresql\nfrom sqlalchemy.dialects.sqlite import insert\n"
        "a = sa.select(Job)\nb = sel(Job.id)\nc = postgresql.insert(Job)\nd = insert(Job)\n"
        "e = sa.dialects.postgresql.insert(Job)\nf = sa.update(Job).where(Job.id == 1)\n"
        "g = (postgresql if pg else sa.dialects.sqlite).insert(Metric)\n"
        "counts.update(x)\nfunc.count()\nsa.text('DELETE FROM jobs')\nsys.path.insert(0, root)\n")
    assert [line for line, _ in sql_statement_calls(tree)] == [5, 6, 7, 8, 9, 10, 11]


def test_worker_import_checker():
    tree = ast.parse(
        "from api.db import jobs\nimport api.settings\nfrom api import dispatch, settings\nfrom api import crud\n"
        "import api.main\nfrom api.security import check\nfrom .runner import claim\n"
        "def f():\n    from api.db.session import make_engine\n    import ssl_core.train\n")
    assert [o.split(":")[1] for o in worker_import_offenders("worker/x.py", tree)] == ["4", "5", "6", "9"]
    assert [o.split(":")[1] for o in worker_import_offenders("worker/serve.py", tree)] == ["4", "6", "9"]
    assert [o.split(":")[1] for o in worker_import_offenders("worker/cli.py", tree)] == ["4", "5", "6"]


@pytest.mark.parametrize("text, found", [
    ("# Issue 7 §2: the sink never blocks", True), ("see issue #12", True), ("(issues 3 and 4)", True),
    ("# §3: lease expiry", True), ("SimCLR §2.1 uses h", False), ("(He et al. 2020, §3.3)", False),
    ("paper §3.3", False), ("an issue with the lease", False),
])
def test_issue_reference_pattern(text, found):
    assert issue_reference(text) is found
