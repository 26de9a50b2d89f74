"""5. Stage-1 training throughput: images per second of the training step of
``train/train_cnn.py`` (HU augmentation, windowing, forward, asymmetric loss, backward,
AdamW step) on the CPU, and on a GPU when one is available.

The batches are HU slabs cut from the synthetic study, so no data loader is timed: the
figure is the model's training compute, which sets how long an epoch takes.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import Section, ratio
from bench.context import BenchContext
from hohoho_core.augment import PRESETS, HUAugment, slab_channels, to_model_input
from hohoho_core.dicom import load_study
from hohoho_core.losses import build_loss
from hohoho_core.models import create_model
from hohoho_core.preprocess import PreprocessConfig, crop_and_resize_hu, stack_neighbours

__all__ = ["run", "train_rate"]


def _slabs(hu_small: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """HU slabs ``[S, C, H, W]`` as the training loader gives them (C = 3 when stacked)."""
    if slab_channels(cfg) == 3:
        return torch.from_numpy(stack_neighbours(hu_small))
    return torch.from_numpy(hu_small[:, None].copy())


def train_rate(
    slabs: torch.Tensor,
    cfg: PreprocessConfig,
    arch: str,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    channels_last: bool,
    amp: bool = False,
) -> tuple[float, list[float]]:
    """(images per second at the median step time, seconds of each timed step).

    ``warmup`` untimed steps first; each timed step is synchronised on a GPU.
    """
    torch.manual_seed(0)
    model = create_model(arch, in_channels=cfg.channels).to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    criterion = build_loss("asl")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    augment = HUAugment(PRESETS["generous"])
    g = torch.Generator().manual_seed(0)
    n = slabs.shape[0]
    labels = torch.zeros(batch, 6)
    labels[::3, 5] = 1.0

    def step(i: int) -> None:
        idx = torch.arange(i * batch, (i + 1) * batch) % n
        hu = slabs[idx].to(device)
        x = to_model_input(augment(hu, g), cfg).contiguous(memory_format=fmt)
        with torch.autocast(device.type, enabled=amp):
            _, logits = model(x)
        loss = criterion(logits.float(), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(warmup):
        step(i)
    sync()
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(warmup + i)
        sync()
        times.append(time.perf_counter() - t0)
    return ratio(batch, float(np.median(times))), times


def run(ctx: BenchContext) -> Section:
    sec = Section("train", "5. Training (stage 1)")
    s = ctx.sizes
    bundle = ctx.model
    cfg = bundle.preprocess
    study = load_study(ctx.study_dir)
    slabs = _slabs(crop_and_resize_hu(study.hu, cfg), cfg)
    arch = bundle.config.arch
    sec.params.update(model=f"{arch} at {cfg.size} px ({cfg.mode})", batch=s.train_batch,
                      steps=f"{s.train_warmup} warm-up + {s.train_steps} timed",
                      step="generous HU augmentation, window, forward, ASL, backward, AdamW",
                      threads=ctx.threads)
    cpu = torch.device("cpu")
    rates = {}
    for label, cl in (("NCHW (train_cnn.py's CPU default)", False), ("channels-last", True)):
        r, times = train_rate(slabs, cfg, arch, s.train_batch, s.train_steps, s.train_warmup,
                              cpu, cl)
        rates[cl] = r
        sec.add(f"CPU, {label}", r, "images/s",
                f"batch / median step time over {len(times)} steps, {ctx.threads} thread(s)",
                times)
    sec.add("CPU channels-last / NCHW", ratio(rates[True], rates[False]), "x")
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        name = torch.cuda.get_device_name(0)
        r, times = train_rate(slabs, cfg, arch, s.train_batch * 4, s.train_steps,
                              s.train_warmup, gpu, True, amp=True)
        sec.add(f"GPU ({name}), channels-last + AMP", r, "images/s",
                f"batch {s.train_batch * 4}, median step time", times)
    else:
        sec.add("GPU", "none available", "", "torch.cuda.is_available() is False")
    return sec
