"""The int8 path of section 1: speed, and the F2 check that decides whether it is acceptable.

A quantised path may change probabilities by more than 1e-3; the issue accepts it only when
macro F2 on the synthetic test split stays within 0.005 of fp32. That needs trained weights
whose config names the split (``config.data["sets"]["test"]``, written by
``train/make_demo_weights.py``); the split is reused where it was generated or regenerated
from its seed. With random-init weights the check is reported as not measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.context import REPO_ROOT, BenchContext, generate_once
from hohoho_core.evaluate import predict_index, score
from hohoho_core.predict import Predictor
from hohoho_core.rsna import build_index

__all__ = ["GOAL_F2_DELTA", "split_f2", "split_randomise", "test_split_root"]

GOAL_F2_DELTA = 0.005


def _test_spec(data: dict[str, Any]) -> dict[str, Any] | None:
    sets = data.get("sets") if isinstance(data.get("sets"), dict) else data
    spec = sets.get("test") if isinstance(sets, dict) else None
    needed = ("studies", "seed", "size", "slices")
    if not isinstance(spec, dict) or not all(k in spec for k in needed):
        return None
    return spec


def test_split_root(ctx: BenchContext, data: dict[str, Any]) -> Path | None:
    """The weights' synthetic test split on disk (reused or regenerated), or None."""
    spec = _test_spec(data)
    if spec is None:
        return None
    want = {k: v for k, v in spec.items() if k != "root"}
    root = Path(str(spec.get("root", "")))
    root = root if root.is_absolute() else REPO_ROOT / root
    marker = root / "generated.json"
    if marker.is_file():
        have = json.loads(marker.read_text(encoding="utf-8"))
        if all(have.get(k) == v for k, v in want.items()):
            return root
    if float(spec.get("label_noise", 0.0)) != 0.0:
        return None  # generate_once makes clean labels only
    randomise = split_randomise(spec)
    folder = ctx.work / (f"test_split_seed{spec['seed']}_{spec['studies']}x{spec['size']}"
                         + (f"_rand{float(randomise):g}" if randomise else ""))
    return generate_once(folder, int(spec["studies"]), int(spec["seed"]), int(spec["size"]),
                         (int(spec["slices"][0]), int(spec["slices"][1])),
                         workers=ctx.threads, randomise=randomise)


def split_randomise(spec: dict[str, Any]) -> bool | float:
    """The ``randomise`` argument of `generate_dataset` that made a split of the config.

    ``make_demo_weights`` records ``"randomise": true`` and, for a mixed split,
    ``"randomise_fraction"``; regenerating without them would score a plain split under
    the randomised split's name.
    """
    if not spec.get("randomise"):
        return False
    fraction = float(spec.get("randomise_fraction", 1.0))
    return True if fraction >= 1.0 else fraction


def split_f2(predictors: dict[str, Predictor], root: Path) -> dict[str, dict[str, float]]:
    """Macro F2 (slice and study level) of each predictor's final output on a split.

    Thresholds are each predictor's own (the weights' validation-tuned ones); unlabelled
    slices (-1) are left out.
    """
    table = build_index(root, workers=1, progress=False).table
    # Each predictor reads the split itself: holding every study for both would cost GBs.
    preds = {name: predict_index(predictor, root, table) for name, predictor in predictors.items()}
    out = {}
    for name, predictor in predictors.items():
        p = preds[name]
        rep = score(p.labels, p.prob, predictor.thresholds, p.study_ids)
        out[name] = {"slice": rep["slice"]["macro"], "study": rep["study"]["macro"],
                     "n_slices": rep["n_slices"], "max_abs_dp": 0.0}
    if "fp32" in preds:
        ref = preds["fp32"].prob
        for name in preds:
            out[name]["max_abs_dp"] = float(np.abs(preds[name].prob - ref).max())
    return out
