"""Test-time adaptation of a weights folder's CNN, scored on labelled folders (a trial).

    python -m train.tta_trial --data data/fresh3007 --out runs/tta/3007.json \
        [--weights weights] [--variants base flip adabn adabn-stem]

Variants (docs/rules/2026-12-02-test-time-adaptation.md; the result is in
docs/ablation.md, "Test-time adaptation"):

- ``base``: the CNN as `Predictor.predict` runs it (fp32).
- ``flip``: each slice's embedding and logits averaged with its left-right mirror's.
- ``adabn``: every batch-norm layer normalises with the statistics of the study being read
  (all its slices in one batch) instead of the running statistics from training.
- ``adabn-stem``: the same for ``bn1`` and ``layer1`` only.

Each folder is read once through the public path (`rsna.iter_labelled_studies`,
`Predictor.model_input`), every variant's CNN output goes through the shipped sequence
model, temperatures and thresholds (`Predictor._prediction`), and `evaluate.score` reports
it (``tune=True``), so ``base`` gives what ``python -m hohoho_core evaluate`` gives.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hohoho_core.evaluate import score
from hohoho_core.models import SliceClassifier
from hohoho_core.predict import Predictor
from hohoho_core.rsna import build_index, iter_labelled_studies
from hohoho_core.spacing import measured_spacing

VARIANTS = ("base", "flip", "adabn", "adabn-stem")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a labelled RSNA-layout folder")
    p.add_argument("--out", type=Path, required=True, help="report JSON")
    p.add_argument("--weights", type=Path, default=Path("weights"))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def study_statistics_cnn(cnn: SliceClassifier, stem_only: bool) -> SliceClassifier:
    """A copy of ``cnn`` whose batch-norm layers (all, or ``bn1`` and ``layer1``) use the
    statistics of the batch they are given: one study per batch makes them the study's."""
    adapted = copy.deepcopy(cnn).eval()
    for name, module in adapted.backbone.named_modules():
        if isinstance(module, nn.BatchNorm2d) and (
                not stem_only or name == "bn1" or name.startswith("layer1")):
            # With no running statistics, eval-mode batch norm uses the batch's own.
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
    return adapted


def cnn_output(variant: str, predictor: Predictor, adapted: dict[str, SliceClassifier],
               x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, logits) of one study's model input under ``variant``."""
    if variant == "base":
        return predictor.predict_input(x)
    if variant == "flip":
        e1, l1 = predictor.predict_input(x)
        e2, l2 = predictor.predict_input(np.ascontiguousarray(x[..., ::-1]))
        return (e1 + e2) / 2, (l1 + l2) / 2
    with torch.inference_mode():
        e, lg = adapted[variant](torch.as_tensor(x))
    return e.float().numpy(), lg.float().numpy()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_folder(args.weights, precision="fp32")
    table = build_index(args.data, workers=1, progress=False).table
    start = time.perf_counter()
    studies = [(key, study, np.asarray(labels, dtype=np.int8), predictor.model_input(study),
                measured_spacing(study))
               for key, study, labels in iter_labelled_studies(args.data, table)]
    print(f"read {len(studies)} studies in {time.perf_counter() - start:.0f} s", flush=True)
    adapted = {"adabn": study_statistics_cnn(predictor.cnn, stem_only=False),
               "adabn-stem": study_statistics_cnn(predictor.cnn, stem_only=True)}
    cfg = predictor.config
    cnn_thresholds = np.asarray(cfg.cnn_thresholds or cfg.thresholds, dtype=np.float64)
    results: dict[str, Any] = {"data": str(args.data), "weights": str(args.weights)}
    for variant in args.variants:
        start = time.perf_counter()
        ys, cnn_prob, prob, keys = [], [], [], []
        for key, study, labels, x, spacing in studies:
            emb, logits = cnn_output(variant, predictor, adapted, x)
            out = predictor._prediction(emb, logits, study.study_uid, study.series_uid,
                                        list(study.image_ids), spacing)
            ys.append(labels)
            cnn_prob.append(out.cnn_prob)
            prob.append(out.prob)
            keys += [key] * len(labels)
        y, sids = np.concatenate(ys), np.asarray(keys)
        cnn = score(y, np.concatenate(cnn_prob), cnn_thresholds, sids, tune=True)
        both = score(y, np.concatenate(prob), predictor.thresholds, sids, tune=True)
        took = time.perf_counter() - start
        results[variant] = {"cnn": cnn, "cnn_lstm": both, "seconds": took}
        print(f"{variant:11s} CNN F2 {cnn['slice']['macro']:.4f} "
              f"(thr. picked here {cnn['tuned']['slice']['macro']:.4f}, AUC {cnn['auc_macro']:.4f})"
              f"  CNN+LSTM F2 {both['slice']['macro']:.4f} "
              f"(thr. picked here {both['tuned']['slice']['macro']:.4f}, "
              f"AUC {both['auc_macro']:.4f}, ECE {both['ece_macro']:.4f})  {took:.0f} s",
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
