"""/v1/workers: the fleet -- each registered worker, its GPUs (free and busy), queues, running
jobs and last heartbeat. A worker is alive while its heartbeat is younger than LEASE_SECONDS (the
same limit after which its jobs' leases expire); a dead one stays listed (for a day, then the
reconciler forgets it) but counts for no capacity."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api.db.clock import utcnow
from api.db.workers import fleet
from api.deps import SessionDep, SettingsDep
from api.schemas import ERROR_RESPONSES
from api.security import require_token

router = APIRouter(prefix="/v1", tags=["workers"], dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)


class WorkerJob(BaseModel):
    id: int
    gpus: int
    devices: list[int]


class WorkerOut(BaseModel):
    name: str
    host: str
    device_kind: str = Field(description="cuda: GPU ordinals; cpu: CPU slots (a host without GPUs)")
    gpus: list[int] = Field(description="the devices this worker owns")
    free_gpus: list[int]
    queues: list[str]
    jobs: list[WorkerJob] = Field(description="the jobs it runs now")
    started_at: datetime
    heartbeat_at: datetime
    alive: bool


class WorkerList(BaseModel):
    items: list[WorkerOut]


@router.get("/workers", response_model=WorkerList, summary="The fleet: workers, their GPUs, jobs and heartbeats")
def list_workers(session: SessionDep, settings: SettingsDep) -> WorkerList:
    alive_after = utcnow() - timedelta(seconds=settings.lease_seconds)
    return WorkerList(items=[WorkerOut(**w._asdict()) for w in fleet(session, alive_after)])
