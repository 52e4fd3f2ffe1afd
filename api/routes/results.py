"""/v1/results: the leaderboard of finished evaluations."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from api.db.listing import leaderboard
from api.deps import SessionDep
from api.schemas import ERROR_RESPONSES, Label, ResultList, ResultRow
from api.security import PrincipalDep, require_token

router = APIRouter(prefix="/v1", tags=["results"], dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)


@router.get("/results", response_model=ResultList, summary="Leaderboard: succeeded evaluations, best top-1 first")
def results(
    session: SessionDep,
    who: PrincipalDep,
    dataset: Label | None = None,
    protocol: Literal["knn", "linear", "finetune"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ResultList:
    rows = leaderboard(session, dataset=dataset, protocol=protocol, limit=limit,
                       created_by=None if who.admin else who.name)
    return ResultList(items=[ResultRow(**r) for r in rows])
