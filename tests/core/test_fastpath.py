"""The fast training step is the plain one, only faster.

* No host-device synchronisation inside a training step, for every method, through the real
  loop (``ssl_core.train.pretrain``): every op that blocks the host on CUDA is caught at the
  dispatcher while the run goes on the CPU -- ``.item()``/``float()``/``bool()``/``int()``
  (``aten._local_scalar_dense``), ``nonzero``, boolean-mask indexing, ``masked_select``,
  ``unique``, ``repeat_interleave`` with tensor counts, LAPACK ops that check their error
  codes on the host (``linalg.eigh``), and tensors built from Python data inside the step
  (``torch.tensor(..., device=cuda)`` is a blocking host-to-device copy); ``.tolist()``,
  ``.numpy()`` and ``.cpu()`` are caught by patching the Tensor methods. Reads may happen at
  log boundaries only, and must happen there (the detector's positive control).
* The fast path and the plain path give the same loss on the same batch and parameters
  (SimCLR and MoCo v2, fp32 on the CPU): the batched pipeline vs torchvision's per-image
  functions in a Python loop with the same drawn parameters; a channels_last model vs a
  contiguous one; the foreach optimizers vs for-loop ones (parameters equal after steps).

That each op's parameters vary per sample is tested op by op in test_augment.py
(``test_identical_inputs_come_out_different``), not repeated here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils._python_dispatch import TorchDispatchMode

from ssl_core import augment as A
from ssl_core.optim import LARS, build_optimizer
from ssl_core.registry import build_method
from ssl_core.specs import PretrainSpec
from ssl_core.train import pretrain

from methods_testkit import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------------------------------------
# host-sync detector

# ops that make the host wait for the device on CUDA
SYNC_OPS = {
    "aten._local_scalar_dense",  # .item(), float(t), int(t), bool(t), `if t:`
    "aten.nonzero", "aten.nonzero_static", "aten.masked_select", "aten.argwhere",
    "aten.unique", "aten._unique", "aten._unique2", "aten.unique_dim", "aten.unique_consecutive",
    "aten._linalg_eigh", "aten.linalg_eigh", "aten._linalg_check_errors", "aten.linalg_inv_ex",
    "aten.lift_fresh",  # torch.tensor(python data): a blocking host-to-device copy on CUDA
    "aten._assert_async",
}


def _op_name(func) -> str:
    return f"{func.namespace}.{func.__name__.split('.')[0]}"


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (indices or ()))


class SyncDetector(TorchDispatchMode):
    """Records every host-synchronising op, tagged with the current phase (a step index)."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = -1
        self.events: list[tuple[int, str]] = []

    def record(self, what: str) -> None:
        self.events.append((self.phase, what))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = _op_name(func)
        if name == "aten.lift_fresh" and args[0].dim() == 0:
            # ``t[idx] = 1.0``: a Python scalar written into a tensor stays a CPU scalar for a CUDA
            # tensor (fill_ takes it as an argument); no copy, no sync
            pass
        elif name in SYNC_OPS:
            self.record(name)
        elif name in ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_") and _has_bool_index(args):
            self.record(f"{name} (boolean mask)")
        elif name == "aten.repeat_interleave" and isinstance(args[0], torch.Tensor) and len(args) == 1:
            self.record(f"{name} (tensor repeats)")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def sync_detector(monkeypatch):
    det = SyncDetector()
    for meth in ("tolist", "numpy", "cpu"):
        orig = getattr(torch.Tensor, meth)

        def patched(self, *a, _orig=orig, _name=meth, **kw):
            det.record(f"Tensor.{_name}")
            return _orig(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, meth, patched)
    return det


# Small but complete configurations of the seven methods (16 px synthetic images, batch 8).
METHOD_CONFIGS = {
    "rotation": {"name": "rotation"},
    "exemplar": {"name": "exemplar", "num_classes": 48, "samples_per_class": 1, "hidden_dim": 16},
    "relative_position": {"name": "relative_position", "hidden_dim": 16, "gap": 3, "jitter": 1},
    "jigsaw": {"name": "jigsaw", "num_permutations": 10, "tile_dim": 8, "hidden_dim": 16},
    "simclr": {"name": "simclr"},
    "moco_v1": {"name": "moco", "version": 1, "queue_size": 16},
    "moco_v2": {"name": "moco", "version": 2, "queue_size": 16, "bn_splits": 2},
}
STEPS = 6  # one epoch: 48 images / batch 8


def loop_spec(method: dict, log_every: int, **extra) -> PretrainSpec:
    size = 24 if method["name"] in ("relative_position", "jigsaw") else 16
    return PretrainSpec.model_validate({
        "method": method, "backbone": {"name": "convnet", "width": 4},
        "data": {"dataset": "synthetic", "image_size": size, "subset": 48},
        "epochs": 1, "batch_size": 8, "device": "cpu", "log_every": log_every, **extra,
    })


def syncs_per_step(spec: PretrainSpec, det: SyncDetector, out: Path) -> dict[int, list[str]]:
    """Run ``pretrain`` under the detector; {step index: sync ops between its start and the next step's}."""

    def should_stop() -> bool:  # called by the loop at the start of every step
        det.phase += 1
        return False

    with det:
        result = pretrain(spec, out, should_stop=should_stop, resume=False)
    assert result.completed and result.step == STEPS and det.phase == STEPS - 1
    per_step: dict[int, list[str]] = {i: [] for i in range(STEPS)}
    for phase, what in det.events:
        if phase >= 0:
            per_step[phase].append(what)
    return per_step


@pytest.mark.parametrize("name", list(METHOD_CONFIGS))
def test_no_host_sync_inside_training_steps(name: str, sync_detector: SyncDetector, tmp_path: Path) -> None:
    """log_every=3 over 6 steps: steps 1, 3, 4 sync nothing; step 2 (a log boundary) reads the metrics.

    Step 0 may build its one-time device caches (normalisation constants); step 5 is left out:
    it runs into the end of the epoch (epoch loss, checkpoint, export)."""
    per_step = syncs_per_step(loop_spec(METHOD_CONFIGS[name], log_every=3), sync_detector, tmp_path)
    inside = {i: per_step[i] for i in (1, 3, 4)}
    assert all(not v for v in inside.values()), f"{name}: host syncs inside training steps: {inside}"
    assert set(per_step[0]) <= {"aten.lift_fresh"}, f"{name}: host syncs in the first step: {per_step[0]}"
    assert per_step[2], "the detector must see the metric read at the log boundary (positive control)"


def test_no_metric_reads_between_log_boundaries(sync_detector: SyncDetector, tmp_path: Path) -> None:
    """log_every larger than the run: nothing is read back until the epoch ends."""
    per_step = syncs_per_step(loop_spec(METHOD_CONFIGS["simclr"], log_every=1000), sync_detector, tmp_path)
    assert all(not per_step[i] for i in range(STEPS - 1)), per_step


def test_detector_catches_the_usual_culprits(sync_detector: SyncDetector) -> None:
    x = torch.randn(4, 3)
    with sync_detector:
        x.sum().item()
        float(x.max())
        if x.mean() > 10:
            pass
        x[x > 0]
        torch.nonzero(x)
        x.tolist()
        torch.tensor([1.0, 2.0])
        torch.linalg.eigh(x.t() @ x)
        x.abs().repeat_interleave(torch.tensor([1, 2, 1, 0]), dim=0)
    seen = {w for _, w in sync_detector.events}
    assert {"aten._local_scalar_dense", "aten.index (boolean mask)", "aten.nonzero", "Tensor.tolist",
            "aten.lift_fresh", "aten._linalg_eigh"} <= seen, seen


# ---------------------------------------------------------------------------------------------
# fast path == plain path: same batch, same weights, same augmentation parameters

FAST_CONFIGS = {
    "simclr": {"name": "simclr"},
    "moco_v2": {"name": "moco", "version": 2, "queue_size": 16, "bn_splits": 2},
}
SIDE, BATCH = 16, 8


def method_and_batch(name: str):
    from ssl_core.data import make_synthetic

    spec = PretrainSpec.model_validate({
        "method": FAST_CONFIGS[name], "backbone": {"name": "convnet", "width": 4},
        "data": {"dataset": "synthetic", "image_size": SIDE}, "batch_size": BATCH, "device": "cpu",
    })
    torch.manual_seed(0)
    method = build_method(spec).train()
    images, _ = make_synthetic(BATCH, seed=3, size=SIDE)  # uint8 (B, 3, 16, 16) shapes on colour grounds
    return spec, method, images


def _tv_color_jitter(op, im, p):
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    keys = ["brightness", "contrast", "saturation", "hue"]
    if not p["apply"]:
        return im
    for o in p["order"].tolist():
        im = fns[o](im, float(p[keys[o]]))
    return im


# One image at a time, torchvision's functional ops (the usual per-sample pipeline), with the
# parameters the batched op drew for that image.
PER_IMAGE_REFERENCE = {
    "random_resized_crop": lambda op, im, p: TF.resized_crop(
        im, int(p["top"]), int(p["left"]), int(p["height"]), int(p["width"]), [op.out_size, op.out_size],
        antialias=True),
    "horizontal_flip": lambda op, im, p: TF.horizontal_flip(im) if p["apply"] else im,
    "color_jitter": _tv_color_jitter,
    "grayscale": lambda op, im, p: TF.rgb_to_grayscale(im, num_output_channels=3) if p["apply"] else im,
    "gaussian_blur": lambda op, im, p: TF.gaussian_blur(
        im, [op.kernel_size(*im.shape[-2:])] * 2, [float(p["sigma"])] * 2) if p["apply"] else im,
}


def plain_augment(pipeline: A.Pipeline):
    """The plain path: parameters drawn by each op's ``sample`` in the pipeline's order (so the
    generator yields the same values), then every image transformed alone in a Python loop."""
    assert pipeline._resizes  # SimCLR/MoCo start with random_resized_crop: no implicit resize

    def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = A.to_float(images)
        for op in pipeline.ops:
            b, c, h, w = x.shape
            params = op.sample(b, h, w, c, x.device, generator)
            ref = PER_IMAGE_REFERENCE[op.spec.op]
            x = torch.stack([ref(op, x[i], {k: v[i] for k, v in params.items()}) for i in range(b)])
        return x

    return augment


def loss_and_grads(method, images, seed: int = 7):
    loss, metrics = method.training_step(images, None, torch.Generator().manual_seed(seed))
    method.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_close_dicts(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m, k=k: f"{k}: {m}", **tol)


@pytest.mark.parametrize("name", list(FAST_CONFIGS))
def test_batched_pipeline_and_per_image_loop_give_the_same_loss(name: str) -> None:
    spec, method, images = method_and_batch(name)
    assert {op.spec.op for op in method.pipeline.ops} <= set(PER_IMAGE_REFERENCE)
    plain = copy.deepcopy(method)
    plain.augment = plain_augment(plain.pipeline)  # instance attribute: this copy only
    fast_loss, fast_grads = loss_and_grads(method, images)
    plain_loss, plain_grads = loss_and_grads(plain, images)
    assert torch.isfinite(fast_loss)
    torch.testing.assert_close(fast_loss, plain_loss, rtol=1e-4, atol=1e-5)
    assert_close_dicts(fast_grads, plain_grads, rtol=1e-3, atol=1e-4)
    # and the two paths really saw augmented views: a different draw gives a different loss
    other, _ = loss_and_grads(copy.deepcopy(plain), images, seed=8)
    assert not torch.allclose(other, plain_loss)


@pytest.mark.parametrize("name", list(FAST_CONFIGS))
def test_channels_last_gives_the_same_loss_and_step(name: str) -> None:
    spec, method, images = method_and_batch(name)
    cl = copy.deepcopy(method).to(memory_format=torch.channels_last)
    convs = [m.weight for m in cl.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
    losses = {}
    for tag, model in (("contiguous", method), ("channels_last", cl)):
        opt = build_optimizer(model, spec.optim)
        steps = []
        for seed in (1, 2):
            loss, _ = loss_and_grads(model, images, seed)
            opt.step()
            steps.append(loss)
        losses[tag] = torch.stack(steps)
    torch.testing.assert_close(losses["contiguous"], losses["channels_last"], rtol=1e-4, atol=1e-5)
    assert_close_dicts(dict(method.state_dict()), dict(cl.state_dict()), rtol=1e-4, atol=1e-5)


class LoopLARS(torch.optim.Optimizer):
    """SimCLR's LARS (see ssl_core/optim.py's docstring), one parameter at a time, plain Python."""

    def __init__(self, groups, lr, momentum, eta, nesterov=False):
        super().__init__(groups, dict(lr=lr, momentum=momentum, eta=eta, nesterov=nesterov, weight_decay=0.0,
                                      lars_adapt=True))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad + group["weight_decay"] * p
                trust = 1.0
                if group["lars_adapt"]:
                    wn, gn = float(p.norm()), float(g.norm())
                    trust = group["eta"] * wn / gn if wn > 0 and gn > 0 else 1.0
                scaled = group["lr"] * trust * g
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(scaled)
                p.sub_(scaled + group["momentum"] * buf if group["nesterov"] else buf)


def loop_optimizer(model, spec):
    from ssl_core.optim import param_groups

    o = spec.optim
    groups = param_groups(model, o)
    if o.name == "lars":
        return LoopLARS(groups, lr=o.lr, momentum=o.momentum, eta=o.lars_eta, nesterov=o.nesterov)
    assert o.name == "sgd"
    for g in groups:
        g.pop("lars_adapt", None)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, foreach=False)


@pytest.mark.parametrize("name", list(FAST_CONFIGS))
def test_foreach_optimizer_matches_a_for_loop(name: str) -> None:
    """SimCLR: LARS (torch._foreach_* ops) vs a per-parameter loop; MoCo v2: SGD foreach vs foreach=False."""
    spec, method, images = method_and_batch(name)
    loop_model = copy.deepcopy(method)
    fast = build_optimizer(method, spec.optim)
    if isinstance(fast, LARS):
        assert spec.optim.name == "lars"
    else:
        assert fast.defaults["foreach"] is True and not fast.defaults.get("fused")
    slow = loop_optimizer(loop_model, spec)
    fast_losses, slow_losses = [], []
    for step, seed in enumerate((1, 2, 3)):
        for model, opt, out in ((method, fast, fast_losses), (loop_model, slow, slow_losses)):
            for g in opt.param_groups:  # a real schedule value (warmup), the same for both
                g["lr"] = spec.optim.lr * (step + 1) / 3
            loss, _ = loss_and_grads(model, images, seed)
            opt.step()
            out.append(loss)
    torch.testing.assert_close(torch.stack(fast_losses), torch.stack(slow_losses), rtol=1e-4, atol=1e-5)
    # compare the updates, not the weights: LARS moves a weight by ~1e-5 of its size per step
    start = dict(method_and_batch(name)[1].named_parameters())
    moved = {k: (p.detach() - start[k].detach()) for k, p in method.named_parameters()}
    moved_loop = {k: (p.detach() - start[k].detach()) for k, p in loop_model.named_parameters()}
    assert moved.keys() == moved_loop.keys()
    trained = {k for k, p in method.named_parameters() if p.requires_grad}  # not MoCo's key encoder
    for k, d in moved.items():  # per tensor: LARS-scaled weights move far less than biases/BN
        scale = float(d.abs().max())
        assert scale > 0 or k not in trained, f"{k}: the optimizer did not move it"
        torch.testing.assert_close(d, moved_loop[k], rtol=1e-3, atol=1e-3 * scale, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fused optimizers need a CUDA device")
def test_fused_cuda_optimizer_matches_a_for_loop() -> None:
    from ssl_core.specs import OptimSpec

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)).cuda()
    ref = copy.deepcopy(model)
    spec = PretrainSpec.model_validate({"method": {"name": "simclr"}, "optim": OptimSpec(name="sgd", lr=0.1, weight_decay=1e-4)})
    fused = build_optimizer(model, spec.optim)
    assert fused.defaults["fused"] is True
    loop = loop_optimizer(ref, spec)
    x = torch.randn(16, 8, device="cuda")
    for _ in range(3):
        for m, opt in ((model, fused), (ref, loop)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    assert_close_dicts(dict(model.named_parameters()), dict(ref.named_parameters()), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the speed switches (precision, channels_last, compile) reach the loop

def test_precision_auto_is_bf16_on_capable_gpus_and_fp32_on_cpu(monkeypatch) -> None:
    from ssl_core.runtime import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) == (None, False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")) == (torch.bfloat16, False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda")) == (None, False)  # e.g. V100: fp32, no scaler


def test_channels_last_and_compile_switches_reach_the_model(monkeypatch, tmp_path: Path) -> None:
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    # the real Pipeline.compile is checked in tests/core/test_augment.py
    monkeypatch.setattr(A.Pipeline, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    import ssl_core.train as train_module

    trained = []  # the first conv's weight as the model holds it when a checkpoint is written
    save = train_module.Trainer.save_checkpoint
    monkeypatch.setattr(train_module.Trainer, "save_checkpoint", lambda self: (
        trained.append(self.method.state_dict()["backbone.features.0.weight"]), save(self))[1])
    for channels_last, compile_ in ((True, True), (False, False)):
        spec = loop_spec(METHOD_CONFIGS["simclr"], log_every=10, channels_last=channels_last, compile=compile_)
        out = tmp_path / f"cl{channels_last}"
        pretrain(spec, out, resume=False)
        conv = trained[-1]  # (out, in, 3, 3): the layout it trained in
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert conv.is_contiguous() != channels_last
    assert compiled == ["ConvNet", "Pipeline"]  # the backbone and the augmentation, once, and only when asked
