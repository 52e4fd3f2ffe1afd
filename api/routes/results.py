"""/v1/results: the leaderboard of finished evaluations."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from api.db.listing import leaderboard
from api.deps import SessionDep
from api.schemas import ERROR_RESPONSES, Label, ResultList, ResultRow
from api.security import PrincipalDep, require_token

router = APIRouter(prefix="/v1", tags=["results"], dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)


@router.get("/results", response_model=ResultList, summary="Leaderboard: succeeded evaluations, a row per probed layer, best top-1 first")
def results(
    session: SessionDep,
    who: PrincipalDep,
    dataset: Label | None = None,
    protocol: Literal["knn", "linear", "finetune"] | None = None,
    layer: Annotated[str | None, Query(max_length=600, description="only this layer's rows, e.g. pool")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ResultList:
    """One row per probed layer of each evaluation (a default evaluation: one row, layer ``pool``)."""
    rows = leaderboard(session, dataset=dataset, protocol=protocol, limit=limit,
                       created_by=None if who.admin else who.name, layer=layer)
    return ResultList(items=[ResultRow(**r) for r in rows])
