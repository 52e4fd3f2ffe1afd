"""Evaluation protocols: kNN by hand, the linear probe, and end-to-end evaluation of exported backbones."""

import json
import math

import pytest
import torch

from ssl_core.evaluate import knn_accuracy, knn_predict, knn_top5, linear_probe, topk_accuracy
from ssl_core.features import StopRequested

BANK = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
BANK_Y = torch.tensor([0, 1, 1])


def test_knn_weighted_vote_by_hand():
    q = torch.tensor([[2.0, 0.0]])  # unnormalised on purpose: cosine similarity ignores the scale
    scores = knn_predict(BANK, BANK_Y, q, k=2, temperature=0.1, num_classes=3)
    # neighbours: bank 0 (s=1, class 0) and bank 2 (s=1/sqrt 2, class 1); bank 1 (s=0) is outside k=2
    expected = torch.tensor([[math.exp(1 / 0.1), math.exp((1 / math.sqrt(2)) / 0.1), 0.0]])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)


def test_knn_k_larger_than_bank_uses_whole_bank():
    q = torch.tensor([[2.0, 0.0]])
    scores = knn_predict(BANK, BANK_Y, q, k=200, temperature=0.1)
    assert scores.shape == (1, 2)  # classes inferred from the labels
    expected_1 = math.exp(0.0) + math.exp((1 / math.sqrt(2)) / 0.1)
    torch.testing.assert_close(scores[0, 1], torch.tensor(expected_1), rtol=1e-5, atol=1e-5)


def test_knn_temperature_changes_the_winner():
    # one very close class-0 neighbour against two moderately close class-1 neighbours
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    y = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.0]])
    # t small: exp(1/t) dominates 2 exp(0.8/t)  -> class 0; t large: votes ~ counts -> class 1
    assert knn_predict(bank, y, q, k=3, temperature=0.05).argmax().item() == 0
    assert knn_predict(bank, y, q, k=3, temperature=10.0).argmax().item() == 1


def test_knn_accuracy_chunks_and_top5(monkeypatch):
    import ssl_core.evaluate as ev

    monkeypatch.setattr(ev, "_KNN_CHUNK_ELEMENTS", 7)  # force many chunks
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(6, 16, generator=g) * 5
    y = torch.arange(6).repeat(20)
    x = centers[y] + torch.randn(120, 16, generator=g) * 0.5
    yt = torch.arange(6).repeat(5)
    xt = centers[yt] + torch.randn(30, 16, generator=g) * 0.5
    assert knn_accuracy(x, y, xt, yt, k=10) == 1.0
    assert knn_top5(x, y, xt, yt, k=10) == 1.0
    wrong = (yt + 1) % 6
    assert knn_accuracy(x, y, xt, wrong, k=10) == 0.0
    assert topk_accuracy(torch.tensor([[0.1, 0.5, 0.4]]), torch.tensor([2]), 2) == 1.0


def test_linear_probe_separable_features():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 20, generator=g)
    x = torch.randn(600, 20, generator=g)
    y = (x @ w.T).argmax(1)
    xt = torch.randn(300, 20, generator=g)
    yt = (xt @ w.T).argmax(1)
    out = linear_probe(x, y, xt, yt, epochs=30, lr=0.1, batch_size=64, weight_decay=0.0, num_classes=3)
    assert out.top1 >= 0.95 and out.top1 <= out.top5
    with pytest.raises(StopRequested):
        linear_probe(x, y, xt, yt, epochs=3, should_stop=lambda: True)


# ---------------------------------------------------------------------------
# End to end: a backbone from a one-epoch tiny pretraining, each protocol, and the baselines.
@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    from pathlib import Path

    from ssl_core.specs import PretrainSpec
    from ssl_core.train import pretrain

    raw = json.loads((Path(__file__).resolve().parents[2] / "examples" / "tiny" / "simclr.json").read_text())
    raw["epochs"] = 1
    out = tmp_path_factory.mktemp("pretrain")
    return pretrain(PretrainSpec.model_validate(raw), out).backbone_path


EVAL_DATA = {"dataset": "synthetic", "train_subset": 40, "test_subset": 20}


def _check_result(result, out_dir, protocol, feature_dim=None):
    assert result.completed and result.protocol == protocol and result.dataset == "synthetic"
    assert 0.0 <= result.top1 <= result.top5 <= 1.0
    assert (result.num_train, result.num_test) == (40, 20)
    if feature_dim is not None:
        assert result.feature_dim == feature_dim
    assert json.loads((out_dir / "result.json").read_text()) == result.to_dict()


@pytest.mark.parametrize("protocol", [
    {"protocol": "knn", "k": 5},
    {"protocol": "linear", "epochs": 2, "batch_size": 16},
    {"protocol": "linear", "epochs": 1, "batch_size": 16, "augment": True},
    {"protocol": "finetune", "epochs": 1, "batch_size": 16},
], ids=["knn", "linear", "linear-augment", "finetune"])
def test_evaluate_pretrained_backbone(tiny_backbone, tmp_path, protocol):
    from ssl_core.backbone_file import load_backbone
    from ssl_core.evaluate import evaluate
    from ssl_core.specs import EvaluateSpec

    _, meta = load_backbone(tiny_backbone)
    spec = EvaluateSpec.model_validate({"weights": "unused.safetensors", "protocol": protocol, "data": EVAL_DATA,
                                        "device": "cpu", "batch_size": 16})
    artifacts = []

    class Sink:
        metrics = progress = flush = lambda *a, **k: None
        should_stop = staticmethod(lambda: False)

        def artifact(self, name, path, kind):
            artifacts.append(kind)

    result = evaluate(spec, tmp_path, sink=Sink(), weights_path=tiny_backbone)  # weights_path wins
    _check_result(result, tmp_path, protocol["protocol"], meta["feature_dim"])
    assert result.method == "simclr" and result.epochs == 1 and result.baseline is None
    assert result.backbone["name"] == "convnet" and artifacts == ["result"]


@pytest.mark.parametrize("baseline,protocol", [("raw_pixels", "knn"), ("raw_pixels", "linear"),
                                               ("random_init", "knn"), ("random_init", "linear")])
def test_baselines(tmp_path, baseline, protocol):
    from ssl_core.evaluate import evaluate
    from ssl_core.specs import EvaluateSpec

    raw = {"baseline": baseline, "protocol": {"protocol": protocol, "epochs": 2},
           "data": {**EVAL_DATA, "image_size": 16}, "device": "cpu"}
    if protocol == "knn":
        raw["protocol"] = {"protocol": "knn", "k": 5}
    if baseline == "random_init":
        raw["backbone"] = {"name": "convnet", "width": 4}
    result = evaluate(EvaluateSpec.model_validate(raw), tmp_path)
    _check_result(result, tmp_path, protocol, 3 * 16 * 16 if baseline == "raw_pixels" else 32)
    assert result.baseline == baseline and result.epochs == 0


def test_dataset_stats_follow_the_channels_read():
    from ssl_core.normalization import dataset_stats

    assert dataset_stats("cifar10", 3) == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert dataset_stats("cifar10", 1) == ((0.4914,), (0.2470,))  # an RGB set read as grayscale
    assert dataset_stats("fashion_mnist", 3) == ((0.2860,) * 3, (0.3530,) * 3)  # a gray set read as RGB


def test_rgb_dataset_read_as_grayscale_trains_monitors_and_evaluates(tmp_path):
    """data.channels: 1 on an RGB set: training, the kNN monitor, the export and both evaluations agree
    on one channel of statistics."""
    from pathlib import Path

    from ssl_core.backbone_file import load_backbone
    from ssl_core.evaluate import evaluate
    from ssl_core.specs import EvaluateSpec, PretrainSpec
    from ssl_core.train import pretrain

    raw = json.loads((Path(__file__).resolve().parents[2] / "examples" / "tiny" / "rotation.json").read_text())
    raw.update(epochs=1, data={"dataset": "synthetic", "image_size": 16, "subset": 48, "channels": 1},
               eval={"monitor": {"every_epochs": 1, "train_subset": 20, "test_subset": 10, "k": 5}})
    run = pretrain(PretrainSpec.model_validate(raw), tmp_path / "run")
    assert run.completed and 0.0 <= run.metrics["monitor/knn_top1"] <= 1.0
    _, meta = load_backbone(run.backbone_path)
    assert meta["in_channels"] == 1 and len(meta["mean"]) == len(meta["std"]) == 1
    for protocol in ({"protocol": "knn", "k": 5}, {"protocol": "linear", "epochs": 1, "batch_size": 16}):
        out = tmp_path / protocol["protocol"]
        spec = EvaluateSpec.model_validate({"weights": str(run.backbone_path), "protocol": protocol,
                                            "data": EVAL_DATA, "device": "cpu", "batch_size": 16})
        _check_result(evaluate(spec, out), out, protocol["protocol"], meta["feature_dim"])


def test_evaluation_errors_are_permanent_and_name_the_field(tiny_backbone, tmp_path):
    """A spec the data cannot satisfy fails the job once (PermanentError) with the field first."""
    from ssl_core.errors import PermanentError, SpecError
    from ssl_core.evaluate import evaluate
    from ssl_core.specs import EvaluateSpec

    one_image = EvaluateSpec.model_validate({
        "weights": "unused.safetensors", "protocol": {"protocol": "finetune", "epochs": 1}, "device": "cpu",
        "data": {"dataset": "synthetic", "train_subset": 1, "test_subset": 4}})
    with pytest.raises(SpecError, match=r"^data\.train_subset: fine-tuning needs at least 2") as err:
        evaluate(one_image, tmp_path, weights_path=tiny_backbone)
    assert isinstance(err.value, PermanentError)
    no_size = EvaluateSpec.model_validate({"baseline": "raw_pixels", "device": "cpu",
                                           "data": {"dataset": "image_folder", "path": "imgs"}})
    with pytest.raises(SpecError, match=r"^data\.image_size: "):
        evaluate(no_size, tmp_path)


def test_load_backbone_refuses_a_non_safetensors_file(tmp_path):
    from ssl_core.backbone_file import load_backbone
    from ssl_core.errors import PermanentError

    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(PermanentError, match="safetensors"):
        load_backbone(bad)
    with pytest.raises(PermanentError, match="no backbone file"):
        load_backbone(tmp_path / "missing.safetensors")


class RecordingSink:
    """Records progress calls; ``stop_after`` lets that many should_stop calls pass, then asks to stop."""

    def __init__(self, stop_after=None):
        self.progress_calls, self.artifacts, self.stop_calls, self.stop_after = [], [], 0, stop_after

    def metrics(self, *a, **k):
        pass

    def progress(self, **kw):
        self.progress_calls.append(kw)

    def artifact(self, name, path, kind):
        self.artifacts.append(kind)

    def should_stop(self):
        self.stop_calls += 1
        return self.stop_after is not None and self.stop_calls > self.stop_after

    def flush(self):
        pass


# 40 train / 20 test rows, feature batches of 16: 3 + 2 extraction batches; probe batches of 16: 3 per epoch
@pytest.mark.parametrize("protocol,total", [
    ({"protocol": "knn", "k": 5}, 3 + 2 + 1),
    ({"protocol": "linear", "epochs": 2, "batch_size": 16}, 3 + 2 + 2 * 3 + 1),
    ({"protocol": "linear", "epochs": 1, "batch_size": 16, "augment": True}, 3 + 2 + (3 + 3) + 1),
    ({"protocol": "finetune", "epochs": 2, "batch_size": 16}, 2 * (40 // 16) + 1),
], ids=["knn", "linear", "linear-augment", "finetune"])
def test_evaluate_reports_progress_over_the_whole_protocol(tiny_backbone, tmp_path, protocol, total):
    from ssl_core.evaluate import evaluate
    from ssl_core.specs import EvaluateSpec

    spec = EvaluateSpec.model_validate({"weights": "unused.safetensors", "protocol": protocol, "data": EVAL_DATA,
                                        "device": "cpu", "batch_size": 16})
    sink = RecordingSink()
    result = evaluate(spec, tmp_path, sink=sink, weights_path=tiny_backbone)
    assert result.completed
    calls = sink.progress_calls
    assert [c["step"] for c in calls] == list(range(1, total + 1))  # monotonic, one per unit of work
    assert {c["total_steps"] for c in calls} == {total}
    assert all(c["images_per_sec"] >= 0 and c["eta_s"] is not None and c["eta_s"] >= 0 for c in calls)
    assert calls[-1]["eta_s"] == 0
    epochs = [c["epoch"] for c in calls]
    assert epochs == sorted(epochs) and epochs[-1] == protocol.get("epochs", 1) - 1


@pytest.mark.parametrize("protocol", [{"protocol": "knn", "k": 5}, {"protocol": "linear", "epochs": 50}],
                         ids=["knn", "linear"])
@pytest.mark.parametrize("baseline", [None, "raw_pixels"])
def test_stop_during_feature_extraction_returns_promptly(tiny_backbone, tmp_path, protocol, baseline):
    import time

    from ssl_core.evaluate import evaluate
    from ssl_core.specs import EvaluateSpec

    raw = {"protocol": protocol, "device": "cpu", "batch_size": 4,
           "data": {"dataset": "synthetic", "train_subset": 400, "test_subset": 200, "image_size": 16}}
    raw.update({"baseline": baseline} if baseline else {"weights": "unused.safetensors"})
    sink = RecordingSink(stop_after=1)  # the first feature batch runs, the second is refused
    t = time.perf_counter()
    result = evaluate(EvaluateSpec.model_validate(raw), tmp_path, sink=sink, weights_path=tiny_backbone)
    elapsed = time.perf_counter() - t
    assert result.completed is False and result.top1 is None and result.metrics == {}
    assert not (tmp_path / "result.json").exists() and sink.artifacts == []
    assert len(sink.progress_calls) == 1 and sink.progress_calls[0]["step"] == 1  # one of 100 + 50 batches
    assert sink.progress_calls[0]["total_steps"] > 150
    assert sink.stop_calls == 2
    assert elapsed < 30
