"""ssl_core.augment: shapes, ranges, per-sample randomness, and agreement with per-image references.

References: torchvision.transforms.v2.functional applied image by image where a counterpart
exists; otherwise a loop-based reference written here (colorsys, numpy eigh, explicit windows).
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from ssl_core import augment as A
from ssl_core.augment import colour
from ssl_core import specs

ALL_OPS = sorted(A.OP_CLASSES)
# ops whose only randomness is the apply mask
MASK_ONLY = {"grayscale", "solarize", "edge_map", "detexturize", "horizontal_flip"}
TOL = 1e-4


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 6, c: int = 3, side: int = 12, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random images (a blurred noise field) so colour and geometry ops do something."""
    g = gen(seed)
    x = torch.rand(b, c, side // 2, side // 2, generator=g)
    return torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False).clamp(0, 1)


def op_with(name: str, out_size: int = 12, **kw) -> A.AugmentOpImpl:
    return A.build_op({"op": name, **kw}, out_size)


def run(op: A.AugmentOpImpl, x: torch.Tensor, seed: int = 1):
    b, c, h, w = x.shape
    p = op.sample(b, h, w, c, x.device, gen(seed))
    return op.apply(x, p), p


# ---------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", ALL_OPS)
def test_every_op_keeps_shape_dtype_and_range(name: str, channels: int) -> None:
    x = images(c=channels)
    y, params = run(op_with(name, p=1.0), x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert params["apply"].shape == (x.shape[0],) and params["apply"].dtype == torch.bool
    for v in params.values():
        assert v.shape[0] == x.shape[0], "every parameter is per sample"


@pytest.mark.parametrize("name", ALL_OPS)
def test_identical_inputs_come_out_different(name: str) -> None:
    """Per-sample parameters: 16 copies of one image are not all augmented the same way."""
    one = images(b=1, c=3)
    x = one.expand(16, -1, -1, -1).contiguous()
    p = 0.5 if name in MASK_ONLY else 1.0
    y, params = run(op_with(name, p=p), x, seed=3)
    distinct = {tuple(np.round(y[i].flatten().numpy(), 4)) for i in range(16)}
    assert len(distinct) > 1
    if name not in MASK_ONLY:
        # a continuous parameter differs across the batch
        varying = [k for k, v in params.items() if k != "apply" and v.float().std() > 0]
        assert varying, f"{name}: no parameter varies across the batch"
        # discrete offsets (random_crop: 49 of them) may collide now and then
        assert len(distinct) >= 12


@pytest.mark.parametrize("name", ALL_OPS)
def test_p0_is_identity_and_p1_always_applies(name: str) -> None:
    x = images(b=8, c=3)
    y0, p0 = run(op_with(name, p=0.0), x)
    assert not p0["apply"].any()
    torch.testing.assert_close(y0, x, rtol=0, atol=1e-6)
    y1, p1 = run(op_with(name, p=1.0), x)
    assert p1["apply"].all()
    changed = (y1 - x).flatten(1).abs().amax(1) > 1e-4
    assert changed.all(), f"{name}: p=1 left some images unchanged"


@pytest.mark.parametrize("name", ALL_OPS)
def test_seeded_generator_is_reproducible(name: str) -> None:
    x = images(b=5)
    a, _ = run(op_with(name, p=0.7), x, seed=11)
    b, _ = run(op_with(name, p=0.7), x, seed=11)
    c, _ = run(op_with(name, p=0.7), x, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_probability_is_per_sample() -> None:
    x = images(b=400, side=4)
    _, p = run(op_with("grayscale", p=0.3), x)
    frac = p["apply"].float().mean()
    assert 0.2 < frac < 0.4


# ---------------------------------------------------------------------------
# agreement with per-image references, for the same drawn parameters
def per_image(x, fn):
    return torch.stack([fn(i, x[i]) for i in range(x.shape[0])])


def test_random_resized_crop_matches_torchvision() -> None:
    x = images(b=8, side=16)
    op = op_with("random_resized_crop", out_size=16, p=1.0)
    y, p = run(op, x)
    ref = per_image(x, lambda i, im: TF.resized_crop(
        im, int(p["top"][i]), int(p["left"][i]), int(p["height"][i]), int(p["width"][i]), [16, 16], antialias=True))
    torch.testing.assert_close(y, ref, rtol=0, atol=TOL)
    # boxes are valid and follow the scale / ratio bounds
    area = (p["height"] * p["width"]).float() / 256
    assert (area >= 0.08 - 0.07).all() and (area <= 1).all()
    assert (p["top"] + p["height"] <= 16).all() and (p["left"] + p["width"] <= 16).all()


def test_crop_resize_shrinking_averages_sub_samples_and_fuses_the_flip() -> None:
    """A box larger than the output: each output pixel is the mean of s x s bilinear
    sub-samples (s = ceil(input / size)); crop_resize's flip mirrors exactly that output."""
    x = images(b=4, side=20)
    top, left = torch.tensor([0, 2, 5, 1]), torch.tensor([0, 3, 1, 7])
    height, width = torch.tensor([20, 15, 12, 9]), torch.tensor([20, 17, 14, 13])
    y = A.crop_resize(x, top, left, height, width, 8)
    s, n = 3, 24  # ceil(20 / 8), 8 * 3 sub-samples per axis

    def ref(i, im):
        crop = im[:, int(top[i]): int(top[i] + height[i]), int(left[i]): int(left[i] + width[i])]
        pos = (torch.arange(n, dtype=torch.float64) + 0.5) / s  # output-pixel units

        def taps(length):
            src = (pos * length / 8 - 0.5).clamp(0, length - 1)
            lo = src.floor().long()
            hi = (lo + 1).clamp(max=length - 1)
            return lo, hi, src - lo

        (y0, y1, fy), (x0, x1, fx) = taps(int(height[i])), taps(int(width[i]))
        c = crop.double()
        rows = c[:, y0] * (1 - fy).view(1, n, 1) + c[:, y1] * fy.view(1, n, 1)
        sub = rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx  # (C, n, n)
        return torch.nn.functional.avg_pool2d(sub.unsqueeze(0), s)[0].float()

    torch.testing.assert_close(y, per_image(x, ref), rtol=0, atol=TOL)
    flip = torch.tensor([True, False, True, False])
    yf = A.crop_resize(x, top, left, height, width, 8, flip)
    torch.testing.assert_close(yf, torch.where(flip.view(4, 1, 1, 1), y.flip(-1), y), rtol=0, atol=1e-6)


def test_pipeline_fuses_the_flip_into_the_crop_with_the_same_draws(monkeypatch) -> None:
    """SimCLR's crop, flip, jitter, gray, blur (and MoCo v2's crop, jitter, gray, blur, flip), their
    large-image recipes: the pipeline folds the flip into the crop and must give what the ops give
    one by one, with the generator consumed in the pipeline's order."""
    real_flip = A.HorizontalFlip.apply
    for m in (specs.SimCLRSpec(), specs.MoCoSpec(version=2)):
        pipe = A.build_pipeline(specs.default_augment(m, 96), 16)  # 96: the recipes with blur
        x = (images(b=16, side=20) * 255).to(torch.uint8)
        g = gen(4)
        ref = A.to_float(x)
        for op in pipe.ops:
            b, c, h, w = ref.shape
            ref = op.apply(ref, op.sample(b, h, w, c, ref.device, g))

        def unfused(self, x, params):
            raise AssertionError("the pipeline applied the flip on its own instead of folding it into the crop")

        monkeypatch.setattr(A.HorizontalFlip, "apply", unfused)  # the fused pipeline never calls it
        torch.testing.assert_close(pipe(x, gen(4)), ref, rtol=0, atol=1e-5)
        monkeypatch.setattr(A.HorizontalFlip, "apply", real_flip)


def test_random_resized_crop_resizes_to_out_size() -> None:
    x = images(b=3, side=20)
    y, _ = run(op_with("random_resized_crop", out_size=8, p=1.0), x)
    assert y.shape == (3, 3, 8, 8)


def test_random_crop_matches_pad_and_slice() -> None:
    x = images(b=6)
    y, p = run(op_with("random_crop", p=1.0, padding=3), x)
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    ref = per_image(padded, lambda i, im: im[:, int(p["top"][i]): int(p["top"][i]) + 12,
                                            int(p["left"][i]): int(p["left"][i]) + 12])
    torch.testing.assert_close(y, ref, rtol=0, atol=0)


def test_horizontal_flip_matches_torchvision() -> None:
    x = images(b=10)
    y, p = run(op_with("horizontal_flip", p=0.5), x)
    ref = per_image(x, lambda i, im: TF.horizontal_flip(im) if p["apply"][i] else im)
    assert torch.equal(y, ref)


def test_rotate_matches_torchvision() -> None:
    x = images(b=6, side=16)
    y, p = run(op_with("rotate", p=1.0, degrees=90.0), x)
    ref = per_image(x, lambda i, im: TF.rotate(im, float(p["angle"][i]), interpolation=InterpolationMode.BILINEAR))
    torch.testing.assert_close(y, ref, rtol=0, atol=TOL)


def test_random_affine_matches_torchvision() -> None:
    x = images(b=6, side=16)
    y, p = run(op_with("random_affine", p=1.0), x)
    # torchvision's affine angle is clockwise, ours (like its rotate) counter-clockwise
    ref = per_image(x, lambda i, im: TF.affine(
        im, -float(p["angle"][i]), [float(p["tx"][i]), float(p["ty"][i])], float(p["scale"][i]), [0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR))
    torch.testing.assert_close(y, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_matches_torchvision_in_per_sample_order(channels: int) -> None:
    x = images(b=12, c=channels)
    y, p = run(op_with("color_jitter", p=0.8), x, seed=5)
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    keys = ["brightness", "contrast", "saturation", "hue"]

    def ref(i, im):
        if not p["apply"][i]:
            return im
        for o in p["order"][i].tolist():
            im = fns[o](im, float(p[keys[o]][i]))
        return im

    torch.testing.assert_close(y, per_image(x, ref), rtol=0, atol=TOL)
    orders = {tuple(o) for o in p["order"].tolist()}
    assert len(orders) > 1, "the order is drawn per sample"


def test_adjust_hue_matches_torchvision_on_ties_grays_and_extreme_shifts() -> None:
    """The branch-free hue (channel of the max picked by ceil/lerp, period by |6 - d|) on the
    cases a branchy formula gets wrong: channels tied at the max or min, gray pixels, black,
    white, saturated primaries, and shifts up to +-0.5 turn."""
    g = gen(3)
    x = (torch.randint(0, 256, (24, 3, 4, 4), generator=g).float() / 255)
    x[0:4] = x[0:4, :1]  # gray
    x[4:8, 1] = x[4:8, 0]  # r == g
    x[8:12, 2] = x[8:12, 1]  # g == b
    x[12:14] = 0.0
    x[14:16] = 1.0
    x[16, :, :, :] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    x[17, :, :, :] = torch.tensor([0.0, 1.0, 1.0]).view(3, 1, 1)
    shift = torch.linspace(-0.5, 0.5, 24)
    y = A.adjust_hue(x, shift)
    ref = per_image(x, lambda i, im: TF.adjust_hue(im, float(shift[i])))
    torch.testing.assert_close(y, ref, rtol=0, atol=TOL)
    torch.testing.assert_close(A.adjust_hue(x, torch.zeros(24)), x, rtol=0, atol=1e-5)  # shift 0: identity


def test_grayscale_matches_torchvision_and_is_identity_on_one_channel() -> None:
    x = images(b=8)
    y, p = run(op_with("grayscale", p=0.5), x)
    ref = per_image(x, lambda i, im: TF.rgb_to_grayscale(im, num_output_channels=3) if p["apply"][i] else im)
    torch.testing.assert_close(y, ref, rtol=0, atol=TOL)
    g = images(b=4, c=1)
    assert torch.equal(run(op_with("grayscale", p=1.0), g)[0], g)


def test_gaussian_blur_matches_torchvision() -> None:
    x = images(b=6, side=20)
    op = op_with("gaussian_blur", p=1.0, kernel_fraction=0.3)
    y, p = run(op, x)
    k = op.kernel_size(20, 20)
    assert k == 7  # int(20 * 0.3) = 6 -> radius 3 -> 7, as SimCLR's code
    ref = per_image(x, lambda i, im: TF.gaussian_blur(im, [k, k], [float(p["sigma"][i])] * 2))
    torch.testing.assert_close(y, ref, rtol=0, atol=TOL)


def test_solarize_matches_torchvision() -> None:
    x = images(b=8)
    y, p = run(op_with("solarize", p=0.5, threshold=0.4), x)
    ref = per_image(x, lambda i, im: TF.solarize(im, 0.4) if p["apply"][i] else im)
    assert torch.equal(y, ref)


def test_sharpen_matches_torchvision_adjust_sharpness() -> None:
    x = images(b=6)
    y, p = run(op_with("sharpen", p=1.0), x)
    ref = per_image(x, lambda i, im: TF.adjust_sharpness(im, 1.0 + float(p["strength"][i])))
    torch.testing.assert_close(y, ref, rtol=0, atol=TOL)


def test_hsv_power_matches_colorsys_reference() -> None:
    x = images(b=3, side=6)
    y, p = run(op_with("hsv_power", p=1.0), x)
    ref = torch.empty_like(x)
    for i in range(3):
        pw, fa, sh = p["power"][i].tolist(), p["factor"][i].tolist(), p["shift"][i].tolist()
        for r in range(6):
            for c in range(6):
                h, s, v = colorsys.rgb_to_hsv(*x[i, :, r, c].tolist())
                s = min(1.0, max(0.0, s ** pw[0] * fa[0] + sh[0]))
                v = min(1.0, max(0.0, v ** pw[1] * fa[1] + sh[1]))
                h = (h + float(p["hue"][i])) % 1.0
                ref[i, :, r, c] = torch.tensor(colorsys.hsv_to_rgb(h, s, v))
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-4)


def test_hsv_power_on_gray_transforms_intensity() -> None:
    x = images(b=4, c=1)
    y, p = run(op_with("hsv_power", p=1.0), x)
    pw, fa, sh = (p[k][:, 1].view(-1, 1, 1, 1) for k in ("power", "factor", "shift"))
    torch.testing.assert_close(y, (x ** pw * fa + sh).clamp(0, 1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_pca_contrast_matches_numpy_reference(channels: int) -> None:
    x = images(b=4, c=channels) * 0.5 + 0.25  # away from the clamp
    y, p = run(op_with("pca_contrast", p=1.0, factor=(0.5, 1.5)), x)
    for i in range(4):
        pix = x[i].reshape(channels, -1).double().numpy()
        mu = pix.mean(1, keepdims=True)
        cov = (pix - mu) @ (pix - mu).T / pix.shape[1]
        _, vecs = np.linalg.eigh(cov)
        proj = vecs.T @ (pix - mu) * p["factor"][i].double().numpy()[:, None]
        ref = np.clip(mu + vecs @ proj, 0, 1).reshape(x[i].shape)
        np.testing.assert_allclose(y[i].numpy(), ref, atol=1e-4)


def test_symmetric_eigh_matches_torch_linalg() -> None:
    """The sync-free Jacobi solver PCA contrast uses, against torch.linalg.eigh (degenerate cases too)."""
    g = gen(0)
    x = torch.randn(20, 3, 30, generator=g, dtype=torch.float64)
    cov = x @ x.transpose(1, 2) / 30
    cov[0] = torch.eye(3, dtype=torch.float64)
    cov[1] = 0.0
    vals, vecs = A.symmetric_eigh(cov)
    ref_vals, _ = torch.linalg.eigh(cov)
    torch.testing.assert_close(vals, ref_vals, rtol=0, atol=1e-12)
    torch.testing.assert_close(vecs @ torch.diag_embed(vals) @ vecs.transpose(1, 2), cov, rtol=0, atol=1e-12)
    torch.testing.assert_close(vecs.transpose(1, 2) @ vecs, torch.eye(3, dtype=torch.float64).expand(20, 3, 3),
                               rtol=0, atol=1e-12)


def test_pca_contrast_factor_one_is_identity() -> None:
    x = images(b=3)
    op = op_with("pca_contrast", p=1.0, factor=(1.0, 1.0))
    torch.testing.assert_close(run(op, x)[0], x, rtol=0, atol=1e-5)


def test_edge_map_matches_loop_reference() -> None:
    x = images(b=3, side=8)
    y, _ = run(op_with("edge_map", p=1.0), x)
    kx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    for i in range(3):
        gray = (0.2989 * x[i, 0] + 0.587 * x[i, 1] + 0.114 * x[i, 2]).numpy()
        g = np.pad(gray, 1, mode="edge")
        mag = np.zeros((8, 8))
        for r in range(8):
            for c in range(8):
                win = g[r:r + 3, c:c + 3]
                gx = (win * np.array(kx)).sum()
                gy = (win * np.array(kx).T).sum()
                mag[r, c] = math.hypot(gx, gy)
        mag /= mag.max()
        for ch in range(3):
            np.testing.assert_allclose(y[i, ch].numpy(), mag, atol=1e-5)


def test_detexturize_matches_naive_bilateral_and_preserves_edges() -> None:
    x = images(b=2, side=6)
    op = op_with("detexturize", p=1.0, sigma_space=1.0, sigma_color=0.2, iterations=1)
    y, _ = run(op, x)
    r = 2
    ref = torch.empty_like(x)
    for i in range(2):
        for yy in range(6):
            for xx in range(6):
                num, den = torch.zeros(3), 0.0
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        qy, qx = min(max(yy + dy, 0), 5), min(max(xx + dx, 0), 5)
                        q = x[i, :, qy, qx]
                        wgt = math.exp(-(dy * dy + dx * dx) / 2.0) * math.exp(
                            -float(((q - x[i, :, yy, xx]) ** 2).sum()) / (2 * 0.2 ** 2))
                        num += wgt * q
                        den += wgt
                ref[i, :, yy, xx] = num / den
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-5)
    # a step edge survives (edge-preserving), while flat regions stay flat
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1.0
    out, _ = run(op_with("detexturize", p=1.0), step)
    assert float(out[..., :3].max()) < 0.01 and float(out[..., 5:].min()) > 0.99


# ---------------------------------------------------------------------------
# the pipeline
@pytest.mark.parametrize("method", ["simclr", "moco", "rotation", "exemplar"])
def test_default_pipelines_run_on_uint8(method: str) -> None:
    # MoCo's default queue (4096) is longer than the synthetic set allows; the pipeline does not depend on it
    queue = {"queue_size": 256} if method == "moco" else {}
    m = specs.PretrainSpec(method={"name": method, **queue}, data={"dataset": "synthetic"}).method
    pipe = A.build_pipeline(specs.default_augment(m, 16), 16)
    x = (images(b=4, side=20) * 255).to(torch.uint8)
    y = pipe(x, gen(0))
    assert y.shape == (4, 3, 16, 16) and y.dtype == torch.float32
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    assert torch.equal(y, pipe(x, gen(0)))


def test_pipeline_accepts_dicts_gray_images_and_resizes_without_crop() -> None:
    pipe = A.build_pipeline([{"op": "color_jitter", "p": 1.0}, {"op": "horizontal_flip"}], 8)
    x = (images(b=3, c=1, side=12) * 255).to(torch.uint8)
    y = pipe(x, gen(0))
    assert y.shape == (3, 1, 8, 8)
    assert A.build_pipeline([], 12)(x).shape == (3, 1, 12, 12)
    torch.testing.assert_close(A.build_pipeline([], 12)(x), A.to_float(x))


def test_pipeline_stays_fp32_under_autocast() -> None:
    pipe = A.build_pipeline([specs.GaussianBlurOp(p=1.0), specs.EdgeMapOp(p=1.0)], 12)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        y = pipe(images(b=2), gen(0))
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, pipe(images(b=2), gen(0)))


def test_to_float_and_normalize() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    f = A.to_float(x)
    assert f.dtype == torch.float32
    torch.testing.assert_close(f.flatten(), torch.tensor([0.0, 0.2, 1.0]))
    y = A.normalize(f.expand(1, 3, 1, 3), (0.5,), (0.25,))  # gray statistics repeated to 3 channels
    torch.testing.assert_close(y[0, :, 0, 2], torch.full((3,), 2.0))
    z = A.normalize(torch.ones(2, 3, 2, 2), (0.0, 0.5, 1.0), (1.0, 0.5, 2.0))
    torch.testing.assert_close(z[0, :, 0, 0], torch.tensor([1.0, 1.0, 0.0]))
    with pytest.raises(ValueError):
        A.normalize(torch.ones(1, 3, 2, 2), (0.1, 0.2), (1.0, 1.0))


def test_pointwise_jitter_step_equals_the_matrix_step() -> None:
    # the compiled path's blend step (pointwise) and the eager one (baddbmm) compute the same map
    g = gen(3)
    for c in (1, 3):
        v = torch.rand(5, c, 40, generator=g)
        ops = torch.tensor([0, 1, 2, 3, 1])[:, None]  # brightness, contrast, saturation, none
        f = torch.rand(5, 1, generator=g) * 1.6
        a, w_luma, w_mean, lw = colour._jitter_coefficients(ops, f, c)
        mats = colour._colour_matrices(a, w_luma, lw)
        eager = colour._blend_step(v, mats[:, 0], w_mean[:, 0], lw)
        pointwise = colour._blend_step_pointwise(v, a[:, 0], w_luma[:, 0], w_mean[:, 0], lw)
        torch.testing.assert_close(pointwise, eager, rtol=0, atol=1e-6)
        assert torch.equal(eager[3], v[3])  # 'none' reproduces the input exactly
        if c == 3:  # the ops really differ per sample
            assert not torch.allclose(eager[2], v[2]) and not torch.allclose(eager[1], v[1])


def test_compiled_pipeline_matches_eager_with_the_same_draws() -> None:
    from torch._dynamo.utils import counters

    # colour ops between the crop and the flip (the flip is fused into the crop, the ops between
    # run after it), then ops after the flip
    ops = [specs.RandomResizedCropOp(), specs.ColorJitterOp(p=0.9), specs.GrayscaleOp(p=0.3),
           specs.HorizontalFlipOp(), specs.SolarizeOp(p=0.5), specs.HSVPowerOp(p=0.7)]
    eager = A.build_pipeline(ops, 12)
    compiled = A.build_pipeline(ops, 12).compile()
    # pointwise ops are compiled; the crop (grid_sample) stays eager
    assert [fn is None for fn in compiled._compiled] == [True, False, False, False, False, False]
    x = (images(b=8, side=16) * 255).to(torch.uint8)
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    y_comp = compiled(x, gen(4))  # compiled first: nothing is cached by an eager run before
    y_eager = eager(x, gen(4))
    assert y_comp.shape == y_eager.shape == (8, 3, 12, 12)
    # float rounding of the fused arithmetic, amplified where the hue's chroma is tiny
    torch.testing.assert_close(y_comp, y_eager, rtol=0, atol=1e-3)
    assert float((y_comp - y_eager).abs().mean()) < 1e-5
    graphs = counters["stats"]["unique_graphs"] - before
    assert graphs >= 4  # jitter, grayscale, solarize, HSV power
    assert not torch.equal(compiled(x, gen(5)), compiled(x, gen(4)))
    assert counters["stats"]["unique_graphs"] - before == graphs  # same shapes: no recompilation


def test_augment_views_are_independent_draws_in_one_call() -> None:
    spec = specs.PretrainSpec(method={"name": "simclr"}, data={"dataset": "synthetic", "image_size": 16})
    from ssl_core.registry import build_method

    method = build_method(spec)
    x = (images(b=4, side=16) * 255).to(torch.uint8)
    v = method.augment_views(x, 2, gen(0))
    assert v.shape == (8, 3, 16, 16)
    # row k B + i is view k of image i: the same as the pipeline on the batch repeated
    torch.testing.assert_close(v, method.pipeline(torch.cat([x, x]), gen(0)), rtol=0, atol=0)
    assert not torch.allclose(v[:4], v[4:])  # two different views of each image


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_same_code_runs_on_cuda() -> None:
    ops = [specs.RandomResizedCropOp(), specs.HorizontalFlipOp(), specs.ColorJitterOp(), specs.GrayscaleOp(),
           specs.GaussianBlurOp(), specs.SolarizeOp(), specs.PCAContrastOp(), specs.HSVPowerOp(),
           specs.RandomAffineOp(), specs.SharpenOp(), specs.EdgeMapOp(), specs.DetexturizeOp(), specs.RandomCropOp()]
    pipe = A.build_pipeline(ops, 16)
    x = (images(b=8, side=16) * 255).to(torch.uint8)
    g_cuda = torch.Generator(device="cuda").manual_seed(0)
    y = pipe(x.cuda(), g_cuda)
    assert y.is_cuda and y.shape == (8, 3, 16, 16)
    # a CPU generator with CUDA data works too (parameters drawn on the CPU, then moved)
    y2 = pipe(x.cuda(), gen(0))
    torch.testing.assert_close(y2.cpu(), pipe(x, gen(0)), rtol=0, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_compiled_pipeline_on_cuda_matches_eager() -> None:
    ops = [specs.RandomResizedCropOp(), specs.ColorJitterOp(p=0.9), specs.GrayscaleOp(p=0.3),
           specs.HorizontalFlipOp(), specs.SolarizeOp(p=0.5)]
    eager, compiled = A.build_pipeline(ops, 16), A.build_pipeline(ops, 16).compile()
    x = (images(b=8, side=20) * 255).to(torch.uint8).cuda()

    def g_cuda(seed: int) -> torch.Generator:
        return torch.Generator(device="cuda").manual_seed(seed)

    y = compiled(x, g_cuda(4))
    assert y.is_cuda and y.shape == (8, 3, 16, 16)
    torch.testing.assert_close(y, eager(x, g_cuda(4)), rtol=0, atol=1e-3)
