"""A suite's comparison table: one row per variant (method, epochs, global batch, the overrides that
define it, notes) and per evaluation protocol the mean, standard deviation and count of top-1 over
seeds, beside the baselines and the supervised reference on the same protocols. Built from the
children as they are, so rows fill in as children finish; rendered as JSON, CSV or Markdown.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from typing import Any

from api.db.models import Job
from ssl_core.specs.overrides import get_path


def spread(values: list[float]) -> dict[str, Any]:
    """mean, sample standard deviation (None under two values), count and the values themselves."""
    if not values:
        return {"mean": None, "std": None, "count": 0, "values": []}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "count": len(values), "values": values}


def _protocol_label(plan: dict[str, Any], protocol: dict[str, Any] | None) -> str:
    """The column of an evaluation: its protocol's position in the suite's list (a supervised
    fine-tune outside the list is 'finetune')."""
    protocol = protocol or {}
    for label, p in zip(plan["protocols"], plan["evaluations"]):
        if p == protocol:
            return label
    return str(protocol.get("protocol", "?"))


def build_table(plan: dict[str, Any], jobs: list[Job], best: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"protocols": [...], "rows": [...]}: a row per variant in the plan's order (a sweep: a row
    per trial), then the references."""
    search = plan.get("search")
    rows: dict[str, dict[str, Any]] = {}
    for v in plan["variants"]:
        if search is None:
            rows[v["label"]] = _empty_row(v)
    pretrain_variant: dict[int, str] = {}
    for j in jobs:
        if j.kind == "pretrain":
            pretrain_variant[j.id] = j.variant or "?"
            if j.variant not in rows:  # a sweep trial
                overrides = {p: get_path(j.spec, p) for p in (search or {}).get("space", {})}
                rows[j.variant or "?"] = _empty_row({
                    "label": j.variant, "overrides": overrides, "notes": [], "method": j.method,
                    "epochs": j.spec.get("epochs"), "batch_size": j.spec.get("batch_size"),
                    "backbone": (j.spec.get("backbone") or {}).get("name"), "dataset": j.dataset})
            row = rows[j.variant or "?"]
            row["pretrain"]["total"] += 1
            row["pretrain"][j.status] = row["pretrain"].get(j.status, 0) + 1
            if best is not None and best.get("job_id") == j.id:
                row["best"] = True
    collected: dict[tuple[str, str], list[float]] = {}
    protocols = list(plan["protocols"])
    for j in jobs:
        if j.kind != "evaluate":
            continue
        variant = j.variant or pretrain_variant.get(j.parent_job_id or 0, "?")
        label = _protocol_label(plan, j.spec.get("protocol"))
        row = rows.get(variant)
        if row is None:
            continue
        row["evaluations"][label] = row["evaluations"].get(label, 0) + 1
        if label not in protocols:  # the supervised reference's fine-tune
            protocols.append(label)
        if j.status == "succeeded" and j.top1 is not None:
            collected.setdefault((variant, label), []).append(float(j.top1))
    for (variant, label), values in collected.items():
        rows[variant]["results"][label] = spread(values)
    for row in rows.values():
        for label in protocols:
            row["results"].setdefault(label, spread([]))
    ordered = sorted(rows.values(), key=lambda r: bool(r.get("reference")))
    return {"protocols": protocols, "metric": "top1", "rows": ordered}


def _empty_row(v: dict[str, Any]) -> dict[str, Any]:
    return {"variant": v["label"], "method": v.get("method"), "epochs": v.get("epochs"),
            "batch_size": v.get("batch_size"), "backbone": v.get("backbone"), "dataset": v.get("dataset"),
            "overrides": v.get("overrides") or {}, "notes": v.get("notes") or [],
            "reference": bool(v.get("reference")), "pretrain": {"total": 0}, "evaluations": {}, "results": {}}


def _cell(r: dict[str, Any]) -> str:
    """'71.2 ± 0.4 (n=3)' in percent; '71.2 (n=1)'; '-' when nothing finished yet."""
    if not r["count"]:
        return "-"
    text = f"{100 * r['mean']:.1f}"
    if r["std"] is not None:
        text += f" ± {100 * r['std']:.1f}"
    return f"{text} (n={r['count']})"


def _overrides(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in row["overrides"].items())


def to_markdown(table: dict[str, Any]) -> str:
    protocols = table["protocols"]
    head = ["variant", "method", "epochs", "batch", *[f"{p} top-1 (%)" for p in protocols], "overrides", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * len(protocols) + ["---"] * 2) + "|"]
    for row in table["rows"]:
        name = f"**{row['variant']}**" if row.get("best") else row["variant"]
        cells = [name, row["method"] or "", _num(row["epochs"]), _num(row["batch_size"]),
                 *[_cell(row["results"][p]) for p in protocols], _overrides(row), "; ".join(row["notes"])]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _num(v: Any) -> str:
    return "" if v is None else str(v)


def to_csv(table: dict[str, Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    protocols = table["protocols"]
    w.writerow(["variant", "method", "epochs", "batch_size", "overrides",
                *[f"{p}_{s}" for p in protocols for s in ("mean", "std", "count")], "notes"])
    for row in table["rows"]:
        stats = []
        for p in protocols:
            r = row["results"][p]
            stats += [_num(r["mean"]), _num(r["std"]), r["count"]]
        w.writerow([row["variant"], row["method"] or "", _num(row["epochs"]), _num(row["batch_size"]),
                    json.dumps(row["overrides"], separators=(",", ":")), *stats, "; ".join(row["notes"])])
    return out.getvalue()
