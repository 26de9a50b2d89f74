"""Augmentations of HU slabs *before* windowing, batched in torch.

Every transform works on a batch of HU slabs ``[N, C, H, W]`` (C = 3 neighbouring slices for
the "stacked" input, 1 otherwise), so one ``grid_sample`` call serves the whole batch on CPU
or GPU. Geometry is shared by the channels of one sample (the three neighbours move
together); intensity changes stay in Hounsfield units, so a window-centre/width jitter is
exactly a slightly different display window, never a colour change that breaks HU meaning
(docs/domain.md: heavy colour changes hurt).

Random parameters are drawn on the CPU from a ``torch.Generator`` and only then moved to the
data's device, so a run is reproducible for a given seed on any device.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hohoho_core.preprocess import WINDOWS, PreprocessConfig

AIR_HU = -1000.0

__all__ = [
    "AIR_HU",
    "PRESETS",
    "AugmentConfig",
    "AugmentParams",
    "HUAugment",
    "slab_channels",
    "to_model_input",
]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms; 0 (or None) switches a transform off.

    rotation: max absolute in-plane angle (degrees), drawn uniformly in [-r, r].
    scale: zoom factor range (> 1 zooms in); ignored when ``crop_scale`` is set.
    crop_scale: RandomResizedCrop area range, e.g. (0.4, 1.0) for SimCLR views.
    shift: max translation as a fraction of the image half-width.
    hflip, vflip: flip probabilities (left-right, anterior-posterior).
    centre_jitter: max window-centre shift (HU).
    width_jitter: max relative window-width change (0.2 = x0.8 .. x1.2).
    noise: max Gaussian noise sigma (HU); each sample draws sigma in [0, noise].
    blur: probability of a Gaussian blur with sigma in ``blur_sigma`` (pixels).
    reference_centre: the window centre the jitter is relative to (the brain window).
    """

    rotation: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    crop_scale: tuple[float, float] | None = None
    shift: float = 0.0
    hflip: float = 0.0
    vflip: float = 0.0
    centre_jitter: float = 0.0
    width_jitter: float = 0.0
    noise: float = 0.0
    blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    reference_centre: float = WINDOWS["brain"][0]

    def __post_init__(self) -> None:
        if self.rotation < 0 or self.shift < 0 or self.noise < 0 or self.centre_jitter < 0:
            raise ValueError("rotation, shift, noise and centre_jitter must be >= 0")
        if not 0 <= self.width_jitter < 1:
            raise ValueError("width_jitter must be in [0, 1)")
        for name in ("hflip", "vflip", "blur"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability in [0, 1]")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError("scale must be (low, high) with 0 < low <= high")
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError("crop_scale must be (low, high) with 0 < low <= high <= 1")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError("blur_sigma must be (low, high) with 0 < low <= high")

    @property
    def is_identity(self) -> bool:
        return self == AugmentConfig(reference_centre=self.reference_centre)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown augmentation settings: {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)


#: "poster": the poster's light recipe (rotation 20, small intensity jitter, no flips).
#: "generous": what the demo model uses to generalise beyond one generator's quirks.
PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    "poster": AugmentConfig(rotation=20.0, centre_jitter=5.0, width_jitter=0.1),
    "generous": AugmentConfig(
        rotation=30.0,
        scale=(0.85, 1.15),
        shift=0.08,
        hflip=0.5,
        centre_jitter=10.0,
        width_jitter=0.2,
        noise=6.0,
        blur=0.3,
        blur_sigma=(0.4, 1.2),
    ),
}


@dataclass
class AugmentParams:
    """Per-sample random draws, all CPU tensors of shape ``(N,)``."""

    angle: torch.Tensor  # radians
    scale_x: torch.Tensor  # input extent sampled per output extent (1/zoom)
    scale_y: torch.Tensor
    shift_x: torch.Tensor  # normalised coordinates
    shift_y: torch.Tensor
    flip_x: torch.Tensor  # +1 or -1
    flip_y: torch.Tensor
    centre_shift: torch.Tensor  # HU
    width_scale: torch.Tensor
    noise_sigma: torch.Tensor  # HU
    blur_sigma: torch.Tensor  # pixels; 0 = no blur


def _uniform(n: int, low: float, high: float, g: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


class HUAugment:
    """Random geometry + window jitter + noise + blur on HU slabs ``[N, C, H, W]``.

    ``HUAugment(cfg)(hu, generator)`` returns augmented HU of the same shape; air (-1000 HU)
    fills what a rotation or shift brings into view.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def sample(self, n: int, generator: torch.Generator | None = None) -> AugmentParams:
        c, g = self.cfg, generator
        angle = _uniform(n, -c.rotation, c.rotation, g) * (math.pi / 180.0)
        if c.crop_scale is not None:
            # RandomResizedCrop: area fraction a, aspect ratio r in [3/4, 4/3] (log-uniform)
            area = _uniform(n, c.crop_scale[0], c.crop_scale[1], g)
            log_r = _uniform(n, math.log(3 / 4), math.log(4 / 3), g)
            ratio = torch.exp(log_r)
            sx = torch.sqrt(area * ratio).clamp(max=1.0)
            sy = torch.sqrt(area / ratio).clamp(max=1.0)
            # the crop centre anywhere that keeps the crop inside the image, plus `shift`
            shift_x = (1 - sx) * _uniform(n, -1, 1, g)
            shift_y = (1 - sy) * _uniform(n, -1, 1, g)
        else:
            zoom = _uniform(n, c.scale[0], c.scale[1], g)
            sx = sy = 1.0 / zoom
            shift_x = torch.zeros(n)
            shift_y = torch.zeros(n)
        shift_x = shift_x + _uniform(n, -c.shift, c.shift, g)
        shift_y = shift_y + _uniform(n, -c.shift, c.shift, g)
        flip_x = torch.where(torch.rand(n, generator=g) < c.hflip, -1.0, 1.0)
        flip_y = torch.where(torch.rand(n, generator=g) < c.vflip, -1.0, 1.0)
        centre_shift = _uniform(n, -c.centre_jitter, c.centre_jitter, g)
        width_scale = _uniform(n, 1 - c.width_jitter, 1 + c.width_jitter, g)
        noise_sigma = _uniform(n, 0.0, c.noise, g)
        blur_on = torch.rand(n, generator=g) < c.blur
        blur_sigma = torch.where(
            blur_on, _uniform(n, c.blur_sigma[0], c.blur_sigma[1], g), torch.zeros(n)
        )
        return AugmentParams(
            angle=angle,
            scale_x=torch.as_tensor(sx, dtype=torch.float32).expand(n).clone(),
            scale_y=torch.as_tensor(sy, dtype=torch.float32).expand(n).clone(),
            shift_x=shift_x,
            shift_y=shift_y,
            flip_x=flip_x,
            flip_y=flip_y,
            centre_shift=centre_shift,
            width_scale=width_scale,
            noise_sigma=noise_sigma,
            blur_sigma=blur_sigma,
        )

    def __call__(self, hu: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if hu.ndim != 4:
            raise ValueError(f"expected HU slabs [N, C, H, W], got shape {tuple(hu.shape)}")
        if self.cfg.is_identity:
            return hu
        params = self.sample(hu.shape[0], generator)
        noise = None
        if self.cfg.noise > 0:
            noise = torch.randn(hu.shape, generator=generator).to(hu.device)
        return self.apply(hu, params, noise)

    def apply(
        self, hu: torch.Tensor, p: AugmentParams, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply drawn parameters; ``noise`` is standard-normal ``[N, C, H, W]`` or None."""
        dev = hu.device
        x = hu.float()
        if self._has_geometry(p):
            x = _affine(x, p)
        if bool((p.blur_sigma > 0).any()):
            x = _gaussian_blur(x, p.blur_sigma.to(dev))
        # window jitter as an HU map: windowing hu' with (c, w) == windowing hu with
        # (c + dc, w * s), so every later window sees a slightly different display window
        c0 = self.cfg.reference_centre
        dc = p.centre_shift.to(dev).view(-1, 1, 1, 1)
        s = p.width_scale.to(dev).view(-1, 1, 1, 1)
        x = c0 + (x - c0 - dc) / s
        if noise is not None:
            x = x + noise * p.noise_sigma.to(dev).view(-1, 1, 1, 1)
        return x

    def _has_geometry(self, p: AugmentParams) -> bool:
        return bool(
            (p.angle != 0).any()
            or (p.scale_x != 1).any()
            or (p.scale_y != 1).any()
            or (p.shift_x != 0).any()
            or (p.shift_y != 0).any()
            or (p.flip_x != 1).any()
            or (p.flip_y != 1).any()
        )


def _affine(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """Rotate/scale/shift/flip ``[N, C, H, W]`` HU with air padding (square images)."""
    cos, sin = torch.cos(p.angle), torch.sin(p.angle)
    # theta maps output coordinates to input coordinates: rotation @ scale @ flip
    a = cos * p.scale_x * p.flip_x
    b = -sin * p.scale_y * p.flip_y
    c = sin * p.scale_x * p.flip_x
    d = cos * p.scale_y * p.flip_y
    theta = torch.stack(
        [torch.stack([a, b, p.shift_x], -1), torch.stack([c, d, p.shift_y], -1)], 1
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with 0, so shift HU to make air the zero
    out = F.grid_sample(x - AIR_HU, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + AIR_HU


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample; sigma 0 leaves a sample unchanged."""
    n, ch, h, w = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    safe = sigma.clamp(min=1e-3).view(-1, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / safe) ** 2)
    k = k / k.sum(1, keepdim=True)
    delta = (t == 0).to(x.dtype).expand_as(k)
    k = torch.where((sigma > 0).view(-1, 1), k, delta)  # [N, K]
    k = k.repeat_interleave(ch, 0)  # one kernel per (sample, channel) group
    y = x.reshape(1, n * ch, h, w)
    y = F.pad(y, (0, 0, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(n * ch, 1, -1, 1), groups=n * ch)
    y = F.pad(y, (radius, radius, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(n * ch, 1, 1, -1), groups=n * ch)
    return y.view(n, ch, h, w)


def slab_channels(cfg: PreprocessConfig) -> int:
    """How many HU slices a sample carries: 3 neighbours for the stacked modes, else 1."""
    return 3 if cfg.mode in ("stacked", "stacked_windows") else 1


def _window(hu: torch.Tensor, name: str) -> torch.Tensor:
    centre, width = WINDOWS[name]
    # same float32 arithmetic as preprocess.window_hu, so both paths agree bit for bit
    lo = float(np.float32(centre - width / 2.0))
    scale = float(np.float32(1.0 / width))
    return ((hu - lo) * scale).clamp_(0.0, 1.0)


def to_model_input(hu: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """HU slabs ``[N, C, H, W]`` -> model input ``[N, cfg.channels, H, W]`` in [0, 1].

    The torch twin of ``preprocess.input_from_resized_hu`` for one slab per sample:
    "stacked" windows the three neighbours (C = 3) with ``cfg.window``; "gray" repeats one
    windowed slice (C = 1); "windows" shows one slice in ``cfg.windows`` (C = 1);
    "stacked_windows" shows the three neighbours in each of ``cfg.windows`` (C = 3, nine out).
    """
    want = slab_channels(cfg)
    if hu.ndim != 4 or hu.shape[1] != want:
        raise ValueError(f"mode {cfg.mode!r} needs HU [N, {want}, H, W], got {tuple(hu.shape)}")
    hu = hu.float()
    if cfg.mode == "stacked":
        return _window(hu, cfg.window)
    if cfg.mode == "gray":
        return _window(hu, cfg.window).expand(-1, 3, -1, -1).contiguous()
    # "windows" (one slice) and "stacked_windows" (three): window-major, like preprocess
    return torch.cat([_window(hu, name) for name in cfg.windows], dim=1)
