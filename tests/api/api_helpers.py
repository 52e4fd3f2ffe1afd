"""Shared helpers of the API tests (a module, not conftest, so tests can import it)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

PRETRAIN = {"method": {"name": "simclr"}, "backbone": {"name": "convnet", "width": 8},
            "data": {"dataset": "synthetic", "image_size": 16, "subset": 64}, "epochs": 1, "batch_size": 16}


def submit(client: TestClient, spec: dict | None = None, **body: Any) -> dict:
    r = client.post("/v1/jobs", json={"spec": spec if spec is not None else PRETRAIN, **body})
    assert r.status_code == 201, r.text
    return r.json()


def detail_values(response: Any) -> dict[str, Any]:
    """An error's ``details`` (a list of {loc, msg, type, value?}) as {loc: value}."""
    return {d["loc"]: d.get("value") for d in response.json()["error"]["details"]}
