"""Evaluating intermediate layers: the spec's names and presets, adaptive pooling, one pass for every
layer, and per-layer probes on a toy backbone that agree with probes computed by hand."""

import pytest
import torch
from pydantic import ValidationError

from ssl_core.specs import BackboneSpec, EvaluateSpec, PretrainSpec
from ssl_core.specs.evaluation import LayerPooling

EVAL_DATA = {"dataset": "synthetic", "train_subset": 40, "test_subset": 20, "image_size": 16}
CONVNET = {"name": "convnet", "width": 4}


def _random_init(layers=None, protocol=None, **extra):
    raw = {"baseline": "random_init", "backbone": CONVNET, "data": EVAL_DATA, "device": "cpu", "batch_size": 16,
           "protocol": protocol or {"protocol": "knn", "k": 5}, **extra}
    if layers is not None:
        raw["layers"] = layers
    return EvaluateSpec.model_validate(raw)


# -- the spec ----------------------------------------------------------------------------------------
def test_layer_names_per_backbone():
    assert BackboneSpec(name="convnet").layer_names() == ("block1", "block2", "block3", "block4", "pool")
    assert BackboneSpec(name="resnet50").layer_names() == ("layer1", "layer2", "layer3", "layer4", "pool")


def test_a_bad_layer_name_is_refused_naming_layers_and_the_valid_names():
    with pytest.raises(ValidationError) as err:
        _random_init(["block2", "layer3"])
    msg = str(err.value)
    assert "layers: 'layer3' is not a layer of convnet" in msg
    assert "block1, block2, block3, block4, pool" in msg and "rotnet_blocks" in msg
    with pytest.raises(ValidationError, match="layers: a layer is named twice"):
        _random_init(["pool", "pool"])


def test_layers_refused_where_they_mean_nothing():
    with pytest.raises(ValidationError, match="layers: fine-tuning trains the whole backbone"):
        _random_init(["block2"], {"protocol": "finetune", "epochs": 1})
    with pytest.raises(ValidationError, match="layers: raw pixels have no layers"):
        EvaluateSpec.model_validate({"baseline": "raw_pixels", "layers": ["pool"]})
    with pytest.raises(ValidationError, match="layer_pooling: applies to conv blocks named in layers"):
        _random_init(layer_pooling={"mode": "max"})


def test_presets_store_the_papers_pooling_and_defaults_stay_unset():
    assert _random_init().layers is None and _random_init().layer_pooling is None  # the old default, unchanged
    rot = _random_init("rotnet_blocks")
    assert rot.layer_pooling == LayerPooling(mode="avg", max_dims=9216)
    ex = _random_init("exemplar_all")
    assert ex.layer_pooling == LayerPooling(mode="max", grid=2, concat=True)
    assert _random_init(["block1"]).layer_pooling == LayerPooling()
    # a weights file's backbone is unknown to the spec: names are checked by the engine (test below)
    assert EvaluateSpec.model_validate({"weights": "w.safetensors", "layers": ["anything"]}).layers == ["anything"]


def test_eval_after_layers_are_checked_against_the_pretraining_backbone():
    base = {"method": {"name": "rotation"}, "backbone": CONVNET, "data": {"dataset": "synthetic", "image_size": 16}}
    ok = PretrainSpec.model_validate({**base, "eval": {"after": [{"protocol": "knn"}], "layers": "rotnet_blocks"}})
    assert ok.eval.layer_pooling.max_dims == 9216
    with pytest.raises(ValidationError, match=r"eval\.layers: 'layer2' is not a layer of convnet"):
        PretrainSpec.model_validate({**base, "eval": {"after": [{"protocol": "knn"}], "layers": ["layer2"]}})
    with pytest.raises(ValidationError, match=r"eval\.layers: fine-tuning"):
        PretrainSpec.model_validate({**base, "eval": {"after": [{"protocol": "finetune"}], "layers": ["block1"]}})


# -- pooling and the single pass ------------------------------------------------------------------------
def test_pool_map_grid_and_modes():
    from ssl_core.features import grid_for, pool_map

    assert grid_for(64, 14, LayerPooling(max_dims=4096)) == 8        # 64 x 8 x 8 = 4096
    assert grid_for(16, 28, LayerPooling(max_dims=100_000 // 2)) == 28  # never above the map's side
    assert grid_for(8192, 4, LayerPooling(max_dims=4096)) == 1       # wider than the bound: global pooling
    fmap = torch.arange(16.0).view(1, 1, 4, 4)
    assert pool_map(fmap, LayerPooling(mode="max", grid=2)).tolist() == [[5.0, 7.0, 13.0, 15.0]]
    assert pool_map(fmap, LayerPooling(mode="avg", grid=1)).tolist() == [[7.5]]
    flat = torch.ones(3, 5)
    assert pool_map(flat, LayerPooling(grid=2)) is flat


def test_layer_tap_gives_every_layer_from_one_forward_pass():
    from ssl_core.backbones import build_backbone
    from ssl_core.features import LayerTap, extract_features

    torch.manual_seed(0)
    net = build_backbone(BackboneSpec(**CONVNET), 1, 16).eval()
    calls = []
    original = net.forward_layers
    net.forward_layers = lambda x, names: calls.append(list(names)) or original(x, names)
    tap = LayerTap(net, ["block1", "block3", "pool"], LayerPooling(max_dims=64))
    images = torch.randint(0, 256, (10, 1, 16, 16), dtype=torch.uint8)
    feats = extract_features(tap, images, [0.5], [0.25], batch_size=4, device="cpu")
    assert calls == [["block1", "block3", "pool"]] * 3          # ceil(10 / 4) batches, each one pass
    # block1: 4 ch at 16 px -> grid 4 (64 values); block3: 16 ch at 4 px -> grid 2; pool: the 32-d vector
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"block1": (10, 64), "block3": (10, 64), "pool": (10, 32)}
    torch.testing.assert_close(feats["pool"], extract_features(net, images, [0.5], [0.25], 4, "cpu"))
    concat = LayerTap(net, ["block1", "block2", "block3", "block4"], LayerPooling(mode="max", grid=2, concat=True))
    joined = extract_features(concat, images, [0.5], [0.25], batch_size=4, device="cpu")
    assert list(joined) == ["block1+block2+block3+block4"]
    assert joined["block1+block2+block3+block4"].shape == (10, (4 + 8 + 16 + 32) * 4)


# -- per-layer probes ---------------------------------------------------------------------------------
def _hand_knn(spec, names, pooling):
    """kNN per layer computed outside evaluate(): the backbone rebuilt with the same seed."""
    from ssl_core.backbones import build_backbone
    from ssl_core.data import load_dataset
    from ssl_core.evaluate import knn_accuracy
    from ssl_core.features import LayerTap, extract_features
    from ssl_core.normalization import dataset_stats

    torch.manual_seed(spec.seed)
    net = build_backbone(spec.backbone, 3, 16)
    mean, std = dataset_stats("synthetic", 3)
    kw = dict(image_size=16, channels=3, seed=spec.seed)
    train = load_dataset("synthetic", "train", subset=40, **kw)
    test = load_dataset("synthetic", "test", subset=20, **kw)
    tap = LayerTap(net, names, pooling)
    ftr = extract_features(tap, train.images, mean, std, 16, "cpu")
    fte = extract_features(tap, test.images, mean, std, 16, "cpu")
    return {n: knn_accuracy(ftr[n], train.labels, fte[n], test.labels, k=5, num_classes=train.num_classes)
            for n in tap.probes}


def test_knn_per_layer_matches_probes_by_hand_and_pool_matches_the_default(tmp_path):
    from ssl_core.evaluate import evaluate

    spec = _random_init(["block2", "block4", "pool"])
    result = evaluate(spec, tmp_path / "layers")
    assert result.completed and list(result.layers) == ["block2", "block4", "pool"]
    by_hand = _hand_knn(spec, ["block2", "block4", "pool"], spec.layer_pooling)
    assert {n: r["top1"] for n, r in result.layers.items()} == pytest.approx(by_hand)
    assert result.layers["block2"]["feature_dim"] == 8 * 8 * 8 and result.layers["pool"]["feature_dim"] == 32
    default = evaluate(_random_init(), tmp_path / "default")
    assert default.layer == result.layer == "pool" and list(default.layers) == ["pool"]
    assert (default.top1, default.top5, default.feature_dim) == (result.top1, result.top5, 32)
    assert result.metrics["eval/block2/top1"] == result.layers["block2"]["top1"]
    assert "eval/pool/top1" not in default.metrics  # a single probe reports eval/top1 only, as before


def test_presets_and_the_linear_probe_per_layer(tmp_path):
    from ssl_core.evaluate import evaluate

    linear = {"protocol": "linear", "epochs": 2, "batch_size": 16}
    rot = evaluate(_random_init("rotnet_blocks", linear), tmp_path / "rot")
    assert list(rot.layers) == ["block1", "block2", "block3", "block4"]
    assert rot.layer == "block4" and rot.top1 == rot.layers["block4"]["top1"]   # no pool: the deepest listed
    ex = evaluate(_random_init("exemplar_all", {"protocol": "knn", "k": 5}), tmp_path / "ex")
    assert list(ex.layers) == [ex.layer] == ["block1+block2+block3+block4"]
    assert ex.feature_dim == (4 + 8 + 16 + 32) * 4
    assert ex.top1 == pytest.approx(_hand_knn(ex_spec := _random_init("exemplar_all"),
                                              ["block1", "block2", "block3", "block4"],
                                              ex_spec.layer_pooling)[ex.layer])
    aug = evaluate(_random_init(["block3", "pool"], {**linear, "augment": True}), tmp_path / "aug")
    assert set(aug.layers) == {"block3", "pool"} and all(0 <= r["top1"] <= 1 for r in aug.layers.values())


def test_progress_counts_one_extraction_and_a_probe_per_layer(tmp_path):
    from ssl_core.evaluate import evaluate

    seen = []

    class Sink:
        metrics = flush = artifact = lambda *a, **k: None
        should_stop = staticmethod(lambda: False)

        def progress(self, **p):
            seen.append((p["step"], p["total_steps"]))

    evaluate(_random_init(["block1", "pool"], {"protocol": "linear", "epochs": 2, "batch_size": 16}), tmp_path,
             sink=Sink())
    # features: 3 + 2 batches of 16 (one pass for both layers); each probe 2 epochs x 3 steps; + scoring
    assert seen[-1] == (5 + 2 * 6 + 1, 5 + 2 * 6 + 1)


def test_a_weights_file_checks_layer_names_against_its_own_backbone(tmp_path):
    from ssl_core.backbone_file import backbone_metadata, export_backbone
    from ssl_core.backbones import build_backbone
    from ssl_core.errors import SpecError
    from ssl_core.evaluate import evaluate

    bspec = BackboneSpec(**CONVNET)
    net = build_backbone(bspec, 3, 16)
    meta = backbone_metadata("{}", bspec, net.feature_dim, 3, 16, [0.5] * 3, [0.25] * 3, "rotation", 1, "synthetic")
    weights = export_backbone(tmp_path / "b.safetensors", net, meta)
    from safetensors import safe_open

    from ssl_core.weights_header import read_metadata

    with safe_open(str(weights), framework="pt") as f:  # the torch-free reader agrees with the library's
        assert read_metadata(weights) == f.metadata() == meta
    spec = EvaluateSpec.model_validate({"weights": str(weights), "layers": ["layer2"], "data": EVAL_DATA,
                                        "device": "cpu", "protocol": {"protocol": "knn", "k": 5}})
    with pytest.raises(SpecError, match=r"^layers: 'layer2' is not a layer of convnet \(valid: block1"):
        evaluate(spec, tmp_path / "out")
    good = spec.model_copy(update={"layers": ["block3"], "layer_pooling": LayerPooling()})
    assert list(evaluate(good, tmp_path / "ok").layers) == ["block3"]


@pytest.mark.parametrize("name", ["resnet18", "convnet"])
def test_forward_layers_agree_with_forward_and_stop_at_the_deepest_asked(name):
    from ssl_core.backbones import build_backbone

    torch.manual_seed(0)
    net = build_backbone(BackboneSpec(name=name, width=4), 3, 32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        every = net.forward_layers(x, list(BackboneSpec(name=name).layer_names()))
        torch.testing.assert_close(every["pool"], net(x))
        first = BackboneSpec(name=name).conv_blocks()[0]
        calls = []
        last = net.net.layer4 if name == "resnet18" else net.features[-1]
        hook = last.register_forward_hook(lambda *a: calls.append(1))
        shallow = net.forward_layers(x, [first])
        hook.remove()
    assert list(shallow) == [first] and calls == []  # the deeper stages never ran
    torch.testing.assert_close(shallow[first], every[first])
    widths = [every[b].shape[1] for b in BackboneSpec(name=name).conv_blocks()]
    assert widths == ([64, 128, 256, 512] if name == "resnet18" else [4, 8, 16, 32])
