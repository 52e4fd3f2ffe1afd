"""`pretextlab token create|list|revoke` and `pretextlab db prune`: administration run next to the
database (the migrate container, a shell on the main host), never through the HTTP API."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from api.db.clock import as_utc
from api.db.retention import prune
from api.db.session import sessions_for
from api.db.tokens import TokenError, create_token, list_tokens, revoke_token
from api.settings import Settings


def add_parsers(sub: Any, db_sub: Any) -> None:
    """The `token` command and `db prune` on the console script's parsers."""
    token = sub.add_parser("token", help="named API tokens (stored hashed): create, list, revoke")
    t_sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = t_sub.add_parser("create", help="make a token; it is printed once and never stored in clear")
    create.add_argument("name", help="the token's name: jobs record it as their owner, events as the actor")
    create.add_argument("--admin", action="store_true", help="sees and acts on every job")
    t_sub.add_parser("list", help="names, admin flag, created and revoked dates (never the tokens)")
    revoke = t_sub.add_parser("revoke", help="refuse a token from now on")
    revoke.add_argument("name")
    prune_p = db_sub.add_parser("prune", help="retention: metrics/artifacts of old finished jobs, deleted jobs' folders")
    prune_p.add_argument("--days", type=float, help="override PRETEXTLAB_RETENTION_DAYS for this run")


def token_main(args: argparse.Namespace, settings: Settings) -> int:
    sessions = sessions_for(settings.database_url)
    try:
        with sessions() as s, s.begin():
            if args.token_command == "create":
                token = create_token(s, args.name, admin=args.admin)
            elif args.token_command == "revoke":
                revoke_token(s, args.name)
            else:
                rows = list_tokens(s)
    except TokenError as exc:
        print(f"pretextlab token: {exc}", file=sys.stderr)
        return 2
    if args.token_command == "create":
        print(token)
        print(f"token {args.name!r}{' (admin)' if args.admin else ''} created: it is shown only now; "
              "clients send `Authorization: Bearer <token>`", file=sys.stderr)
    elif args.token_command == "revoke":
        print(f"token {args.name!r} revoked")
    else:
        print(f"{'NAME':24} {'ADMIN':5} {'CREATED':25} REVOKED")
        for r in rows:
            revoked = as_utc(r.revoked_at).isoformat() if r.revoked_at else "-"
            print(f"{r.name:24} {'yes' if r.admin else 'no':5} {as_utc(r.created_at).isoformat():25} {revoked}")
    return 0


def prune_main(args: argparse.Namespace, settings: Settings) -> int:
    days = args.days if args.days is not None else settings.retention_days
    report = prune(sessions_for(settings.database_url), settings.artifact_root, days, store=settings.artifact_store())
    print(f"pruned the rows of {len(report['jobs_pruned'])} job(s) ({report['metrics_deleted']} metrics, "
          f"{report['artifacts_deleted']} artifacts); removed {len(report['folders_removed'])} folder(s)"
          + ("" if days is not None else " (no retention period: deleted jobs' folders only)"))
    return 0
