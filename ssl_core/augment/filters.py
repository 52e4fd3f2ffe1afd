"""Filter ops and the views built from them: blur, sharpen, edge map, de-texturising.

* gaussian_blur -- separable grouped convolution with a per-sample sigma (reflect
  padding, kernel side = kernel_fraction x side made odd, as SimCLR's code).
* sharpen -- torchvision's ``adjust_sharpness`` with factor 1 + strength (an unsharp mask).
* edge_map -- Sobel magnitude of the luma, normalised by its per-image maximum.
* detexturize -- an iterated bilateral filter; its Python loop runs over the window offsets
  (a fixed, small number), never over samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_core.augment.base import AugmentOpImpl, Params, const, luma, select_samples
from ssl_core.augment.sampling import bernoulli, uniform


class GaussianBlur(AugmentOpImpl):
    """Gaussian blur, sigma uniform in `sigma` per sample, kernel side kernel_fraction x side
    (odd), reflect padding -- SimCLR's blur. A delta kernel where not applied (exact identity).

    params: sigma (B,); apply (B,)."""

    commutes_with_flip = True

    def sample(self, batch, height, width, channels, device, generator) -> Params:
        s0, s1 = self.spec.sigma
        return {
            "apply": bernoulli(batch, self.p, device, generator),
            "sigma": uniform((batch,), s0, s1, device, generator),
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


_SMOOTH = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))  # PIL's SMOOTH kernel / 13


class Sharpen(AugmentOpImpl):
    """Unsharp mask x + s (x - smooth(x)) with s uniform in `strength` per sample; the same
    as torchvision's adjust_sharpness(1 + s): PIL's 3x3 SMOOTH kernel, borders untouched.

    params: strength (B,); apply (B,)."""

    def sample(self, batch, height, width, channels, device, generator) -> Params:
        s0, s1 = self.spec.strength
        return {
            "apply": bernoulli(batch, self.p, device, generator),
            "strength": uniform((batch,), s0, s1, device, generator),
        }

    def apply(self, x: Tensor, params: Params) -> Tensor:
        b, c, h, w = x.shape
        if h <= 2 or w <= 2:
            return x
        kern = const(_SMOOTH, x) / 13.0
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
        return select_samples(params["apply"], sobel_magnitude(x).expand_as(x), x)


def sobel_magnitude(x: Tensor) -> Tensor:
    """(B, 1, H, W) Sobel gradient magnitude of the luma (replicate padding), max-normalised per image."""
    g = F.pad(luma(x), (1, 1, 1, 1), mode="replicate")
    kx = const(((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0)), x)
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
        return select_samples(params["apply"], y, x)


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
