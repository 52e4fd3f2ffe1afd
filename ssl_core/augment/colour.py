"""Colour ops and their maths: jitter, grayscale, solarize, Exemplar-CNN's HSV and PCA contrasts.

* color_jitter -- brightness, contrast, saturation, hue in a random order PER SAMPLE
  (torchvision draws one order per call): every sample runs the cheap ops its own
  permutation puts before the hue, then the hue (one branch-free HSV pass for the batch),
  then the cheap ops after it; brightness/contrast/saturation are per-sample 3x3 colour
  matrices plus a mean-luma term, one batched matmul per position.
  On 1-channel images brightness and contrast apply; saturation and hue are the identity
  (as in torchvision).
* grayscale -- ITU-R 601 luma (torchvision's weights); identity on 1-channel images.
* solarize -- inverts pixels at or above a threshold.
* pca_contrast and hsv_power -- Exemplar-CNN's 'contrast 1' and 'contrast 2' + hue
  (Dosovitskiy et al. 2014).

On CPUs, ``torch.where`` and comparisons over whole images are slow (bool tensors are not
vectorised), so exact per-sample selections use ``lerp`` with 0/1 weights or per-sample
matrices instead.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssl_core.augment.base import LUMA, AugmentOpImpl, Params, const, luma, select_samples
from ssl_core.augment.sampling import bernoulli, rand, uniform


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
    n = const((5.0, 3.0, 1.0), x).view(1, 3, 1, 1)
    k = torch.remainder(n + h.unsqueeze(1) * 6.0, 6.0)
    t = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    v, s = v.unsqueeze(1), s.unsqueeze(1)
    return (v - v * s * t).clamp_(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """x * f, clamped. factor (B,)."""
    return (x * factor.view(-1, 1, 1, 1)).clamp(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the per-image mean luma: f x + (1 - f) mean, clamped. factor (B,)."""
    f = factor.view(-1, 1, 1, 1)
    mean = luma(x).mean(dim=(1, 2, 3), keepdim=True)
    return (f * x + (1.0 - f) * mean).clamp(0.0, 1.0)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the per-pixel luma: f x + (1 - f) gray, clamped; identity on 1 channel."""
    if x.shape[1] == 1:
        return x
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * luma(x)).clamp(0.0, 1.0)


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
    d = (h6 - const((3.0, 5.0, 1.0), x).view(1, 3, 1)).abs_()  # (B, 3, N), in [0, 9]
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
        lw = const((1.0,), f)
    else:
        a = torch.where(op <= 2, f, one)
        w_luma = torch.where(sat, 1.0 - f, zero)
        lw = const(LUMA, f)
    w_mean = torch.where(op == 1, 1.0 - f, zero)
    return a, w_luma, w_mean, lw


def _colour_matrices(a: Tensor, w_luma: Tensor, lw: Tensor) -> Tensor:
    """(B, S, C, C) matrices a I + w_luma 1 luma^T from (B, S) a and w_luma."""
    c = lw.shape[0]
    eye = const(tuple(tuple(float(i == j) for j in range(c)) for i in range(c)), a)
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
    commutes_with_flip = True

    def sample(self, batch, height, width, channels, device, generator) -> Params:
        s = self.spec
        apply = bernoulli(batch, self.p, device, generator)
        out: Params = {"apply": apply}
        for name in ("brightness", "contrast", "saturation"):
            v = float(getattr(s, name))
            f = uniform((batch,), max(0.0, 1.0 - v), 1.0 + v, device, generator)
            out[name] = torch.where(apply, f, torch.ones_like(f))
        hue = uniform((batch,), -float(s.hue), float(s.hue), device, generator)
        out["hue"] = torch.where(apply, hue, torch.zeros_like(hue))
        out["order"] = torch.argsort(rand((batch, 4), device, generator), dim=1)
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
    commutes_with_flip = True

    def apply(self, x: Tensor, params: Params) -> Tensor:
        if x.shape[1] == 1:
            return x
        # lerp with weight 0 / 1 returns exactly x / the luma; cheaper than torch.where on CPU
        w = params["apply"].to(x.dtype).view(-1, 1, 1, 1)
        return torch.lerp(x, luma(x).expand_as(x), w)


class HSVPower(AugmentOpImpl):
    """Exemplar-CNN 'contrast 2' + hue (Dosovitskiy et al., 2014): S and V each raised to a
    power (log-uniform in `power`, so 1/4 and 4 are equally likely), times a factor in
    `factor`, plus a shift in [-shift, shift]; hue + U[-hue_shift, hue_shift].
    On 1-channel images the V transform applies to the intensity (S and hue do not exist).

    params: power, factor, shift (B, 2) for (S, V); hue (B,); apply (B,)."""
    compilable = True

    def sample(self, batch, height, width, channels, device, generator) -> Params:
        s = self.spec
        apply = bernoulli(batch, self.p, device, generator)
        lp0, lp1 = math.log(s.power[0]), math.log(s.power[1])
        return {
            "apply": apply,
            "power": torch.exp(uniform((batch, 2), lp0, lp1, device, generator)),
            "factor": uniform((batch, 2), s.factor[0], s.factor[1], device, generator),
            "shift": uniform((batch, 2), -s.shift, s.shift, device, generator),
            "hue": uniform((batch,), -s.hue_shift, s.hue_shift, device, generator),
        }

    def apply(self, x: Tensor, params: Params) -> Tensor:
        pw, fa, sh = (params[k].to(x.dtype).view(-1, 2, 1, 1) for k in ("power", "factor", "shift"))
        if x.shape[1] == 1:
            v = (x.clamp_min(0.0).pow(pw[:, 1:]) * fa[:, 1:] + sh[:, 1:]).clamp(0.0, 1.0)
            return select_samples(params["apply"], v, x)
        hsv = rgb_to_hsv(x)
        sv = (hsv[:, 1:].pow(pw) * fa + sh).clamp(0.0, 1.0)
        h = torch.remainder(hsv[:, :1] + params["hue"].to(x.dtype).view(-1, 1, 1, 1), 1.0)
        return select_samples(params["apply"], hsv_to_rgb(torch.cat((h, sv), 1)), x)


class PCAContrast(AugmentOpImpl):
    """Exemplar-CNN 'contrast 1': project each pixel's colour on the principal components of
    the image's pixel colours and scale each projection by its own factor in `factor`
    (per image, per component): x' = mu + V diag(f) V^T (x - mu), clamped. On 1-channel
    images this scales the centred intensity.

    params: factor (B, C); apply (B,)."""

    def sample(self, batch, height, width, channels, device, generator) -> Params:
        f0, f1 = self.spec.factor
        apply = bernoulli(batch, self.p, device, generator)
        return {"apply": apply, "factor": uniform((batch, channels), f0, f1, device, generator)}

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
        return select_samples(params["apply"], out, x)


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


class Solarize(AugmentOpImpl):
    """Invert pixels at or above `threshold` (BYOL/torchvision semantics)."""
    compilable = True
    commutes_with_flip = True

    def apply(self, x: Tensor, params: Params) -> Tensor:
        sol = torch.where(x >= self.spec.threshold, 1.0 - x, x)
        return select_samples(params["apply"], sol, x)
