"""Batched, device-side image augmentation with per-sample random parameters.

The declarative ops of :mod:`ssl_core.specs` (``AugmentOp``) become a :class:`Pipeline`
that augments a whole batch (B, C, H, W) in a handful of tensor ops, on whatever
device the batch lives on (CPU or CUDA, same code). Every op

* ``sample(batch, height, width, channels, device, generator) -> dict[str, Tensor]``
  draws the PER-SAMPLE random parameters, including ``apply`` -- the (B,) bool mask of
  samples the op acts on (drawn with the op's probability ``p``), and
* ``apply(x, params) -> x`` transforms the float batch in [0, 1] with those parameters.

No op loops over samples in Python or reads a value back to the host (no ``.item()``),
so a training step that augments on the GPU never waits on the CPU. Python loops that
remain are over a fixed, tiny number of things (the 4 positions of colour jitter, the
window offsets of the bilateral filter).

Semantics follow torchvision's transforms, per sample (the tests compare each op with
``torchvision.transforms.v2.functional`` applied image by image):

* random_resized_crop -- torchvision's box sampling (10 tries, central-crop fallback,
  integer boxes), crop-and-resize of the whole batch by one ``grid_sample`` (bilinear,
  sub-sample averaging when shrinking, which acts as the anti-aliasing filter); a
  horizontal flip that follows it (possibly after colour ops) is folded into its sampling
  grid by the Pipeline.
* random_crop -- zero padding then a random crop of the original size (RotNet's
  ``RandomCrop(32, padding=4)``), one gather.
* horizontal_flip, rotate, random_affine -- flips by ``torch.where``; rotations and
  affine maps through one ``affine_grid`` + ``grid_sample`` (bilinear, zero fill).
* color_jitter -- brightness, contrast, saturation, hue in a random order PER SAMPLE
  (torchvision draws one order per call): every sample runs the cheap ops its own
  permutation puts before the hue, then the hue (one branch-free HSV pass for the batch),
  then the cheap ops after it; brightness/contrast/saturation are per-sample 3x3 colour
  matrices plus a mean-luma term, one batched matmul per position.
  On 1-channel images brightness and contrast apply; saturation and hue are the identity
  (as in torchvision).
* grayscale -- ITU-R 601 luma (torchvision's weights); identity on 1-channel images.
* gaussian_blur -- separable grouped convolution with a per-sample sigma (reflect
  padding, kernel side = kernel_fraction x side made odd, as SimCLR's code).
* solarize, sharpen (= torchvision ``adjust_sharpness`` with factor 1 + strength, an
  unsharp mask), edge_map (Sobel magnitude of the luma, normalised by its per-image
  maximum), detexturize (iterated bilateral filter), pca_contrast and hsv_power
  (Exemplar-CNN's 'contrast 1' and 'contrast 2' + hue, Dosovitskiy et al. 2014).

``Pipeline.compile()`` (the spec's ``compile: true``) compiles the ``apply`` of the pointwise
ops with ``torch.compile``; the draws stay eager, so the same generator gives the same
parameters, and the values agree with the eager ops to float rounding.

Random numbers come from ``generator`` (pass one on the batch's device: a CPU generator
with CUDA data works, but each draw is then a host-to-device copy). On a CPU shared with
other processes, set OMP_WAIT_POLICY=PASSIVE (the ``pretextlab`` command does unless told
otherwise; see docs/performance.md): these ops are
small, and spinning OpenMP threads can slow them down more than tenfold. On CPUs, ``torch.where``
and comparisons over whole images are slow (bool tensors are not vectorised), so exact
per-sample selections use ``lerp`` with 0/1 weights or per-sample matrices instead.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_core import specs

Params = dict[str, Tensor]

# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
_LUMA = (0.2989, 0.587, 0.114)


# ---------------------------------------------------------------------------
# Helpers
def to_float(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; a floating tensor is returned as float32 unchanged."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point():
        raise TypeError(f"to_float: expected uint8 or floating images, got {x.dtype}")
    return x.float()


_STATS_CACHE: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(x - mean) / std per channel. x: (B, C, H, W) float.

    A 1-value mean/std (a grayscale dataset) is repeated to the image's C channels, so
    ``data.channels=3`` on Fashion-MNIST uses its own statistics on every channel. The
    statistics tensors are cached per device so a training step does no host-to-device copy.
    """
    c = x.shape[1]
    mean_t, std_t = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean_t) == 1 and c != 1:
        mean_t, std_t = mean_t * c, std_t * c
    if len(mean_t) != c or len(std_t) != c:
        raise ValueError(f"normalize: {len(mean_t)} mean values for {c} channels")
    key = (mean_t, std_t, x.device, x.dtype)
    if key not in _STATS_CACHE:
        m = torch.tensor(mean_t, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        s = torch.tensor(std_t, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        _STATS_CACHE[key] = (m, s)
    m, s = _STATS_CACHE[key]
    return (x - m) / s


_CONSTS: dict[tuple[Any, ...], Tensor] = {}


def _const(values: Any, like: Tensor) -> Tensor:
    """A small constant tensor on like's device and dtype, built once per device: creating it
    from Python on every call would be a pageable host-to-device copy, which blocks the host
    until the GPU has caught up."""
    if torch.compiler.is_compiling():
        # inside Pipeline.compile()'s graphs: a graph constant (built once, at compile time);
        # reading the global cache would guard on its contents and recompile once it fills
        return torch.tensor(values, dtype=like.dtype, device=like.device)
    key = (values, like.device, like.dtype)
    t = _CONSTS.get(key)
    if t is None:
        t = _CONSTS[key] = torch.tensor(values, dtype=like.dtype, device=like.device)
    return t


def _rand(shape: Sequence[int], device: torch.device, generator: torch.Generator | None) -> Tensor:
    """U[0, 1) on `device`, drawn from `generator` (on the generator's own device if it differs)."""
    if generator is not None and torch.device(generator.device).type != torch.device(device).type:
        return torch.rand(tuple(shape), generator=generator, device=generator.device).to(device, non_blocking=True)
    return torch.rand(tuple(shape), generator=generator, device=device)


def _uniform(shape: Sequence[int], lo: float, hi: float, device, generator) -> Tensor:
    return lo + (hi - lo) * _rand(shape, device, generator)


def _bernoulli(batch: int, p: float, device, generator) -> Tensor:
    """(B,) bool mask, True with probability p (p=0: never, p=1: always)."""
    return _rand((batch,), device, generator) < p


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per-sample select: mask (B,) bool; a, b (B, C, H, W)."""
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def _luma(x: Tensor) -> Tensor:
    """(B, 1, H, W) grayscale; a 1-channel image is its own luma."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2]).unsqueeze(1)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV with every component in [0, 1] (torchvision's formula)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    eqc = maxc == minc
    rng = maxc - minc
    ones = torch.ones_like(maxc)
    s = rng / torch.where(eqc, ones, maxc)
    div = torch.where(eqc, ones, rng)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~is_r & ~is_g
    h = (bc - gc) * is_r + (2.0 + rc - bc) * is_g + (4.0 + gc - rc) * is_b
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), 1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """(B, 3, H, W) HSV in [0, 1] -> RGB, branch-free: c_n = v - v s clamp(min(k, 4 - k), 0, 1),
    k = (n + 6h) mod 6 for n = 5, 3, 1 (R, G, B)."""
    h, s, v = x.unbind(1)
    n = _const((5.0, 3.0, 1.0), x).view(1, 3, 1, 1)
    k = torch.remainder(n + h.unsqueeze(1) * 6.0, 6.0)
    t = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    v, s = v.unsqueeze(1), s.unsqueeze(1)
    return (v - v * s * t).clamp_(0.0, 1.0)


def _affine_warp(x: Tensor, inv: Tensor) -> Tensor:
    """Warp x (B, C, H, W) with per-sample 2x3 maps `inv` from OUTPUT to INPUT pixel
    coordinates centred on the image centre (x right, y down). One affine_grid +
    grid_sample for the batch; bilinear, zeros outside (torchvision's default fill)."""
    b, _, h, w = x.shape
    # align_corners=False: normalised coordinate u covers [-1, 1] over the image edges,
    # so pixel (centred) = u * side / 2.
    d = _const((w / 2.0, h / 2.0), x)
    theta = torch.empty(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, :, :2] = inv[:, :, :2] * d.view(1, 1, 2) / d.view(1, 2, 1)
    theta[:, :, 2] = inv[:, :, 2] / d.view(1, 2)
    grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    return grid_sample_clamped(x, grid)


def grid_sample_clamped(x: Tensor, grid: Tensor) -> Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0.0, 1.0)


def _odd_kernel(side: int, fraction: float) -> int:
    """SimCLR's kernel: side * fraction, made odd (radius = k // 2, k = 2 r + 1), at least 3."""
    radius = int(side * fraction) // 2
    return max(3, 2 * radius + 1)


def _separable_conv(x: Tensor, kh: Tensor, kw: Tensor, mode: str = "reflect") -> Tensor:
    """Per-sample separable filter. x (B, C, H, W); kh, kw (B, k) 1-D kernels.

    One grouped conv per axis over (1, B*C, H, W): each (sample, channel) plane is its own group."""
    b, c, h, w = x.shape
    k = kh.shape[1]
    r = k // 2
    y = x.reshape(1, b * c, h, w)
    pad_mode = mode if (h > r and w > r) or mode != "reflect" else "replicate"
    y = F.pad(y, (r, r, r, r), mode=pad_mode)
    wv = kh.repeat_interleave(c, 0).view(b * c, 1, k, 1).to(x.dtype)
    wh = kw.repeat_interleave(c, 0).view(b * c, 1, 1, k).to(x.dtype)
    y = F.conv2d(y, wv, groups=b * c)
    y = F.conv2d(y, wh, groups=b * c)
    return y.view(b, c, h, w)


# ---------------------------------------------------------------------------
# Ops
class AugmentOpImpl:
    """Base: ``sample`` draws per-sample parameters, ``apply`` uses them. Size-preserving
    unless ``resizes`` (then the output side is ``out_size``)."""

    resizes = False
    # Pipeline.compile() compiles this op's ``apply``: pointwise ops, which the compiler fuses
    # into a few loops. Ops built on grid_sample / convolutions / the Jacobi solver stay eager
    # (measured on CPU: a compiled grid_sample crop is several times slower than ATen's).
    compilable = False

    def __init__(self, spec: Any, out_size: int):
        self.spec = spec
        self.out_size = out_size

    @property
    def p(self) -> float:
        return float(self.spec.p)

    def sample(self, batch: int, height: int, width: int, channels: int, device, generator) -> Params:
        return {"apply": _bernoulli(batch, self.p, device, generator)}

    def apply(self, x: Tensor, params: Params) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b, c, h, w = x.shape
        return self.apply(x, self.sample(b, h, w, c, x.device, generator))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


class RandomResizedCrop(AugmentOpImpl):
    """Crop a random box (area in `scale` of the image, aspect ratio log-uniform in
    `ratio`) and resize it to out_size. torchvision's sampler, vectorised: 10 tries per
    sample, the first box that fits wins, else the central crop of clamped ratio.

    params: top, left, height, width (B,) int64 boxes; apply (B,) bool (False = whole image).
    """

    resizes = True
    TRIES = 10

    def sample(self, batch, height, width, channels, device, generator) -> Params:
        s0, s1 = self.spec.scale
        lr0, lr1 = math.log(self.spec.ratio[0]), math.log(self.spec.ratio[1])
        area = height * width
        target = area * _uniform((batch, self.TRIES), s0, s1, device, generator)
        aspect = torch.exp(_uniform((batch, self.TRIES), lr0, lr1, device, generator))
        cw = torch.round(torch.sqrt(target * aspect))
        ch = torch.round(torch.sqrt(target / aspect))
        ok = (cw > 0) & (cw <= width) & (ch > 0) & (ch <= height)
        first = torch.argmax(ok.to(torch.int8), dim=1, keepdim=True)  # first True (0 if none)
        any_ok = ok.any(1, keepdim=True)
        bw = cw.gather(1, first)  # (B, 1)
        bh = ch.gather(1, first)
        # central-crop fallback with the ratio clamped into `ratio`
        in_ratio = width / height
        if in_ratio < self.spec.ratio[0]:
            fw, fh = width, int(round(width / self.spec.ratio[0]))
        elif in_ratio > self.spec.ratio[1]:
            fw, fh = int(round(height * self.spec.ratio[1])), height
        else:
            fw, fh = width, height
        apply = _bernoulli(batch, self.p, device, generator)
        u = torch.cat((_rand((batch, 1), device, generator), _rand((batch, 1), device, generator)), 1)  # top, left
        size = torch.cat((bh, bw), 1)  # (B, 2): height, width of the box
        box = torch.cat((torch.floor(u * (_const((height + 1.0, width + 1.0), u) - size)), size), 1)
        # (B, 4) top, left, height, width in 3 selects: no try fits -> the central crop;
        # not applied -> the whole image, resized (small tensors: a few ops whatever the batch)
        box = torch.where(any_ok, box, _const(((height - fh) // 2, (width - fw) // 2, fh, fw), box))
        box = torch.where(apply.view(-1, 1), box, _const((0.0, 0.0, height, width), box)).long()
        top, left, bh, bw = box.unbind(1)
        return {"apply": apply, "top": top, "left": left, "height": bh, "width": bw}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        """params may carry "flip" (B,) bool: a following horizontal flip fused in (see Pipeline)."""
        return crop_resize(x, params["top"], params["left"], params["height"], params["width"], self.out_size,
                           params.get("flip"))


def crop_resize(
    x: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor, size: int, flip: Tensor | None = None,
) -> Tensor:
    """Crop per-sample boxes (B,) and resize each to size x size, for the whole batch in one
    ``grid_sample``: the same as torchvision's crop-then-resize per image.

    Output pixel k of a box [l, l + w) samples the source at l + (k + 0.5) w / size - 0.5,
    clamped into the box (``interpolate(bilinear, align_corners=False)`` of the crop, so
    pixels outside the box never leak in). When a box can be larger than the output
    (input side > size), each output pixel averages s x s sub-samples, s = ceil(input / size)
    -- a box filter standing in for torchvision's anti-aliasing (s is fixed by the shapes,
    so nothing is read back from the device). `flip` (B,) bool mirrors the output of those
    samples left-right (their columns are sampled in reverse order): a horizontal flip fused
    into the crop at no cost. (Two batched matmuls with per-sample bilinear weight matrices
    give the same result but measured slower on CPU: they allocate more.)
    """
    b, _, in_h, in_w = x.shape
    s = max(1, math.ceil(max(in_h, in_w) / size))
    n = size * s
    # sub-sample centres in output-pixel units: (k + (j + 0.5) / s) for k < size, j < s
    idx = torch.arange(n, device=x.device, dtype=x.dtype).view(1, n)
    pos_y = (idx + 0.5) / s
    # a mirrored sample reads its columns in reverse order (flipped output, exact)
    pos_x = pos_y if flip is None else torch.where(flip.view(b, 1), (n - 0.5 - idx) / s, pos_y)

    def axis(pos: Tensor, start: Tensor, length: Tensor, side: int) -> Tensor:
        start, length = start.to(x.dtype).view(b, 1), length.to(x.dtype).view(b, 1)
        src = start + pos * length / size - 0.5
        src = torch.minimum(torch.maximum(src, start), start + length - 1)
        return src * (2.0 / max(side - 1, 1)) - 1.0  # align_corners=True normalisation

    gx = axis(pos_x, left, width, in_w).view(b, 1, n).expand(b, n, n)
    gy = axis(pos_y, top, height, in_h).view(b, n, 1).expand(b, n, n)
    grid = torch.stack((gx, gy), -1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    if s > 1:
        out = F.avg_pool2d(out, s)
    return out.clamp_(0.0, 1.0)


class RandomCrop(AugmentOpImpl):
    """Zero-pad by `padding` and crop back to the input size at a random offset (RotNet).

    params: top, left (B,) offsets in [0, 2 * padding] (padding = identity); apply (B,) bool."""

    def sample(self, batch, height, width, channels, device, generator) -> Params:
        pad = self.spec.padding
        apply = _bernoulli(batch, self.p, device, generator)
        top = torch.floor(_rand((batch,), device, generator) * (2 * pad + 1)).long()
        left = torch.floor(_rand((batch,), device, generator) * (2 * pad + 1)).long()
        centre = torch.full_like(top, pad)
        return {"apply": apply, "top": torch.where(apply, top, centre), "left": torch.where(apply, left, centre)}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        pad = self.spec.padding
        if pad == 0:
            return x
        b, c, h, w = x.shape
        xp = F.pad(x, (pad, pad, pad, pad))
        rows = params["top"].view(b, 1) + torch.arange(h, device=x.device).view(1, h)  # (B, H)
        cols = params["left"].view(b, 1) + torch.arange(w, device=x.device).view(1, w)  # (B, W)
        bi = torch.arange(b, device=x.device).view(b, 1, 1)
        out = xp.permute(0, 2, 3, 1)[bi, rows.view(b, h, 1), cols.view(b, 1, w)]  # (B, H, W, C)
        return out.permute(0, 3, 1, 2).contiguous()


class HorizontalFlip(AugmentOpImpl):
    """Mirror left-right with probability p per sample."""
    compilable = True

    def apply(self, x: Tensor, params: Params) -> Tensor:
        return _where(params["apply"], x.flip(-1), x)


class Rotate(AugmentOpImpl):
    """Rotate by an angle uniform in [-degrees, degrees] (counter-clockwise positive, as
    torchvision), about the centre, bilinear, zero fill. params: angle (B,) degrees; apply."""

    def sample(self, batch, height, width, channels, device, generator) -> Params:
        d = float(self.spec.degrees)
        apply = _bernoulli(batch, self.p, device, generator)
        angle = _uniform((batch,), -d, d, device, generator)
        return {"apply": apply, "angle": torch.where(apply, angle, torch.zeros_like(angle))}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        ones = torch.ones_like(params["angle"])
        zeros = torch.zeros_like(params["angle"])
        inv = _inverse_affine(params["angle"], ones, zeros, zeros).to(x.dtype)
        return _where(params["apply"], _affine_warp(x, inv), x)


def _inverse_affine(angle: Tensor, scale: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """(B, 2, 3) output->input map of p_out = T + s R(angle) p_in (centred pixel coordinates,
    y down; R rotates counter-clockwise on screen): p_in = R^-1 (p_out - T) / s."""
    a = torch.deg2rad(angle)
    cos, sin = torch.cos(a), torch.sin(a)
    # on screen (y down) a counter-clockwise rotation is [[cos, sin], [-sin, cos]]; its inverse:
    m00, m01, m10, m11 = cos / scale, -sin / scale, sin / scale, cos / scale
    b0 = -(m00 * tx + m01 * ty)
    b1 = -(m10 * tx + m11 * ty)
    return torch.stack((torch.stack((m00, m01, b0), 1), torch.stack((m10, m11, b1), 1)), 1)


class RandomAffine(AugmentOpImpl):
    """Exemplar-CNN's composed geometric transformation: rotation in [-degrees, degrees],
    scale in `scale`, translation up to `translate` x side on each axis, one warp.

    params: angle (B,), scale (B,), tx, ty (B,) pixels; apply (B,) bool."""

    def sample(self, batch, height, width, channels, device, generator) -> Params:
        s = self.spec
        apply = _bernoulli(batch, self.p, device, generator)
        angle = _uniform((batch,), -s.degrees, s.degrees, device, generator)
        scale = _uniform((batch,), s.scale[0], s.scale[1], device, generator)
        tx = _uniform((batch,), -s.translate * width, s.translate * width, device, generator)
        ty = _uniform((batch,), -s.translate * height, s.translate * height, device, generator)
        z = torch.zeros_like(angle)
        return {
            "apply": apply, "angle": torch.where(apply, angle, z), "scale": torch.where(apply, scale, z + 1),
            "tx": torch.where(apply, tx, z), "ty": torch.where(apply, ty, z),
        }

    def apply(self, x: Tensor, params: Params) -> Tensor:
        inv = _inverse_affine(params["angle"], params["scale"], params["tx"], params["ty"]).to(x.dtype)
        return _where(params["apply"], _affine_warp(x, inv), x)


# -- colour -----------------------------------------------------------------
def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """x * f, clamped. factor (B,)."""
    return (x * factor.view(-1, 1, 1, 1)).clamp(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the per-image mean luma: f x + (1 - f) mean, clamped. factor (B,)."""
    f = factor.view(-1, 1, 1, 1)
    mean = _luma(x).mean(dim=(1, 2, 3), keepdim=True)
    return (f * x + (1.0 - f) * mean).clamp(0.0, 1.0)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the per-pixel luma: f x + (1 - f) gray, clamped; identity on 1 channel."""
    if x.shape[1] == 1:
        return x
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * _luma(x)).clamp(0.0, 1.0)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by `shift` (B,) turns in [-0.5, 0.5]; identity on 1 channel.
    x: (B, 3, ...) in [0, 1] (any trailing shape).

    torchvision's HSV round trip, fused and branch-free: value (max) and chroma
    C = max - min are kept; the hue in sixths h = 2 i + (x[i+1] - x[i+2]) / C comes from the
    channel i holding the max (r before g before b on ties -- tied channels give the same h);
    channel n of the result is min + C clamp(d_n - 1, 0, 1), d_n the circular distance
    (period 6) from h + 6 shift to the channel's centre (R 3, G 5, B 1) -- the same as
    torchvision's ``v - v s clamp(min(k, 4 - k), 0, 1)``.

    Cost: CPU comparisons and ``torch.where`` on full tensors are slow (bool tensors are
    not vectorised: 5-25x an add), so the max channel is picked with ``ceil`` and ``lerp``
    (exact selections: weight 0 or 1), and the period is handled by ``|6 - d|`` instead of
    ``remainder``.
    """
    if x.shape[1] == 1:
        return x
    b = x.shape[0]
    v = x.reshape(b, 3, -1)
    maxc = v.amax(1, keepdim=True)  # (B, 1, N)
    minc = v.amin(1, keepdim=True)
    chroma = maxc - minc
    # 1 / C; C = 0 gives h = 0 (numerators are 0 there too) and the pixel stays gray for any h
    inv = chroma.clamp_min(1e-30).reciprocal_()
    r, g, bl = v[:, 0:1], v[:, 1:2], v[:, 2:3]
    # exactly 0 where r (g) holds the max, else 1 (x in [0, 1]: the difference is in [0, 1])
    not_max = (maxc - v[:, :2]).ceil_().clamp_(max=1.0)
    h_r = g - bl
    h_g = (bl - r).add_(chroma, alpha=2.0)
    h_b = (r - g).add_(chroma, alpha=4.0)
    # r if r is max, else g if g is max, else b (lerp with weight 0 / 1 selects exactly)
    h6 = torch.lerp(h_r, torch.lerp(h_g, h_b, not_max[:, 1:2]), not_max[:, 0:1])
    h6 = h6.mul_(inv).add_((6.0 * shift).to(x.dtype).view(b, 1, 1))  # in [-4, 8]
    d = (h6 - _const((3.0, 5.0, 1.0), x).view(1, 3, 1)).abs_()  # (B, 3, N), in [0, 9]
    circ = torch.minimum(d, (6.0 - d).abs_())  # circular distance, period 6
    p = circ.sub_(1.0).clamp_(0.0, 1.0)
    return p.mul_(chroma).add_(minc).clamp_(0.0, 1.0).view_as(x)


def _jitter_coefficients(op: Tensor, f: Tensor, channels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Brightness / contrast / saturation as one per-sample colour map, for every step at once.

    op, f: (B, S) op index (0 brightness, 1 contrast, 2 saturation, other = none) and factor
    of each of S steps. Each op is clamp(a x + w_luma luma(x) + w_mean mean_luma(x)), i.e.
    clamp(M x + w_mean mean_luma(x)) with the colour matrix M = a I + w_luma 1 luma^T: returns
    the (B, S) a, w_luma, w_mean and the (C,) luma weights."""
    one, zero = torch.ones_like(f), torch.zeros_like(f)
    sat = op == 2
    if channels == 1:  # saturation is the identity on gray images
        a = torch.where(op <= 1, f, one)
        w_luma = zero
        lw = _const((1.0,), f)
    else:
        a = torch.where(op <= 2, f, one)
        w_luma = torch.where(sat, 1.0 - f, zero)
        lw = _const(_LUMA, f)
    w_mean = torch.where(op == 1, 1.0 - f, zero)
    return a, w_luma, w_mean, lw


def _colour_matrices(a: Tensor, w_luma: Tensor, lw: Tensor) -> Tensor:
    """(B, S, C, C) matrices a I + w_luma 1 luma^T from (B, S) a and w_luma."""
    c = lw.shape[0]
    eye = _const(tuple(tuple(float(i == j) for j in range(c)) for i in range(c)), a)
    return a[..., None, None] * eye + w_luma[..., None, None] * lw.view(1, 1, 1, c)


def _blend_step(v: Tensor, mat: Tensor, w_mean: Tensor, lw: Tensor) -> Tensor:
    """One jitter step for the batch: v (B, C, N) -> clamp(mat @ v + w_mean mean_luma(v)).
    One reduction and one batched 3x3 matmul over the image: a sample whose op is 'none' gets
    the identity matrix and a zero weight, which reproduce v exactly."""
    mean_luma = v.mean(2) @ lw  # (B,): the mean of the luma = the luma of the channel means
    return torch.baddbmm((w_mean * mean_luma).view(-1, 1, 1), mat, v).clamp_(0.0, 1.0)


def _blend_step_pointwise(v: Tensor, a: Tensor, w_luma: Tensor, w_mean: Tensor, lw: Tensor) -> Tensor:
    """:func:`_blend_step` written as pointwise arithmetic, for ``torch.compile``: the compiler
    fuses it (and the clamp, and the next step's reduction) into a few loops, while a
    ``baddbmm`` would stay an external call with its own passes over the batch (measured on
    CPU: 0.47 ms of 1.1 ms per step). Same values up to float rounding."""
    luma = (v * lw.view(1, -1, 1)).sum(1, keepdim=True)  # (B, 1, N)
    offset = w_luma.view(-1, 1, 1) * luma + w_mean.view(-1, 1, 1) * luma.mean(2, keepdim=True)
    return (a.view(-1, 1, 1) * v + offset).clamp(0.0, 1.0)


class ColorJitter(AugmentOpImpl):
    """SimCLR's colour distortion: brightness, contrast, saturation (factors uniform in
    [max(0, 1 - s), 1 + s]) and hue (shift uniform in [-h, h]) in a random order PER SAMPLE
    (torchvision's ColorJitter draws one order per call; the per-sample order is the paper's).

    params: brightness, contrast, saturation, hue (B,) (identity values where not applied);
    order (B, 4) int64: order[b, k] = op at position k (0 brightness, 1 contrast, 2 saturation, 3 hue).

    Cost: the hue (an HSV round trip) is computed once per batch, not once per position:
    each sample runs the cheap ops placed before its hue (positions 0-2), then its hue,
    then the cheap ops placed after it (positions 1-3). Brightness, contrast and saturation
    are each clamp(M x + w mean_luma) with a per-sample 3x3 colour matrix M, so each of the
    six steps is one channel-mean reduction, one batched matmul and one clamp for the whole
    batch (identity for samples with nothing at that step). Same result as applying the
    four in order; the hue's shift is 0 where the jitter is not applied.
    """
    compilable = True

    def sample(self, batch, height, width, channels, device, generator) -> Params:
        s = self.spec
        apply = _bernoulli(batch, self.p, device, generator)
        out: Params = {"apply": apply}
        for name in ("brightness", "contrast", "saturation"):
            v = float(getattr(s, name))
            f = _uniform((batch,), max(0.0, 1.0 - v), 1.0 + v, device, generator)
            out[name] = torch.where(apply, f, torch.ones_like(f))
        hue = _uniform((batch,), -float(s.hue), float(s.hue), device, generator)
        out["hue"] = torch.where(apply, hue, torch.zeros_like(hue))
        out["order"] = torch.argsort(_rand((batch, 4), device, generator), dim=1)
        return out

    def apply(self, x: Tensor, params: Params) -> Tensor:
        b, c, h, w = x.shape
        order = params["order"]
        factors = torch.stack((params["brightness"], params["contrast"], params["saturation"],
                               torch.ones_like(params["brightness"])), 1).to(x.dtype)  # (B, 4)
        hue_pos = torch.argmax((order == 3).to(torch.int8), dim=1, keepdim=True)  # (B, 1)
        k = torch.arange(4, device=x.device).view(1, 4)
        none = torch.full_like(order, 3)
        # steps 0-2: the op at position k if it comes before the hue; steps 3-5: position
        # k = 1..3 if it comes after the hue
        before = torch.where(k[:, :3] < hue_pos, order[:, :3], none[:, :3])
        after = torch.where(k[:, 1:] > hue_pos, order[:, 1:], none[:, 1:])
        ops = torch.cat((before, after), 1)  # (B, 6)
        f = factors.gather(1, torch.cat((order[:, :3], order[:, 1:]), 1))  # (B, 6)
        a, w_luma, w_mean, lw = _jitter_coefficients(ops, f, c)
        v = x.reshape(b, c, h * w)
        if torch.compiler.is_compiling():  # Pipeline.compile(): pointwise steps fuse
            def step(v: Tensor, k: int) -> Tensor:
                return _blend_step_pointwise(v, a[:, k], w_luma[:, k], w_mean[:, k], lw)
        else:
            mats = _colour_matrices(a, w_luma, lw)

            def step(v: Tensor, k: int) -> Tensor:
                return _blend_step(v, mats[:, k], w_mean[:, k], lw)
        for k in range(3):
            v = step(v, k)
        if c == 3 and self.spec.hue > 0:
            v = adjust_hue(v, params["hue"])  # shift 0 where not applied
        for k in range(3, 6):
            v = step(v, k)
        return v.view(b, c, h, w)


class Grayscale(AugmentOpImpl):
    """Replace the colours by the luma, kept 3-channel; identity on 1-channel images."""
    compilable = True

    def apply(self, x: Tensor, params: Params) -> Tensor:
        if x.shape[1] == 1:
            return x
        # lerp with weight 0 / 1 returns exactly x / the luma; cheaper than torch.where on CPU
        w = params["apply"].to(x.dtype).view(-1, 1, 1, 1)
        return torch.lerp(x, _luma(x).expand_as(x), w)


class HSVPower(AugmentOpImpl):
    """Exemplar-CNN 'contrast 2' + hue (Dosovitskiy et al., 2014): S and V each raised to a
    power (log-uniform in `power`, so 1/4 and 4 are equally likely), times a factor in
    `factor`, plus a shift in [-shift, shift]; hue + U[-hue_shift, hue_shift].
    On 1-channel images the V transform applies to the intensity (S and hue do not exist).

    params: power, factor, shift (B, 2) for (S, V); hue (B,); apply (B,)."""
    compilable = True

    def sample(self, batch, height, width, channels, device, generator) -> Params:
        s = self.spec
        apply = _bernoulli(batch, self.p, device, generator)
        lp0, lp1 = math.log(s.power[0]), math.log(s.power[1])
        return {
            "apply": apply,
            "power": torch.exp(_uniform((batch, 2), lp0, lp1, device, generator)),
            "factor": _uniform((batch, 2), s.factor[0], s.factor[1], device, generator),
            "shift": _uniform((batch, 2), -s.shift, s.shift, device, generator),
            "hue": _uniform((batch,), -s.hue_shift, s.hue_shift, device, generator),
        }

    def apply(self, x: Tensor, params: Params) -> Tensor:
        pw, fa, sh = (params[k].to(x.dtype).view(-1, 2, 1, 1) for k in ("power", "factor", "shift"))
        if x.shape[1] == 1:
            v = (x.clamp_min(0.0).pow(pw[:, 1:]) * fa[:, 1:] + sh[:, 1:]).clamp(0.0, 1.0)
            return _where(params["apply"], v, x)
        hsv = rgb_to_hsv(x)
        sv = (hsv[:, 1:].pow(pw) * fa + sh).clamp(0.0, 1.0)
        h = torch.remainder(hsv[:, :1] + params["hue"].to(x.dtype).view(-1, 1, 1, 1), 1.0)
        return _where(params["apply"], hsv_to_rgb(torch.cat((h, sv), 1)), x)


class PCAContrast(AugmentOpImpl):
    """Exemplar-CNN 'contrast 1': project each pixel's colour on the principal components of
    the image's pixel colours and scale each projection by its own factor in `factor`
    (per image, per component): x' = mu + V diag(f) V^T (x - mu), clamped. On 1-channel
    images this scales the centred intensity.

    params: factor (B, C); apply (B,)."""

    def sample(self, batch, height, width, channels, device, generator) -> Params:
        f0, f1 = self.spec.factor
        apply = _bernoulli(batch, self.p, device, generator)
        return {"apply": apply, "factor": _uniform((batch, channels), f0, f1, device, generator)}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        b, c, h, w = x.shape
        pix = x.reshape(b, c, h * w)
        mu = pix.mean(2, keepdim=True)
        xc = pix - mu
        f = params["factor"].to(x.dtype)
        if c == 1:
            out = mu + xc * f.view(b, 1, 1)
        else:
            cov = xc @ xc.transpose(1, 2) / (h * w)  # (B, C, C)
            _, vecs = symmetric_eigh(cov.double())  # float64: exact-enough vectors for near-degenerate colours
            m = (vecs * f.double().unsqueeze(1)) @ vecs.transpose(1, 2)  # V diag(f) V^T
            out = mu + m.to(x.dtype) @ xc
        out = out.view(b, c, h, w).clamp(0.0, 1.0)
        return _where(params["apply"], out, x)


def symmetric_eigh(a: Tensor, sweeps: int = 8) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of a batch of small symmetric matrices (B, C, C) by cyclic Jacobi
    rotations: eigenvalues ascending (B, C) and eigenvectors as columns (B, C, C), as
    torch.linalg.eigh -- which on CUDA checks its info flags on the host (a sync per call).
    Jacobi converges quadratically; 8 sweeps reach float64 precision for 3x3 colour covariances."""
    bsz, c, _ = a.shape
    a = a.clone()
    v = torch.eye(c, dtype=a.dtype, device=a.device).expand(bsz, c, c).clone()
    for _ in range(sweeps):
        for p in range(c - 1):
            for q in range(p + 1, c):
                app, aqq, apq = a[:, p, p], a[:, q, q], a[:, p, q]
                theta = 0.5 * torch.atan2(2 * apq, aqq - app)  # zeroes a[p, q]
                cos, sin = torch.cos(theta), torch.sin(theta)
                rot = torch.eye(c, dtype=a.dtype, device=a.device).expand(bsz, c, c).clone()
                rot[:, p, p], rot[:, q, q], rot[:, p, q], rot[:, q, p] = cos, cos, sin, -sin
                a = rot.transpose(1, 2) @ a @ rot
                v = v @ rot
    vals = torch.diagonal(a, dim1=1, dim2=2)
    order = torch.argsort(vals, dim=1)
    return vals.gather(1, order), v.gather(2, order.unsqueeze(1).expand(bsz, c, c))


class GaussianBlur(AugmentOpImpl):
    """Gaussian blur, sigma uniform in `sigma` per sample, kernel side kernel_fraction x side
    (odd), reflect padding -- SimCLR's blur. A delta kernel where not applied (exact identity).

    params: sigma (B,); apply (B,)."""

    def sample(self, batch, height, width, channels, device, generator) -> Params:
        s0, s1 = self.spec.sigma
        return {
            "apply": _bernoulli(batch, self.p, device, generator),
            "sigma": _uniform((batch,), s0, s1, device, generator),
        }

    def kernel_size(self, height: int, width: int) -> int:
        return _odd_kernel(min(height, width), self.spec.kernel_fraction)

    def apply(self, x: Tensor, params: Params) -> Tensor:
        k = self.kernel_size(x.shape[2], x.shape[3])
        kern = gaussian_kernels(params["sigma"].to(x.dtype), k)
        delta = torch.zeros_like(kern)
        delta[:, k // 2] = 1.0
        kern = torch.where(params["apply"].view(-1, 1), kern, delta)
        return _separable_conv(x, kern, kern).clamp_(0.0, 1.0)


def gaussian_kernels(sigma: Tensor, k: int) -> Tensor:
    """(B, k) normalised 1-D Gaussians, one per sigma (torchvision's kernel)."""
    r = k // 2
    t = torch.linspace(-r, r, k, device=sigma.device, dtype=sigma.dtype).view(1, k)
    g = torch.exp(-0.5 * (t / sigma.view(-1, 1)) ** 2)
    return g / g.sum(1, keepdim=True)


class Solarize(AugmentOpImpl):
    """Invert pixels at or above `threshold` (BYOL/torchvision semantics)."""
    compilable = True

    def apply(self, x: Tensor, params: Params) -> Tensor:
        sol = torch.where(x >= self.spec.threshold, 1.0 - x, x)
        return _where(params["apply"], sol, x)


_SMOOTH = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))  # PIL's SMOOTH kernel / 13


class Sharpen(AugmentOpImpl):
    """Unsharp mask x + s (x - smooth(x)) with s uniform in `strength` per sample; the same
    as torchvision's adjust_sharpness(1 + s): PIL's 3x3 SMOOTH kernel, borders untouched.

    params: strength (B,); apply (B,)."""

    def sample(self, batch, height, width, channels, device, generator) -> Params:
        s0, s1 = self.spec.strength
        return {
            "apply": _bernoulli(batch, self.p, device, generator),
            "strength": _uniform((batch,), s0, s1, device, generator),
        }

    def apply(self, x: Tensor, params: Params) -> Tensor:
        b, c, h, w = x.shape
        if h <= 2 or w <= 2:
            return x
        kern = _const(_SMOOTH, x) / 13.0
        blurred = F.conv2d(x.reshape(b * c, 1, h, w), kern.view(1, 1, 3, 3)).view(b, c, h - 2, w - 2)
        smooth = x.clone()
        smooth[:, :, 1:-1, 1:-1] = blurred
        s = torch.where(params["apply"], params["strength"].to(x.dtype), torch.zeros_like(params["strength"]))
        s = s.to(x.dtype).view(-1, 1, 1, 1)
        return (x + s * (x - smooth)).clamp(0.0, 1.0)


class EdgeMap(AugmentOpImpl):
    """Salient-edge view: Sobel gradient magnitude of the luma, divided by its per-image
    maximum (an image without edges becomes black), copied to every channel."""

    def apply(self, x: Tensor, params: Params) -> Tensor:
        return _where(params["apply"], sobel_magnitude(x).expand_as(x), x)


def sobel_magnitude(x: Tensor) -> Tensor:
    """(B, 1, H, W) Sobel gradient magnitude of the luma (replicate padding), max-normalised per image."""
    g = F.pad(_luma(x), (1, 1, 1, 1), mode="replicate")
    kx = _const(((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0)), x)
    k = torch.stack((kx, kx.t())).unsqueeze(1)  # (2, 1, 3, 3)
    grad = F.conv2d(g, k)  # (B, 2, H, W)
    mag = grad.pow(2).sum(1, keepdim=True).sqrt()
    peak = mag.amax(dim=(2, 3), keepdim=True)
    return mag / peak.clamp_min(1e-6)


class Detexturize(AugmentOpImpl):
    """De-texturised view: `iterations` passes of a bilateral filter (Tomasi & Manduchi 1998):
    weights exp(-|d|^2 / 2 sigma_space^2) exp(-|x_q - x_p|^2 / 2 sigma_color^2), window radius
    ceil(2 sigma_space), replicate padding. Batched over the window offsets (a fixed, small loop)."""

    def apply(self, x: Tensor, params: Params) -> Tensor:
        y = x
        for _ in range(self.spec.iterations):
            y = bilateral_filter(y, self.spec.sigma_space, self.spec.sigma_color)
        return _where(params["apply"], y, x)


def bilateral_filter(x: Tensor, sigma_space: float, sigma_color: float) -> Tensor:
    """One bilateral pass over x (B, C, H, W); colour distance summed over channels."""
    b, c, h, w = x.shape
    r = max(1, math.ceil(2 * sigma_space))
    xp = F.pad(x, (r, r, r, r), mode="replicate")
    num = torch.zeros_like(x)
    den = torch.zeros_like(x[:, :1])
    inv_c = -0.5 / (sigma_color * sigma_color)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            ws = math.exp(-(dy * dy + dx * dx) / (2 * sigma_space * sigma_space))
            q = xp[:, :, r + dy : r + dy + h, r + dx : r + dx + w]
            wgt = torch.exp((q - x).pow(2).sum(1, keepdim=True) * inv_c) * ws
            num = num + wgt * q
            den = den + wgt
    return (num / den).clamp(0.0, 1.0)


OP_CLASSES: dict[str, type[AugmentOpImpl]] = {
    "random_resized_crop": RandomResizedCrop,
    "random_crop": RandomCrop,
    "horizontal_flip": HorizontalFlip,
    "rotate": Rotate,
    "random_affine": RandomAffine,
    "color_jitter": ColorJitter,
    "hsv_power": HSVPower,
    "pca_contrast": PCAContrast,
    "grayscale": Grayscale,
    "gaussian_blur": GaussianBlur,
    "solarize": Solarize,
    "sharpen": Sharpen,
    "edge_map": EdgeMap,
    "detexturize": Detexturize,
}


def build_op(spec: Any, out_size: int) -> AugmentOpImpl:
    """One op from its spec (a specs.AugmentOp model or a dict with an ``op`` key)."""
    if isinstance(spec, dict):
        from pydantic import TypeAdapter

        spec = TypeAdapter(specs.AugmentOp).validate_python(spec)
    return OP_CLASSES[spec.op](spec, out_size)


# ops that commute with a horizontal mirror (pixel-wise colour ops; a symmetric blur kernel
# with reflect padding), so a flip after them can be fused into a preceding crop
_FLIP_EQUIVARIANT = (ColorJitter, Grayscale, GaussianBlur, Solarize)


class Pipeline:
    """The ops in order, on a batch. Input (B, C, H, W) uint8 or float in [0, 1] on any device;
    output float32 (B, C, out_size, out_size) in [0, 1].

    random_resized_crop resizes to out_size (ops before it see the input size); a pipeline
    without it resizes the batch to out_size first (bilinear, anti-aliased) if needed.
    """

    def __init__(self, ops: list[AugmentOpImpl], out_size: int):
        self.ops = ops
        self.out_size = int(out_size)
        self._resizes = any(op.resizes for op in ops)
        self._compiled: list[Callable[[Tensor, Params], Tensor] | None] = [None] * len(ops)

    def compile(self, **kwargs: Any) -> "Pipeline":
        """``torch.compile`` the ``apply`` of every pointwise op (``compilable``: colour
        jitter, grayscale, flip, solarize, HSV power), in place, like ``nn.Module.compile``;
        kwargs go to ``torch.compile``. Parameters are still drawn eagerly (the generator
        stays outside the graphs, so the draws are the same as uncompiled); the compiled
        ``apply`` gives the same values up to float rounding (tests/core/test_augment.py).
        The spec's ``compile: true`` turns it on with the backbone's compile. First calls
        compile (seconds; once more when the batch shape first changes, then dynamic).
        torch.compile caches per function, so pipelines in one process share each op's cache;
        past torch's recompile limit (8 variants: other spec values, channel counts, devices)
        an op falls back to its eager ``apply`` -- same values, without the speed-up."""
        self._compiled = [torch.compile(op.apply, **kwargs) if op.compilable else None for op in self.ops]
        return self

    def _apply(self, k: int, x: Tensor, params: Params) -> Tensor:
        fn = self._compiled[k]
        return self.ops[k].apply(x, params) if fn is None else fn(x, params)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"augment: expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        # fp32 even inside the training step's autocast: blur/Sobel convs in bf16 would lose
        # precision for nothing (these ops are memory-bound), and the output dtype stays fixed
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._run(to_float(x), generator)

    def _run(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        if not self._resizes and (x.shape[2], x.shape[3]) != (self.out_size, self.out_size):
            x = resize(x, self.out_size)
        ops, i = self.ops, 0
        while i < len(ops):
            op = ops[i]
            b, c, h, w = x.shape
            params = op.sample(b, h, w, c, x.device, generator)
            j = i + 1
            if isinstance(op, RandomResizedCrop):
                while j < len(ops) and type(ops[j]) in _FLIP_EQUIVARIANT:
                    j += 1
            if isinstance(op, RandomResizedCrop) and j < len(ops) and type(ops[j]) is HorizontalFlip:
                # crop, [ops that commute with a mirror,] flip (SimCLR, MoCo v2): the flip is
                # fused into the crop's sampling grid. Parameters are drawn in the pipeline's
                # order, so the generator yields the same values as unfused.
                s = op.out_size
                between = [o.sample(b, s, s, c, x.device, generator) for o in ops[i + 1 : j]]
                flip = ops[j].sample(b, s, s, c, x.device, generator)["apply"]
                x = self._apply(i, x, {**params, "flip": flip})
                for k, p in enumerate(between, start=i + 1):
                    x = self._apply(k, x, p)
                i = j + 1
                continue
            x = self._apply(i, x, params)
            i += 1
        if (x.shape[2], x.shape[3]) != (self.out_size, self.out_size):  # a crop that was not last-sized
            x = resize(x, self.out_size)
        return x

    def __len__(self) -> int:
        return len(self.ops)

    def __repr__(self) -> str:
        return f"Pipeline(out_size={self.out_size}, ops={self.ops!r})"


def resize(x: Tensor, size: int) -> Tensor:
    """Bilinear, anti-aliased resize of a float batch to size x size."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)


def build_pipeline(ops: list[Any], out_size: int) -> Pipeline:
    """A :class:`Pipeline` from a list of ``specs.AugmentOp`` (or dicts) and the output side."""
    return Pipeline([build_op(o, out_size) for o in ops], out_size)


__all__ = [
    "AugmentOpImpl", "OP_CLASSES", "Pipeline", "build_op", "build_pipeline", "crop_resize", "normalize",
    "resize", "rgb_to_hsv", "hsv_to_rgb", "to_float",
]
