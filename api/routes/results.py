"""/v1/results: the leaderboard of finished evaluations."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from api.db.listing import group_results, leaderboard
from api.deps import SessionDep
from api.schemas import ERROR_RESPONSES, Label, ResultGroup, ResultList, ResultRow
from api.security import PrincipalDep, require_token

GROUP_ROWS = 100_000  # evaluations read to compute the groups
router = APIRouter(prefix="/v1", tags=["results"], dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)


@router.get("/results", response_model=ResultList, summary="Leaderboard: succeeded evaluations, a row per probed layer, best top-1 first")
def results(
    session: SessionDep,
    who: PrincipalDep,
    dataset: Label | None = None,
    protocol: Literal["knn", "linear", "finetune"] | None = None,
    layer: Annotated[str | None, Query(max_length=600, description="only this layer's rows, e.g. pool")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    suite_id: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="only this suite's evaluations")] = None,
    group_by: Annotated[Literal["method", "variant"] | None,
                        Query(description="mean +- std of top-1 per method (and dataset, protocol, epochs, "
                                          "batch) or per suite variant (and protocol)")] = None,
) -> ResultList:
    """One row per probed layer of each evaluation (a default evaluation: one row, layer ``pool``);
    ``group_by``: mean, std and count of top-1 per group instead."""
    # grouped: every matching evaluation counts, not only the first page of rows
    rows = leaderboard(session, dataset=dataset, protocol=protocol, limit=GROUP_ROWS if group_by else limit,
                       created_by=None if who.admin else who.name, suite_id=suite_id, layer=layer)
    if group_by is None:
        return ResultList(items=[ResultRow(**r) for r in rows])
    return ResultList(items=[], groups=[ResultGroup(**g) for g in group_results(rows, group_by)])
