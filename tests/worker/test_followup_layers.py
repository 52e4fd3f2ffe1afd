"""A pretraining's ``eval.layers`` reaches every evaluation it queues (spec only, nothing runs)."""

from __future__ import annotations

from types import SimpleNamespace

from ssl_core.specs import parse_job_spec
from tests.support.specs import tiny_pretrain
from worker.runner import eval_followups


def test_eval_after_carries_layers_and_their_pooling():
    spec = tiny_pretrain(epochs=1, eval={"after": [{"protocol": "knn", "k": 5}, {"protocol": "linear"}],
                                         "layers": "exemplar_all"})
    stored = parse_job_spec(spec).model_dump(mode="json")
    children = eval_followups(SimpleNamespace(id=7, spec=stored))
    assert [c["layers"] for c in children] == ["exemplar_all", "exemplar_all"]
    pooling = {"mode": "max", "grid": 2, "max_dims": 4096, "concat": True}
    assert all(c["layer_pooling"] == pooling for c in children)
    assert all(parse_job_spec(c).layers == "exemplar_all" for c in children)  # each one a valid spec
    plain = eval_followups(SimpleNamespace(id=7, spec=parse_job_spec(
        tiny_pretrain(epochs=1, eval={"after": [{"protocol": "knn"}]})).model_dump(mode="json")))
    assert "layers" not in plain[0]  # the old follow-up spec, unchanged
