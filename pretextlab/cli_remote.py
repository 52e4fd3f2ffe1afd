"""The remote commands of the `pretextlab` console script: drive a server from a shell.

    pretextlab submit SPEC.json [--name N] [--tag T ...] [--set dotted.key=value ...] [--wait]
    pretextlab jobs [--status S] [--kind K] [--method M] [--dataset D] [--tag T] [--limit N]
    pretextlab show ID
    pretextlab logs ID [--follow]
    pretextlab cancel ID
    pretextlab download ID [NAME] [-o PATH]

The server and token come from ``--server``/``--token``, else ``PRETEXTLAB_URL``/``PRETEXTLAB_TOKEN``.
``--json`` prints the API's JSON instead of a table. ``--set`` parses exactly as in
``pretextlab train`` (ssl_core.cli), and a spec is checked here before it is sent.

Exit status: 0 ok, 2 bad input (a refused spec or argument), 3 not found, 4 authentication,
1 anything else (server error, unreachable server, a job that failed under ``--wait``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from pretextlab.client import FINAL_STATUSES, Client
from pretextlab.errors import ApiError, AuthError, BadRequest, NotFound, PretextlabError

EXIT_OK, EXIT_OTHER, EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_AUTH = 0, 1, 2, 3, 4


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"pretextlab {prog}", description=description)
    p.add_argument("--server", help="server URL (default PRETEXTLAB_URL, else http://127.0.0.1:8000)")
    p.add_argument("--token", help="API token (default PRETEXTLAB_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    return p


def _client(args: argparse.Namespace) -> Client:
    return Client(args.server, token=args.token)


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, BadRequest):  # 400, 413, 422
        return EXIT_BAD_INPUT
    if isinstance(exc, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, AuthError):
        return EXIT_AUTH
    if isinstance(exc, (ValueError, TypeError)):  # local bad input: a spec file, a --set
        return EXIT_BAD_INPUT
    return EXIT_OTHER


def _report(exc: BaseException) -> None:
    print(f"error: {exc}", file=sys.stderr)
    if isinstance(exc, ApiError) and isinstance(exc.details, list):
        for d in exc.details:
            if isinstance(d, dict) and "loc" in d:
                print(f"  {d['loc']}: {d.get('msg', '')}", file=sys.stderr)


def _run(body: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: list[str]) -> int:
    args = parser.parse_args(argv)
    try:
        return body(args)
    except (PretextlabError, ValueError, TypeError) as exc:
        _report(exc)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


# -- rendering ----------------------------------------------------------------------------------
def progress_text(job: dict[str, Any]) -> str:
    prog = job.get("progress") or {}
    step, total = prog.get("step"), prog.get("total_steps")
    if step is None or not total:
        return "-"
    return f"{step}/{total} {100 * step // total}%"


def job_line(job: dict[str, Any]) -> str:
    created = (job.get("created_at") or "")[:19].replace("T", " ")
    return (f"{job['id']:>6}  {job['status']:<10}  {job['kind']:<8}  {job.get('method') or '-':<18}  "
            f"{job.get('dataset') or '-':<14}  {progress_text(job):<14}  {created:<19}  {job.get('name') or ''}")


JOBS_HEADER = (f"{'ID':>6}  {'STATUS':<10}  {'KIND':<8}  {'METHOD':<18}  {'DATASET':<14}  {'PROGRESS':<14}  "
               f"{'CREATED':<19}  NAME")


def event_line(e: dict[str, Any]) -> str:
    who = f" by {e['actor']}" if e.get("actor") else ""
    why = f": {e['reason']}" if e.get("reason") else ""
    return f"{e['at'][:19].replace('T', ' ')}  {e.get('from_status') or '-'} -> {e['to_status']}" \
           f"  (attempt {e['attempt']}{who}){why}"


def progress_line(job: dict[str, Any]) -> str:
    prog = job.get("progress") or {}
    parts = [f"job {job['id']} {job['status']}"]
    if prog.get("epoch") is not None:
        parts.append(f"epoch {prog['epoch']}")
    if prog.get("step") is not None:
        parts.append(f"step {prog['step']}/{prog.get('total_steps') or '?'}")
    if prog.get("images_per_sec") is not None:
        parts.append(f"{prog['images_per_sec']:.0f} img/s")
    if prog.get("eta_s") is not None and job["status"] == "running":
        parts.append(f"eta {prog['eta_s']:.0f}s")
    return "  ".join(parts)


def show_text(job: dict[str, Any]) -> str:
    rows = [("job", job["id"]), ("name", job.get("name")), ("status", job["status"]), ("kind", job["kind"]),
            ("method", job.get("method")), ("dataset", job.get("dataset")), ("protocol", job.get("protocol")),
            ("tags", ", ".join(job.get("tags") or []) or None), ("attempt", f"{job['attempt']}/{job['max_attempts']}"),
            ("progress", progress_text(job)), ("artifacts", job.get("artifacts")), ("created", job.get("created_at")),
            ("started", job.get("started_at")), ("finished", job.get("finished_at")), ("top1", job.get("top1")),
            ("error", job.get("error"))]
    lines = [f"{k:<10} {v}" for k, v in rows if v is not None]
    if job.get("result"):
        lines.append("result     " + json.dumps(job["result"], indent=2).replace("\n", "\n           "))
    return "\n".join(lines)


# -- commands -------------------------------------------------------------------------------------
def build_spec(raw: Any, sets: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides as ``pretextlab train`` does and validate the spec locally, so a
    mistake is named before anything is sent. A pretraining spec goes out with its method's recipe
    filled in (what the server would store anyway), so ``--set optim.lr=...`` tunes the paper's
    optimizer here exactly as it does for a local run."""
    from ssl_core.cli import build_pretrain_spec, parse_sets, set_path
    from ssl_core.specs import EvaluateSpec

    if not isinstance(raw, dict):
        raise ValueError("a spec must be a JSON object")
    kind = raw.get("kind", "pretrain")
    if kind == "pretrain":
        return build_pretrain_spec(raw, sets).model_dump(mode="json")
    if kind != "evaluate":
        raise ValueError(f"kind: expected 'pretrain' or 'evaluate', got {kind!r}")
    raw = json.loads(json.dumps(raw))
    for keys, value in parse_sets(sets):
        set_path(raw, keys, value)
    EvaluateSpec.model_validate(raw)
    return raw


def _spec_from_file(path: Path, sets: list[str]) -> dict[str, Any] | int:
    from pydantic import ValidationError

    from ssl_core.cli import format_validation_error

    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"cannot read spec {path}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return build_spec(raw, sets)
    except ValidationError as e:
        print(format_validation_error(e), file=sys.stderr)
    except ValueError as e:
        print(f"invalid spec: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _submit(args: argparse.Namespace) -> int:
    spec = _spec_from_file(args.spec, args.sets)
    if isinstance(spec, int):
        return spec
    with _client(args) as client:
        job = client.submit(spec, name=args.name, tags=args.tags or None, priority=args.priority,
                            idempotency_key=args.idempotency_key)
        if not args.json:
            print(f"submitted job {job['id']} ({job['status']})", file=sys.stderr)
        if args.wait:
            job = client.wait(job["id"], timeout=args.timeout, progress=not args.no_progress)
        if args.json:
            _print_json(job)
        else:
            print(job["id"] if not args.wait else f"job {job['id']} {job['status']}")
            if args.wait and job.get("error"):
                print(f"error: {job['error']}", file=sys.stderr)
    return EXIT_OK if not args.wait or job["status"] == "succeeded" else EXIT_OTHER


def submit_main(argv: list[str]) -> int:
    p = _parser("submit", "Submit a job to a pretextlab server.")
    p.add_argument("spec", type=Path, help="a job spec (JSON): pretraining, or evaluation with kind=evaluate")
    p.add_argument("--name", help="a name for the job")
    p.add_argument("--tag", dest="tags", action="append", default=[], help="a tag (repeat for several)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, as in `pretextlab train`, e.g. --set epochs=5")
    p.add_argument("--priority", type=int, help="higher runs first (embedded worker)")
    p.add_argument("--idempotency-key", help="resubmitting with the same key returns the same job")
    p.add_argument("--wait", action="store_true", help="follow the job to its end; exit 1 unless it succeeded")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds (exit 1)")
    p.add_argument("--no-progress", action="store_true", help="with --wait: no progress bar")
    return _run(_submit, p, argv)


def _jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        items = client.jobs(status=args.status, kind=args.kind, method=args.method, dataset=args.dataset,
                            tag=args.tag, limit=args.limit)
    if args.json:
        _print_json(items)
    else:
        print(JOBS_HEADER)
        for job in items:
            print(job_line(job))
    return EXIT_OK


def jobs_main(argv: list[str]) -> int:
    p = _parser("jobs", "List a server's jobs, newest first.")
    p.add_argument("--status", choices=["queued", "running", "cancelling", "succeeded", "failed", "cancelled"])
    p.add_argument("--kind", choices=["pretrain", "evaluate"])
    p.add_argument("--method")
    p.add_argument("--dataset")
    p.add_argument("--tag")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    return _run(_jobs, p, argv)


def _show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.job(args.id)
    if args.json:
        _print_json(job)
    else:
        print(show_text(job))
    return EXIT_OK


def show_main(argv: list[str]) -> int:
    p = _parser("show", "One job: status, progress, result or error.")
    p.add_argument("id", type=int)
    return _run(_show, p, argv)


def _logs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        seen: set[int] = set()

        def new_events() -> None:
            for e in client.events(args.id):
                if e["id"] not in seen:
                    seen.add(e["id"])
                    print(json.dumps(e) if args.json else event_line(e), flush=True)

        new_events()
        if not args.follow:
            return EXIT_OK
        status = None
        for job in client.watch(args.id):
            if job["status"] != status:
                status = job["status"]
                new_events()
            if not args.json and job.get("progress") and job["status"] not in FINAL_STATUSES:
                print(progress_line(job), flush=True)
        if job.get("error"):
            print(f"error: {job['error']}", flush=True)
    return EXIT_OK


def logs_main(argv: list[str]) -> int:
    p = _parser("logs", "A job's status history; --follow then prints its progress until it ends.")
    p.add_argument("id", type=int)
    p.add_argument("--follow", "-f", action="store_true", help="keep following until the job ends")
    return _run(_logs, p, argv)


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.id)
    if args.json:
        _print_json(job)
    else:
        print(f"job {job['id']} {job['status']}")
    return EXIT_OK


def cancel_main(argv: list[str]) -> int:
    p = _parser("cancel", "Cancel a queued or running job.")
    p.add_argument("id", type=int)
    return _run(_cancel, p, argv)


def _download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.name is not None:
            saved = [client.download(args.id, args.name, args.output)]
        else:  # every artifact, under its own relative name
            folder = Path(args.output or f"job-{args.id}")
            saved = [client.download(args.id, a["name"], folder / a["name"]) for a in client.artifacts(args.id)]
    for path in saved:
        print(path)
    return EXIT_OK


def download_main(argv: list[str]) -> int:
    p = _parser("download", "Download a job's artifact (or, without NAME, all of them).")
    p.add_argument("id", type=int)
    p.add_argument("name", nargs="?", help="artifact name, e.g. backbone.safetensors (see `pretextlab show`)")
    p.add_argument("-o", "--output", help="file or folder to write to (default: here; all: ./job-ID/)")
    return _run(_download, p, argv)
