"""Optuna's storage on the service's own database: the studies behind sweeps live in the same SQL
database as the jobs (SQLite or PostgreSQL), in Optuna's own tables (made by migration
0005_suites, from Optuna's models).

Optuna is imported inside these functions: the API loads it only to delete a study.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("pretextlab.sweeps")


def open_storage(database_url: str) -> Any:
    """An ``optuna.storages.RDBStorage`` on ``database_url``. Table creation and Optuna's schema
    version check are off: the tables come from this project's migrations (the service's role may
    not create tables), and that check reads ``alembic_version``, which holds this project's
    revision, not Optuna's."""
    import optuna

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if database_url.startswith("sqlite"):
        # the API, the workers and the reconciler share the file: wait for a writer, never fail at once
        engine_kwargs["connect_args"] = {"timeout": 30}
    return optuna.storages.RDBStorage(database_url, engine_kwargs=engine_kwargs, skip_compatibility_check=True,
                                      skip_table_creation=True)


def delete_study(database_url: str, study_name: str) -> bool:
    """Remove a deleted suite's study (its trials, params, values); False when there is none."""
    import optuna

    storage = open_storage(database_url)
    try:
        optuna.delete_study(study_name=study_name, storage=storage)
        return True
    except KeyError:
        return False
    finally:
        storage.engine.dispose()
