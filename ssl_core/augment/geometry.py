"""Geometric ops: crops, the horizontal flip, rotations and affine warps.

* random_resized_crop -- torchvision's box sampling (10 tries, central-crop fallback,
  integer boxes), crop-and-resize of the whole batch by one ``grid_sample`` (bilinear,
  sub-sample averaging when shrinking, which acts as the anti-aliasing filter); a
  horizontal flip that follows it (possibly after colour ops) is folded into its sampling
  grid by the Pipeline (:mod:`ssl_core.augment.fusion`).
* random_crop -- zero padding then a random crop of the original size (RotNet's
  ``RandomCrop(32, padding=4)``), one gather.
* horizontal_flip, rotate, random_affine -- flips by ``torch.where``; rotations and
  affine maps through one ``affine_grid`` + ``grid_sample`` (bilinear, zero fill).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_core.augment.base import AugmentOpImpl, Params, const, select_samples
from ssl_core.augment.sampling import bernoulli, rand, uniform


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
        target = area * uniform((batch, self.TRIES), s0, s1, device, generator)
        aspect = torch.exp(uniform((batch, self.TRIES), lr0, lr1, device, generator))
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
        apply = bernoulli(batch, self.p, device, generator)
        u = torch.cat((rand((batch, 1), device, generator), rand((batch, 1), device, generator)), 1)  # top, left
        size = torch.cat((bh, bw), 1)  # (B, 2): height, width of the box
        box = torch.cat((torch.floor(u * (const((height + 1.0, width + 1.0), u) - size)), size), 1)
        # (B, 4) top, left, height, width in 3 selects: no try fits -> the central crop;
        # not applied -> the whole image, resized (small tensors: a few ops whatever the batch)
        box = torch.where(any_ok, box, const(((height - fh) // 2, (width - fw) // 2, fh, fw), box))
        box = torch.where(apply.view(-1, 1), box, const((0.0, 0.0, height, width), box)).long()
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
        apply = bernoulli(batch, self.p, device, generator)
        top = torch.floor(rand((batch,), device, generator) * (2 * pad + 1)).long()
        left = torch.floor(rand((batch,), device, generator) * (2 * pad + 1)).long()
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
        return select_samples(params["apply"], x.flip(-1), x)


class Rotate(AugmentOpImpl):
    """Rotate by an angle uniform in [-degrees, degrees] (counter-clockwise positive, as
    torchvision), about the centre, bilinear, zero fill. params: angle (B,) degrees; apply."""

    def sample(self, batch, height, width, channels, device, generator) -> Params:
        d = float(self.spec.degrees)
        apply = bernoulli(batch, self.p, device, generator)
        angle = uniform((batch,), -d, d, device, generator)
        return {"apply": apply, "angle": torch.where(apply, angle, torch.zeros_like(angle))}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        ones = torch.ones_like(params["angle"])
        zeros = torch.zeros_like(params["angle"])
        inv = _inverse_affine(params["angle"], ones, zeros, zeros).to(x.dtype)
        return select_samples(params["apply"], _affine_warp(x, inv), x)


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
        apply = bernoulli(batch, self.p, device, generator)
        angle = uniform((batch,), -s.degrees, s.degrees, device, generator)
        scale = uniform((batch,), s.scale[0], s.scale[1], device, generator)
        tx = uniform((batch,), -s.translate * width, s.translate * width, device, generator)
        ty = uniform((batch,), -s.translate * height, s.translate * height, device, generator)
        z = torch.zeros_like(angle)
        return {
            "apply": apply, "angle": torch.where(apply, angle, z), "scale": torch.where(apply, scale, z + 1),
            "tx": torch.where(apply, tx, z), "ty": torch.where(apply, ty, z),
        }

    def apply(self, x: Tensor, params: Params) -> Tensor:
        inv = _inverse_affine(params["angle"], params["scale"], params["tx"], params["ty"]).to(x.dtype)
        return select_samples(params["apply"], _affine_warp(x, inv), x)


def _affine_warp(x: Tensor, inv: Tensor) -> Tensor:
    """Warp x (B, C, H, W) with per-sample 2x3 maps `inv` from OUTPUT to INPUT pixel
    coordinates centred on the image centre (x right, y down). One affine_grid +
    grid_sample for the batch; bilinear, zeros outside (torchvision's default fill)."""
    b, _, h, w = x.shape
    # align_corners=False: normalised coordinate u covers [-1, 1] over the image edges,
    # so pixel (centred) = u * side / 2.
    d = const((w / 2.0, h / 2.0), x)
    theta = torch.empty(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, :, :2] = inv[:, :, :2] * d.view(1, 1, 2) / d.view(1, 2, 1)
    theta[:, :, 2] = inv[:, :, 2] / d.view(1, 2)
    grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    return grid_sample_clamped(x, grid)


def grid_sample_clamped(x: Tensor, grid: Tensor) -> Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0.0, 1.0)
