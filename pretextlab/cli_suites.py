"""`pretextlab suite`: run a comparison on a server and print its table.

    pretextlab suite run PRESET_OR_FILE [--scale cpu|gpu] [--dataset D] [--path P] [--seeds N]
                                        [--name N] [--no-wait] [--format markdown|csv|json]
    pretextlab suite table ID [--format markdown|csv|json]
    pretextlab suite show ID | cancel ID | list

``run`` takes a preset name (moco_vs_simclr, pretext_tasks) or a JSON file holding a suite request
(a grid, variants, a preset or an Optuna search: docs/api.md), submits it, follows it with a
progress bar of finished jobs, and prints the table when it is done. The server and token come from
``--server``/``--token``, else ``PRETEXTLAB_URL``/``PRETEXTLAB_TOKEN``; exit status as the other
remote commands (pretextlab.cli_remote), and 1 when the suite did not succeed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pretextlab.cli_remote import EXIT_OK, EXIT_OTHER, _client, _parser, _print_json, _run

FORMATS = ("markdown", "csv", "json")


def suite_body(target: str, args: argparse.Namespace) -> dict[str, Any]:
    """The request: a JSON file's body (options given on the command line override it), or a preset."""
    path = Path(target)
    if path.suffix == ".json" or path.is_file():
        body = json.loads(path.read_text())
        if not isinstance(body, dict):
            raise ValueError(f"{target}: a suite request is a JSON object")
    else:  # a preset's name; the server refuses an unknown one, naming the field
        body = {"preset": target}
    for key in ("scale", "dataset", "path", "seeds", "name"):
        value = getattr(args, key, None)
        if value is not None:
            body[key] = value
    return body


def _print_table(client: Any, suite_id: int, fmt: str) -> None:
    table = client.suite_table(suite_id, format=fmt)
    if fmt == "json":
        _print_json(table)
    else:
        print(table, end="")


def _suite_run(args: argparse.Namespace) -> int:
    with _client(args) as client:
        suite = client.submit_suite(suite_body(args.target, args), idempotency_key=args.idempotency_key)
        print(f"suite {suite['id']}: {suite['total_jobs']} jobs ({len(suite.get('variants') or [])} rows)")
        if args.no_wait:
            return EXIT_OK
        suite = client.wait_suite(suite["id"], progress=not args.json)
        _print_table(client, suite["id"], "json" if args.json else args.format)
        return EXIT_OK if suite["status"] == "succeeded" else EXIT_OTHER


def _suite_table(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_table(client, args.id, "json" if args.json else args.format)
    return EXIT_OK


def _suite_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.action == "list":
            suites = client.suites()
            if args.json:
                _print_json(suites)
            for s in [] if args.json else suites:
                print(f"{s['id']:>6}  {s['status']:<10}  {s['kind']:<8}  {s['total_jobs']:>4} jobs  {s['name'] or ''}")
            return EXIT_OK
        if args.id is None:
            raise ValueError(f"suite {args.action} needs a suite ID")
        suite = client.cancel_suite(args.id) if args.action == "cancel" else client.suite(args.id)
        if args.json:
            _print_json(suite)
            return EXIT_OK
        print(f"suite {suite['id']} {suite['status']}: {suite['counts']}")
        if suite.get("best"):
            best = suite["best"]
            print(f"best trial {best['trial']} (job {best['job_id']}): {best['objective']} = {best['value']:.4f} "
                  f"with {best['params']}")
    return EXIT_OK


def suite_main(argv: list[str]) -> int:
    action = argv[0] if argv else None
    if action == "run":
        p = _parser("suite run", "submit a suite (a preset or a JSON request), follow it, print its table")
        p.add_argument("target", help="a preset (moco_vs_simclr, pretext_tasks) or a suite request JSON file")
        p.add_argument("--scale", choices=("cpu", "gpu"), help="a preset's scale (default cpu)")
        p.add_argument("--dataset", help="a preset's dataset")
        p.add_argument("--path", help="a preset's image folder (gpu scale)")
        p.add_argument("--seeds", type=int, help="seeds per variant (0..N-1)")
        p.add_argument("--name", help="the suite's name")
        p.add_argument("--idempotency-key", help="a retried submission returns the first suite")
        p.add_argument("--no-wait", action="store_true", help="submit and return")
        p.add_argument("--format", choices=FORMATS, default="markdown", help="the table's format")
        return _run(_suite_run, p, argv[1:])
    if action == "table":
        p = _parser("suite table", "a suite's comparison table")
        p.add_argument("id", type=int)
        p.add_argument("--format", choices=FORMATS, default="markdown")
        return _run(_suite_table, p, argv[1:])
    p = _parser("suite", "suites on a server: run PRESET_OR_FILE | table ID | show ID | cancel ID | list")
    p.add_argument("action", choices=("show", "cancel", "list", "run", "table"))
    p.add_argument("id", type=int, nargs="?")
    return _run(_suite_show, p, argv)
