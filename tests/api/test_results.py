"""GET /v1/results: succeeded evaluations joined to their pretraining, best first."""

from __future__ import annotations

import json

from api.db.jobs import transition
from api_helpers import PRETRAIN, submit

EVAL = {"kind": "evaluate", "data": {"dataset": "synthetic"}}


def _finish(db, job_id, **values):
    with db() as s:
        assert transition(s, job_id, "queued", "running")
        assert transition(s, job_id, "running", "succeeded", **values)
        s.commit()


def test_leaderboard(client, db):
    simclr = submit(client, {**PRETRAIN, "epochs": 3})["id"]
    rot = submit(client, {**PRETRAIN, "method": {"name": "rotation"}, "epochs": 2})["id"]
    e1 = submit(client, {**EVAL, "source_job_id": simclr})["id"]
    e2 = submit(client, {**EVAL, "source_job_id": rot})["id"]
    e3 = submit(client, {**EVAL, "source_job_id": rot, "protocol": {"protocol": "linear", "epochs": 1}})["id"]
    base = submit(client, {**EVAL, "baseline": "random_init"})["id"]
    pending = submit(client, {**EVAL, "source_job_id": simclr})["id"]  # not finished: not listed
    _finish(db, e1, top1=0.61, top5=0.95, result={"top1": 0.61, "top5": 0.95})
    _finish(db, e2, top1=0.72, top5=0.97, result={"top1": 0.72})
    _finish(db, e3, top1=0.80, result={"top1": 0.80})
    _finish(db, base, top1=0.30, result={"top1": 0.30, "method": "random_init", "backbone": "resnet18"})
    knn = client.get("/v1/results", params={"dataset": "synthetic", "protocol": "knn"}).json()["items"]
    assert [r["evaluation_job_id"] for r in knn] == [e2, e1, base]
    assert knn[0] == {**knn[0], "pretrain_job_id": rot, "method": "rotation", "backbone": "convnet", "epochs": 2,
                      "top1": 0.72, "top5": 0.97, "protocol": "knn", "dataset": "synthetic"}
    assert knn[1]["method"] == "simclr" and knn[1]["epochs"] == 3
    assert knn[2]["pretrain_job_id"] is None and knn[2]["method"] == "baseline:random_init"
    everything = client.get("/v1/results").json()["items"]
    assert [r["evaluation_job_id"] for r in everything] == [e3, e2, e1, base] and pending not in everything
    assert client.get("/v1/results", params={"dataset": "cifar10"}).json()["items"] == []


LAYERS = {"top1": 0.70, "top5": 0.95, "layer": "pool", "feature_dim": 64,
          "layers": {"block2": {"top1": 0.83, "top5": 0.99, "feature_dim": 4096},
                     "pool": {"top1": 0.70, "top5": 0.95, "feature_dim": 64}}}


def test_leaderboard_has_a_row_per_layer(client, db):
    pre = submit(client, PRETRAIN)["id"]
    layered = submit(client, {**EVAL, "source_job_id": pre, "layers": ["block2", "pool"]})["id"]
    plain = submit(client, {**EVAL, "source_job_id": pre})["id"]
    pixels = submit(client, {**EVAL, "baseline": "raw_pixels"})["id"]
    _finish(db, layered, top1=0.70, top5=0.95, result=LAYERS)
    _finish(db, plain, top1=0.75, result={"top1": 0.75})  # a result from before per-layer evaluation
    _finish(db, pixels, top1=0.40, result={"top1": 0.40, "baseline": "raw_pixels", "layer": "pixels",
                                           "layers": {"pixels": {"top1": 0.40, "top5": 0.9}}})
    rows = client.get("/v1/results").json()["items"]
    assert [(r["evaluation_job_id"], r["layer"], r["top1"]) for r in rows] == [
        (layered, "block2", 0.83), (plain, "pool", 0.75), (layered, "pool", 0.70), (pixels, "pixels", 0.40)]
    assert rows[0]["top5"] == 0.99 and rows[0]["method"] == "simclr" and rows[0]["pretrain_job_id"] == pre
    pool = client.get("/v1/results", params={"layer": "pool"}).json()["items"]
    assert [(r["evaluation_job_id"], r["top1"]) for r in pool] == [(plain, 0.75), (layered, 0.70)]
    assert len(client.get("/v1/results", params={"limit": 2}).json()["items"]) == 2
    page = client.get("/ui/leaderboard")
    assert page.status_code == 200 and "<td>block2</td>" in page.text and "<td>pixels</td>" in page.text
    assert "<td>block2</td>" not in client.get("/ui/leaderboard?layer=pool").text
    job = client.get(f"/ui/jobs/{layered}").text
    assert 'id="layers"' in job and "block2" in job and "0.8300" in job and "pool (headline)" in job
    evals = client.get(f"/ui/jobs/{pre}").text  # the pretraining's evaluations: headline layer and count
    assert "pool (+1 more)" in evals and "0.7000" in evals


def test_bad_layer_names_are_refused_with_the_valid_ones(client):
    pre = submit(client, PRETRAIN)["id"]
    for spec in ({**EVAL, "source_job_id": pre, "layers": ["layer2"]},
                 {**EVAL, "baseline": "random_init", "backbone": {"name": "convnet"}, "layers": ["layer2"]},
                 {**PRETRAIN, "eval": {"after": [{"protocol": "knn"}], "layers": ["layer2"]}}):
        r = client.post("/v1/jobs", json={"spec": spec})
        assert r.status_code == 422, r.text
        msg = r.json()["error"]["message"]
        assert "layers: 'layer2' is not a layer of convnet" in msg and "block1, block2, block3, block4, pool" in msg
    r = client.post("/v1/jobs", json={"spec": {**EVAL, "source_job_id": pre, "layers": ["block2"],
                                               "protocol": {"protocol": "finetune"}}})
    assert r.status_code == 422 and "layers: fine-tuning" in r.json()["error"]["message"]
    ok = submit(client, {**EVAL, "source_job_id": pre, "layers": "rotnet_blocks"})
    assert ok["spec"]["layers"] == "rotnet_blocks" and ok["spec"]["layer_pooling"]["max_dims"] == 9216



def _weights_file(path, backbone: dict) -> str:
    """A .safetensors file holding only a header with pretextlab's metadata (what the API reads)."""
    header = json.dumps({"__metadata__": {"backbone": json.dumps(backbone), "format": "pretextlab-backbone/1"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(header).to_bytes(8, "little") + header.encode())
    return str(path)


def test_layer_names_of_a_weights_file_are_checked_from_its_header(client, settings):
    weights = _weights_file(settings.artifact_root / "jobs" / "3" / "backbone.safetensors",
                            {"name": "resnet18", "cifar_stem": None, "width": 32})
    r = client.post("/v1/jobs", json={"spec": {**EVAL, "weights": weights, "layers": ["block2"]}})
    assert r.status_code == 422
    assert "layers: 'block2' is not a layer of resnet18 (valid: layer1, layer2, layer3, layer4, pool" \
        in r.json()["error"]["message"]
    assert submit(client, {**EVAL, "weights": weights, "layers": ["layer2", "pool"]})["spec"]["layers"] == \
        ["layer2", "pool"]
    garbage = settings.artifact_root / "jobs" / "4" / "backbone.safetensors"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"not a safetensors file")  # unreadable here: the worker reports it when it runs
    assert submit(client, {**EVAL, "weights": str(garbage), "layers": ["block2"]})["status"] == "queued"
