"""3. Saliency: seconds per slice for each captum method of `hohoho_core.explain`, at the
model's input size, with `saliency_map`'s default settings (what a caller gets by default).
"""

from __future__ import annotations

import torch

from bench.common import Section, time_call
from bench.context import BenchContext
from hohoho_core.dicom import load_study
from hohoho_core.explain import METHODS, saliency_map
from hohoho_core.labels import ANY_INDEX
from hohoho_core.preprocess import make_input

__all__ = ["GOAL_GRADCAM_S", "run"]

GOAL_GRADCAM_S = 0.3


def run(ctx: BenchContext) -> Section:
    sec = Section("saliency", "3. Saliency")
    bundle = ctx.model
    cfg = bundle.preprocess
    study = load_study(ctx.study_dir)
    x = torch.from_numpy(make_input(study.hu, cfg))
    mid = x.shape[0] // 2
    repeats = dict(ctx.sizes.saliency_repeats)
    sec.params.update(model=bundle.source, input=f"[1, 3, {cfg.size}, {cfg.size}]",
                      target="any", threads=ctx.threads,
                      settings="explain defaults: IG 32 steps, occlusion window 32 stride 16, "
                               "internal batch 16")
    gradcam_s = float("nan")
    for method in METHODS:
        n = repeats.get(method, 1)
        # Different slices per repeat, the way a user scrolls; every call copies the model.
        slices = [(mid + k) % x.shape[0] for k in range(n + 1)]
        it = iter(slices)

        def call(it=it, method=method) -> object:
            k = next(it)
            return saliency_map(bundle.cnn, x[k : k + 1], ANY_INDEX, method)

        t = time_call(call, repeats=n, warmup=1)
        sec.add(method, t.median, "s/slice", f"median of {t.n}", t)
        if method == "gradcam":
            gradcam_s = t.median
    sec.goal("Grad-CAM per slice", gradcam_s, "<=", GOAL_GRADCAM_S, "s",
             cause="one forward and a backward to the last block per call, plus a private "
                   "copy of the model (explain.attribute deep-copies it)")
    return sec
