"""The `pretextlab` console script.

    pretextlab serve                 API + embedded local worker + reconciler (SQLite by default)
    pretextlab worker                a Celery worker (needs PRETEXTLAB_BROKER_URL)
    pretextlab db upgrade            apply Alembic migrations (and create the app role, see api.db.roles)
    pretextlab db prune              retention: old finished jobs' metrics/artifacts, deleted jobs' folders
    pretextlab token create|list|revoke   named API tokens, stored hashed
    pretextlab data prepare NAME     put a dataset where the loaders read it (offline where possible)
    pretextlab train SPEC.json ...   a pretraining run, locally, no server
    pretextlab evaluate ...          evaluate a backbone (kNN, linear probe, fine-tune)
    pretextlab submit | jobs | show | logs | cancel | download   drive a remote server (pretextlab.cli_remote)
    pretextlab suite run PRESET_OR_FILE | table ID                a comparison on a server (pretextlab.cli_suites)

Each subcommand imports what it needs when it runs, so `pretextlab db upgrade` never loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Idle OpenMP threads sleep instead of spinning. It must be in the environment before torch
# loads its OpenMP runtime, hence here, before any subcommand imports torch. On a CPU shared
# with other work (DataLoader workers, the API, another job) spinning threads slowed the
# batched augmentation more than tenfold (docs/performance.md). An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Remote commands (pretextlab.cli_remote), talking to a server over HTTP.
REMOTE = {
    "submit": "submit a job to a server: pretextlab submit SPEC.json [--name --tag --set k=v] [--wait]",
    "jobs": "list a server's jobs: pretextlab jobs [--status S]",
    "show": "one job of a server: pretextlab show ID",
    "logs": "a job's history and progress: pretextlab logs ID [--follow]",
    "cancel": "cancel a job on a server: pretextlab cancel ID",
    "download": "download a job's artifacts: pretextlab download ID [NAME]",
    "suite": "suites on a server: pretextlab suite run PRESET_OR_FILE [--scale cpu] | table ID | show | cancel",
}
# Subcommands whose own parser lives in ssl_core.cli or pretextlab.cli_remote: their arguments are passed through.
PASSTHROUGH = {
    "train": "ssl_core.cli:train_main",
    "evaluate": "ssl_core.cli:evaluate_main",
    "data": "ssl_core.cli:data_main",
    **{name: f"pretextlab.cli_remote:{name}_main" for name in REMOTE if name != "suite"},
    "suite": "pretextlab.cli_suites:suite_main",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pretextlab", description="Self-supervised pretraining as a service.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the API with an embedded local worker (or a Celery dispatcher)")
    serve.add_argument("--host", help="bind address (default PRETEXTLAB_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default PRETEXTLAB_PORT, 8000)")
    serve.add_argument("--local-workers", type=int, help="embedded workers when no broker is set (default 1)")

    worker = sub.add_parser("worker", help="run a Celery worker (PRETEXTLAB_BROKER_URL must be set)")
    worker.add_argument("--queues", default=None, help="comma-separated queues (default PRETEXTLAB_WORKER_QUEUES)")
    worker.add_argument("--concurrency", type=int, default=1, help="CPU slots when no GPU is visible (see --slots)")
    worker.add_argument("--gpus", default=None, help="GPUs this worker owns: 0,1,2,3 or all (default: every visible GPU)")
    worker.add_argument("--slots", type=int, default=None, help="CPU slots instead of GPUs (a host without GPUs)")
    worker.add_argument("--hostname", default=None, help="Celery node name")
    worker.add_argument("--beat", action="store_true", help="also run the reconciler beat (exactly one per deployment)")

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db_sub.add_parser("upgrade", help="apply migrations up to head (and create an S3 artifact bucket)")
    up.add_argument("--url", help="database URL (default PRETEXTLAB_DATABASE_URL)")
    from worker.admin import add_parsers

    add_parsers(sub, db_sub)

    for name, help_text in (
        ("train", "pretrain locally: pretextlab train SPEC.json --out DIR [--set key=value ...] [--resume]"),
        ("evaluate", "evaluate a backbone: pretextlab evaluate --weights PATH --protocol knn|linear|finetune"),
        ("data", "datasets: pretextlab data prepare NAME | pretextlab data list"),
        *REMOTE.items(),
    ):
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _call(target: str, argv: list[str]) -> int:
    module, func = target.split(":")
    return int(getattr(importlib.import_module(module), func)(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        return _call(PASSTHROUGH[argv[0]], argv[1:])
    args = build_parser().parse_args(argv)

    from api.settings import get_settings

    settings = get_settings()
    if args.command == "token" or (args.command == "db" and args.db_command == "prune"):
        from worker.admin import prune_main, token_main

        return (token_main if args.command == "token" else prune_main)(args, settings)
    if args.command == "db":
        from api.db.roles import APP_ROLE, ensure_app_role
        from api.db.session import upgrade

        url = args.url or settings.database_url
        upgrade(url)
        print(f"database at head: {_redact(url)}")
        store = settings.artifact_store()  # an S3 artifact store: its bucket is created here (the migrate step)
        if store.remote and store.ensure_bucket():
            print(f"artifact bucket created: {store.url}")
        if settings.db_app_password is not None and ensure_app_role(url, settings.db_app_password.get_secret_value()):
            print(f"role {APP_ROLE} ready (PRETEXTLAB_DB_APP_PASSWORD)")
        return 0
    if args.command == "serve":
        from worker.serve import serve

        overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                       ("local_workers", args.local_workers)) if v is not None}
        serve(settings.model_copy(update=overrides) if overrides else settings)
        return 0
    if args.command == "worker":
        if not settings.broker_url:
            print("pretextlab worker needs PRETEXTLAB_BROKER_URL (e.g. redis://localhost:6379/0); "
                  "without a broker, `pretextlab serve` runs an embedded worker", file=sys.stderr)
            return 2
        from worker.celery_app import run_worker
        from worker.slots import resolve_slots

        queues = [q.strip() for q in (args.queues or settings.worker_queues).split(",") if q.strip()]
        try:
            gpus = args.gpus or (None if args.slots else settings.worker_gpus or None)
            slots = resolve_slots(gpus, args.slots, default_slots=args.concurrency)
        except ValueError as exc:
            print(f"pretextlab worker: {exc}", file=sys.stderr)
            return 2
        run_worker(queues, concurrency=args.concurrency, hostname=args.hostname, beat=args.beat, slots=slots)
        return 0
    return 2


def _redact(url: str) -> str:
    """Hide the passwords in a database URL (user:pw@ and ?password=) before printing it."""
    from api.redact import redact

    return redact(url)


if __name__ == "__main__":
    raise SystemExit(main())
