"""/v1/jobs/{id}/metrics: metric names, or one downsampled series (never unbounded)."""

from __future__ import annotations

import json
import math
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from api.db.metrics import metric_names, query_metrics
from api.deps import SessionDep
from api.errors import ApiError
from api.routes.jobs import JobId, job_or_404
from api.schemas import ERROR_RESPONSES, MAX_ID, Label, MetricNames, MetricSeriesOut
from api.security import PrincipalDep, require_token

router = APIRouter(prefix="/v1/jobs", tags=["metrics"], dependencies=[Depends(require_token)],
                   responses=ERROR_RESPONSES)
MAX_POINTS_CAP = 10_000

Step = Annotated[int | None, Query(ge=0, le=MAX_ID)]


@router.get("/{job_id}/metrics", response_model=MetricSeriesOut | MetricNames,
            summary="Metric names (no name) or one series, downsampled keeping each bucket's first, last, min and max")
def job_metrics(
    job_id: JobId,
    session: SessionDep,
    who: PrincipalDep,
    name: Label | None = None,
    start_step: Step = None,
    end_step: Step = None,
    max_points: Annotated[int, Query(ge=2, description="capped at 10000; max_points // 4 buckets")] = 1000,
) -> MetricNames | Response:
    job_or_404(session, job_id, who)
    if name is None:
        return MetricNames(job_id=job_id, names=metric_names(session, job_id))
    if start_step is not None and end_step is not None and start_step > end_step:
        raise ApiError(422, "validation_error", f"start_step {start_step} is after end_step {end_step}",
                       {"start_step": start_step, "end_step": end_step})
    max_points = min(max_points, MAX_POINTS_CAP)
    series = query_metrics(session, job_id, name, start_step=start_step, end_step=end_step,
                           max_points=max_points)
    if not series.points and name not in (names := metric_names(session, job_id)):
        raise ApiError(404, "unknown_metric",
                       f"job {job_id} has no metric named {name!r}; its metrics: {', '.join(names) or 'none yet'}",
                       [{"loc": "query.name", "msg": f"no metric named {name!r}", "type": "unknown_metric",
                         "value": name, "names": names}])
    # Up to 10,000 points: plain json.dumps of plain dicts (the shape of MetricSeriesOut) is several
    # times cheaper than building and re-validating a model per point. JSON has no NaN/inf: null.
    points = [{"step": s, "value": v if v is not None and math.isfinite(v) else None, "epoch": e}
              for s, v, e in series.points]
    body = {"job_id": job_id, "name": name, "points": points, "downsampled": series.downsampled,
            "max_points": max_points}
    return Response(json.dumps(body, allow_nan=False, separators=(",", ":")), media_type="application/json")
