"""Typed dependencies: one database session per request, the app's settings."""

from __future__ import annotations

from typing import Annotated, Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    """One session (one transaction) per request; whatever was not committed is rolled back."""
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        try:
            session.close()
        except Exception:  # noqa: BLE001 - a dead connection must not turn a 503 into a 500
            pass


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
