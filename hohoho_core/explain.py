"""Saliency maps for the slice classifier: thin wrappers around captum.

One call per method, the way captum's ``Saliency(model).attribute(x, target=k)`` reads:

- ``"gradcam"``: Grad-CAM (Selvaraju et al., ICCV 2017) on the model's ``cam_layer``; one
  forward and a backward through the head only, so it is the cheap default for the app.
- ``"integrated_gradients"`` (alias ``"ig"``): Integrated Gradients (Sundararajan et al.,
  ICML 2017) from an all-air baseline (see `attribute`).
- ``"saliency"``: the plain input gradient (Simonyan et al., 2014).
- ``"occlusion"``: the drop of the logit when a square of the slice is replaced by air
  (Zeiler & Fergus, ECCV 2014); model-agnostic but needs one forward per window position.

Guided Backprop and Guided Grad-CAM are left out on purpose: they fail the
model-randomisation sanity check (Adebayo et al., NeurIPS 2018), which `randomisation_check`
runs for the methods offered here.

Every call works on a private copy of the model (``copy.deepcopy``, eval mode, parameters
frozen). A model shared between Streamlit sessions through ``st.cache_resource`` therefore
never sees captum's forward hooks, a train/eval switch or a ``.grad``, even while another
thread runs inference on it, and no global autograd switch is touched (gradient mode is set
with thread-local context managers only).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency
from scipy import ndimage, stats
from torch import nn

__all__ = [
    "METHODS",
    "Attribution",
    "SANITY_PASS_RHO",
    "RandomisationResult",
    "attribute",
    "jet",
    "overlay",
    "randomisation_check",
    "randomisation_passed",
    "saliency_map",
    "ssim",
    "to_display",
]

#: Saliency methods offered, in the order the app lists them.
METHODS: tuple[str, ...] = ("gradcam", "integrated_gradients", "saliency", "occlusion")
_ALIASES: dict[str, str] = {"ig": "integrated_gradients", "grad-cam": "gradcam"}

#: Percentile that maps to 1.0 for the gradient methods: input gradients are spiky, and
#: scaling by the single largest pixel would leave the rest of the map black.
GRADIENT_CLIP_PERCENTILE: float = 99.5

#: Spearman rank correlation (trained vs randomised model's map) below which the map counts
#: as clearly changed, i.e. the method passes the randomisation check.
SANITY_PASS_RHO: float = 0.5


@dataclass(frozen=True)
class Attribution:
    """Raw attributions for one slice and one class, at input resolution.

    ``values`` is float32 ``[C, H, W]``: ``C = 3`` (one map per input channel, signed) for
    integrated_gradients, saliency and occlusion; ``C = 1`` for gradcam (already ReLU'd
    and upsampled). ``convergence_delta`` is captum's completeness error for Integrated
    Gradients, ``sum(attributions) - (F(x) - F(baseline))``, and None for other methods.
    """

    method: str
    target: int
    values: np.ndarray
    convergence_delta: float | None = None


@dataclass(frozen=True)
class RandomisationResult:
    """Outcome of the model-randomisation sanity check (Adebayo et al., 2018).

    ``spearman``: Spearman rank correlation of the two display maps (they are already
    absolute/positive values); ``ssim``: structural similarity (Wang et al., 2004) of the two
    display maps in [0, 1]. Both are NaN when a map is constant (no ranks to compare). A
    method that passes the check shows a *low* similarity: its map depends on the weights.
    ``original_map`` and ``random_map`` are the float32 ``[H, W]`` display maps;
    ``randomised`` names the re-initialised modules (``""`` is the whole model).
    """

    spearman: float
    ssim: float
    original_map: np.ndarray
    random_map: np.ndarray
    randomised: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """Whether the map depends on the weights (see `randomisation_passed`)."""
        return randomisation_passed(self.spearman)


def randomisation_passed(spearman: float, max_rho: float = SANITY_PASS_RHO) -> bool:
    """The randomisation check's verdict: True when the rank correlation of the trained and
    the randomised model's maps is below ``max_rho`` (the map changed with the weights).

    NaN (a constant map has no ranks) never passes: a blank map shows nothing of the model.
    Only the rank correlation decides; SSIM is shown beside it for the reader.
    """
    rho = float(spearman)
    return not np.isnan(rho) and rho < max_rho


class _Logits(nn.Module):
    """Exposes only the logits ``[N, 6]`` so captum can pick the target column."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = getattr(self.model, "logits", None)
        if callable(logits):
            return logits(x)
        return self.model(x)[1]


def _canonical(method: str) -> str:
    name = _ALIASES.get(method.lower(), method.lower())
    if name not in METHODS:
        raise ValueError(f"Unknown saliency method {method!r}; choose one of {METHODS}")
    return name


def _private_copy(model: nn.Module) -> nn.Module:
    """A frozen eval-mode copy, so hooks, mode and autograd state never touch ``model``."""
    twin = copy.deepcopy(model)
    twin.eval()
    twin.requires_grad_(False)
    for p in twin.parameters():
        p.grad = None
    return twin


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected a torch.Tensor [1, 3, H, W], got {type(x).__name__}")
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"Expected one slice shaped [1, C, H, W], got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("Input slice contains NaN or infinite values")


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    method: str,
    *,
    baseline: torch.Tensor | None = None,
    ig_steps: int = 32,
    occlusion_window: int = 32,
    occlusion_stride: int | None = None,
    internal_batch_size: int = 16,
) -> Attribution:
    """Raw captum attributions of ``model.logits(x)[0, target]`` with respect to ``x``.

    Args:
        model: a ``SliceClassifier`` (``.logits(x) -> [N, 6]``; ``.cam_layer`` for gradcam).
            It is copied, never modified.
        x: float32 ``[1, 3, H, W]``, the windowed model input in [0, 1].
        target: class column (0-5, see ``labels.CLASSES``).
        method: one of `METHODS` (or ``"ig"``).
        baseline: reference image ``[1, 3, H, W]`` (or broadcastable) for Integrated
            Gradients and the fill value for occlusion. Default: all zeros *in the model's
            windowed input space*, i.e. an all-air image (-1000 HU is below every window, so
            it windows to 0). Zeros in the *normalised* space would instead be the ImageNet
            mean, a mid-grey that on CT means soft tissue: attributions would then explain
            the difference from "uniform brain", not from "nothing there" (docs/domain.md,
            "Saliency pitfalls"), and the completeness axiom would be anchored to a
            meaningless reference.
        ig_steps: Riemann/Gauss-Legendre steps of Integrated Gradients.
        occlusion_window: side of the square occluded (pixels; clipped to the image).
        occlusion_stride: step between windows; default half the window.
        internal_batch_size: images per forward for IG steps and occlusion perturbations.
    """
    name = _canonical(method)
    _check_input(x)
    if ig_steps < 1 or internal_batch_size < 1:
        raise ValueError("ig_steps and internal_batch_size must be positive")
    twin = _private_copy(model)
    n_classes = int(_logits_shape(twin, x)[-1])
    if not 0 <= int(target) < n_classes:
        raise ValueError(f"target {target} is outside 0..{n_classes - 1}")
    target = int(target)
    device = _device(twin)
    # A fresh tensor: captum sets requires_grad on its inputs, the caller's stays untouched.
    inp = x.detach().to(device=device, dtype=torch.float32).clone()
    if name in ("saliency", "integrated_gradients"):
        inp.requires_grad_(True)  # captum would do it anyway, with a warning
    ref = torch.zeros_like(inp) if baseline is None else _baseline(baseline, inp)
    forward = _Logits(twin)
    delta: float | None = None

    if name == "gradcam":
        layer = getattr(twin, "cam_layer", None)
        if not isinstance(layer, nn.Module):
            raise ValueError("Grad-CAM needs the model's cam_layer (its last conv block)")
        with torch.enable_grad():
            cam = LayerGradCam(forward, layer).attribute(inp, target=target, relu_attributions=True)
        # Grad-CAM lives at the block's resolution (H/32 for ResNet-18): upsample to the slice.
        attr = LayerAttribution.interpolate(cam, tuple(inp.shape[-2:]), "bilinear")
    elif name == "saliency":
        with torch.enable_grad():
            attr = Saliency(forward).attribute(inp, target=target, abs=False)
    elif name == "integrated_gradients":
        with torch.enable_grad():
            attr, conv = IntegratedGradients(forward).attribute(
                inp,
                baselines=ref,
                target=target,
                n_steps=ig_steps,
                internal_batch_size=internal_batch_size,
                return_convergence_delta=True,
            )
        delta = float(conv.detach().reshape(-1)[0])
    else:
        channels, height, width = inp.shape[1:]
        window = max(1, min(int(occlusion_window), height, width))
        stride = max(1, occlusion_stride if occlusion_stride is not None else window // 2)
        with torch.no_grad():
            attr = Occlusion(forward).attribute(
                inp,
                sliding_window_shapes=(channels, window, window),
                strides=(channels, stride, stride),
                baselines=ref,
                target=target,
                perturbations_per_eval=internal_batch_size,
            )
    values = attr.detach()[0].to(device="cpu", dtype=torch.float32).numpy()
    return Attribution(method=name, target=target, values=values, convergence_delta=delta)


def _logits_shape(model: nn.Module, x: torch.Tensor) -> torch.Size:
    # Read the class count from a Linear head; otherwise pay for one forward without grad.
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return torch.Size([1, head.out_features])
    with torch.no_grad():
        return _Logits(model)(x.detach().to(_device(model), torch.float32)).shape


def _baseline(baseline: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    ref = torch.as_tensor(baseline).detach().to(device=inp.device, dtype=inp.dtype)
    try:
        return torch.broadcast_to(ref, inp.shape).clone()
    except RuntimeError as exc:
        raise ValueError(
            f"baseline {tuple(ref.shape)} does not broadcast to input {tuple(inp.shape)}"
        ) from exc


def _scale(m: np.ndarray, percentile: float) -> np.ndarray:
    """Divide a non-negative map by its ``percentile`` value and clip to [0, 1]."""
    m = np.nan_to_num(m.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(np.percentile(m, percentile)) if percentile < 100 else float(m.max())
    if not top > 0:
        # A spiky map can have a zero percentile but positive pixels: fall back to the max.
        top = float(m.max())
    if not top > 0:
        return np.zeros(m.shape, dtype=np.float32)
    return np.clip(m / top, 0.0, 1.0).astype(np.float32)


def to_display(attr: Attribution) -> np.ndarray:
    """Reduce an `Attribution` to a float32 ``[H, W]`` map in [0, 1] for display.

    - gradcam: positive evidence only (captum's ReLU'd map, bilinearly upsampled with
      ``LayerAttribution.interpolate``), divided by its maximum.
    - saliency, integrated_gradients: absolute value summed over the 3 channels, divided
      by its 99.5th percentile and clipped (gradients are spiky; see
      `GRADIENT_CLIP_PERCENTILE`).
    - occlusion: channel mean (all channels share a window) with the negative part removed,
      i.e. where hiding the region lowers the class logit, divided by its maximum.

    An all-zero map (e.g. a class with no positive evidence) stays all zero.
    """
    values = np.asarray(attr.values, dtype=np.float64)
    if attr.method == "gradcam":
        return _scale(np.maximum(values[0], 0.0), 100.0)
    if attr.method in ("saliency", "integrated_gradients"):
        return _scale(np.abs(values).sum(axis=0), GRADIENT_CLIP_PERCENTILE)
    if attr.method == "occlusion":
        return _scale(np.maximum(values.mean(axis=0), 0.0), 100.0)
    raise ValueError(f"Unknown attribution method {attr.method!r}")


def saliency_map(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    method: str = "gradcam",
    *,
    baseline: torch.Tensor | None = None,
    ig_steps: int = 32,
    occlusion_window: int = 32,
    occlusion_stride: int | None = None,
    internal_batch_size: int = 16,
) -> np.ndarray:
    """Saliency of class ``target`` for one slice: float32 ``[H, W]`` in [0, 1].

    ``x`` is the model input ``[1, 3, H, W]`` in [0, 1]. See `attribute` for the arguments
    (and the all-air default baseline) and `to_display` for how each method is normalised.
    """
    return to_display(
        attribute(
            model,
            x,
            target,
            method,
            baseline=baseline,
            ig_steps=ig_steps,
            occlusion_window=occlusion_window,
            occlusion_stride=occlusion_stride,
            internal_batch_size=internal_batch_size,
        )
    )


# --- model-randomisation sanity check -------------------------------------------------------


def _contains(parent: nn.Module, module: nn.Module) -> bool:
    return any(m is module for m in parent.modules())


def _randomise_targets(
    model: nn.Module, layers: Literal["cascade", "head", "all"]
) -> list[nn.Module]:
    """Modules to re-initialise, top-down from the logits."""
    if layers == "all":
        return [model]
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise ValueError("randomisation_check needs the model's head module")
    if layers == "head":
        return [head]
    if layers != "cascade":
        raise ValueError(f"layers must be 'cascade', 'head' or 'all', got {layers!r}")
    # Cascade: the head and every backbone block from the last conv block (cam_layer) up.
    cam = getattr(model, "cam_layer", None)
    backbone = getattr(model, "backbone", None)
    chosen: list[nn.Module] = []
    if isinstance(cam, nn.Module) and isinstance(backbone, nn.Module):
        children = list(backbone.children())
        start = next((i for i, c in enumerate(children) if _contains(c, cam)), None)
        chosen = children[start:] if start is not None else [cam]
    elif isinstance(cam, nn.Module):
        chosen = [cam]
    return [*chosen, head]


def _reinitialise(modules: list[nn.Module], seed: int) -> None:
    """Fresh default initialisation (``reset_parameters``) of every parameter in ``modules``.

    Parameters of modules without ``reset_parameters`` are shuffled instead: same value
    distribution, learnt structure gone. The global RNG is left as it was.
    """
    params = [p for m in modules for p in m.parameters()]
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        covered: set[int] = set()
        for parent in modules:
            for m in parent.modules():
                reset = getattr(m, "reset_parameters", None)
                if callable(reset):
                    reset()
                    covered.update(id(p) for p in m.parameters(recurse=False))
        for p in params:
            if id(p) not in covered and p.numel() > 1:
                flat = p.reshape(-1)
                p.copy_(flat[torch.randperm(flat.numel(), device=p.device)].view_as(p))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(stats.spearmanr(a, b).statistic)


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """Mean structural similarity of two ``[H, W]`` maps (Wang et al., IEEE TIP 2004).

    Gaussian-weighted local statistics (sigma 1.5, as in the paper), K1 = 0.01, K2 = 0.03,
    population covariances, and a border of half a window left out of the mean (the
    convention of scikit-image, which is not a dependency here). 1 means identical.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim needs two equal [H, W] maps, got {a.shape} and {b.shape}")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    truncate = 3.5

    def blur(z: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(z, sigma=sigma, truncate=truncate, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    local = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    pad = int(truncate * sigma + 0.5)
    if min(a.shape) > 2 * pad:
        local = local[pad:-pad, pad:-pad]
    return float(local.mean())


def randomisation_check(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    method: str = "gradcam",
    *,
    seed: int = 0,
    layers: Literal["cascade", "head", "all"] = "cascade",
    **saliency_kwargs: object,
) -> RandomisationResult:
    """Model-randomisation sanity check of a saliency method (Adebayo et al., NeurIPS 2018).

    The map of ``model`` is compared with the map of a copy whose top layers are
    re-initialised: ``layers="head"`` randomises the classification head only;
    ``"cascade"`` (default) randomises, top-down, the head and every backbone block from
    ``cam_layer`` (ResNet ``layer4``) up; ``"all"`` randomises every weight. A saliency
    method that explains the model must change: low Spearman and SSIM pass, values near 1
    mean the map shows the image (edges), not what the model learnt. ``model`` itself is
    not modified. Extra keyword arguments go to `saliency_map`.

    Reading the numbers: Integrated Gradients multiplies by ``x - baseline``, so every air
    pixel of the slice is exactly 0 for any weights; on a slice that is half air this alone
    keeps its Spearman high (about 0.95 on the test stand-in, against 0.2-0.6 for Grad-CAM
    and saliency). Compare SSIM, or methods against each other, rather than one threshold.
    """
    original = saliency_map(model, x, target, method, **saliency_kwargs)  # type: ignore[arg-type]
    twin = copy.deepcopy(model)
    modules = _randomise_targets(twin, layers)
    _reinitialise(modules, seed)
    names = {id(m): n for n, m in twin.named_modules()}
    randomised = tuple(names.get(id(m), "?") for m in modules)
    random = saliency_map(twin, x, target, method, **saliency_kwargs)  # type: ignore[arg-type]
    return RandomisationResult(
        spearman=_spearman(original, random),
        ssim=ssim(original, random) if np.ptp(original) > 0 and np.ptp(random) > 0 else math.nan,
        original_map=original,
        random_map=random,
        randomised=randomised,
    )


# --- display --------------------------------------------------------------------------------


def jet(values: np.ndarray) -> np.ndarray:
    """Jet-like colormap: ``[...]`` values in [0, 1] -> float32 ``[..., 3]`` RGB in [0, 1].

    Piecewise-linear (dark blue, blue, cyan, yellow, red, dark red), written in NumPy
    because matplotlib is not a dependency. NaN maps to 0.
    """
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0), 0.0, 1.0)
    red = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    green = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    blue = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return np.stack([red, green, blue], axis=-1).astype(np.float32)


def overlay(image_gray: np.ndarray, saliency: np.ndarray, opacity: float = 0.4) -> np.ndarray:
    """Blend a saliency map over a slice: uint8 RGB ``[H, W, 3]``.

    ``image_gray`` and ``saliency`` are ``[H, W]`` in [0, 1] (values outside are clipped).
    Each pixel is ``(1 - opacity) * gray + opacity * jet(saliency)``, so opacity 0 returns
    the slice unchanged (as RGB) and 1 the colour map alone.
    """
    gray = np.asarray(image_gray, dtype=np.float32)
    sal = np.asarray(saliency, dtype=np.float32)
    if gray.ndim != 2 or gray.shape != sal.shape:
        raise ValueError(f"overlay needs two equal [H, W] arrays, got {gray.shape}, {sal.shape}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    gray = np.clip(np.nan_to_num(gray, nan=0.0), 0.0, 1.0)
    rgb = (1.0 - opacity) * gray[..., None] + opacity * jet(sal)
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
