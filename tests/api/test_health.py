"""/healthz, /readyz, and refusing to start on a database that is not at the migration head."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.db.session import SchemaOutOfDate, check_schema_current, head_revision, make_engine, upgrade
from api.main import create_app


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "schema": "ok", "broker": "embedded"}}


def test_refuses_to_start_on_unmigrated_database(database_url, make_settings):
    app = create_app(make_settings(database_url))
    with pytest.raises(SchemaOutOfDate, match="pretextlab db upgrade"):
        with TestClient(app):
            pass
    engine = make_engine(database_url)
    with pytest.raises(SchemaOutOfDate, match=rf"schema is at nothing \(empty database\), code needs {head_revision()}"):
        check_schema_current(engine)
    upgrade(database_url)
    check_schema_current(engine)
    engine.dispose()


def test_readyz_reports_an_out_of_date_schema(client, settings):
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    engine.dispose()
    r = client.get("/readyz")
    assert r.status_code == 503 and r.headers["retry-after"]
    assert "pretextlab db upgrade" in {d["loc"]: d["value"] for d in r.json()["error"]["details"]}["schema"]


def test_catalog(client):
    methods = client.get("/v1/methods").json()
    assert {m["name"] for m in methods} == {"rotation", "exemplar", "relative_position", "jigsaw", "simclr", "moco"}
    simclr = next(m for m in methods if m["name"] == "simclr")
    assert simclr["defaults"]["temperature"] == 0.5 and "properties" in simclr["schema"]
    datasets = {d["name"]: d for d in client.get("/v1/datasets").json()}
    assert datasets["synthetic"]["available"] is True and datasets["image_folder"]["available"] is None
    assert datasets["cifar10"]["available"] is False and datasets["cifar10"]["num_classes"] == 10


def test_catalog_sees_prepared_datasets(settings, tmp_path):
    # the Debian package may be installed here: point the Fashion-MNIST source somewhere empty
    source = tmp_path / "no-debian-package"
    settings = settings.model_copy(update={"fashion_mnist_source": source})

    with TestClient(create_app(settings)) as client:
        def available():
            return {d["name"]: d["available"] for d in client.get("/v1/datasets").json()}

        assert available()["cifar10"] is False and available()["fashion_mnist"] is False
        for folder in ("cifar-10-batches-py", "FashionMNIST/raw"):  # where ssl_core.data reads them
            (settings.data_root / folder).mkdir(parents=True)
            (settings.data_root / folder / "data").write_bytes(b"x")
        assert available()["cifar10"] is True and available()["fashion_mnist"] is True
        assert available()["cifar100"] is False and available()["stl10"] is False
        # the source folder the loader copies from counts too
        (settings.data_root / "FashionMNIST/raw" / "data").unlink()
        assert available()["fashion_mnist"] is False
        source.mkdir()
        (source / "train-images-idx3-ubyte.gz").write_bytes(b"x")
        assert available()["fashion_mnist"] is True


def test_fashion_mnist_source_is_a_setting(make_settings, monkeypatch, tmp_path):
    monkeypatch.setenv("PRETEXTLAB_FASHION_MNIST_SOURCE", str(tmp_path / "src"))
    assert make_settings("sqlite://").fashion_mnist_source == tmp_path / "src"
    monkeypatch.setenv("PRETEXTLAB_FASHION_MNIST_SOURCE", "")
    assert make_settings("sqlite://").fashion_mnist_source is None  # unset: the Debian package's folder


def test_create_app_touches_no_database(make_settings):
    # nothing listens on port 1: building the app must not connect; only the lifespan does
    app = create_app(make_settings("postgresql+psycopg://nobody@127.0.0.1:1/none"))
    assert not hasattr(app.state, "engine")
    assert "/v1/jobs" in app.openapi()["paths"]
