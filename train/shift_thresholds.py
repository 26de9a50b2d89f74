"""Thresholds that survive a shift: pick them over shifted validation views, decide by
leaving one view out or, better, on labelled studies that are in no view (issue 13).

    python -m train.shift_thresholds --weights weights --val data/mixed_train/val \
        --view plain=data/plain_train/val --view rand=data/demo_train/val \
        [--decide-on fresh=data/fresh/val ...] \
        --test own=data/mixed_train/test --test foreign=data/mixed_train/foreign \
        --cache runs/shift --out runs/shift/report.json [--write runs/shift/weights]

Recipe:
1. score the validation split, each ``--view`` folder and the validation split under each
   perturbation of `hohoho_core.shift` (one cached ``.npz`` of probabilities per view);
2. for CNN + LSTM and for the CNN alone, leave one view out for each rule (the current
   one, "val": F2-optimal on the validation split alone, and the rules of `shift.RULES`
   over the views) and take the rule with the best mean held-out macro F2;
3. decide: a new rule is used only if it beats "val" by at least ``--min-gain``. With
   ``--decide-on`` folders (labelled studies that are in no view: another seed), the
   decision is made on them instead: each rule's thresholds, picked over all the views,
   against the weights folder's own, mean macro F2 over those folders (at least
   ``--min-gain`` better, no folder more than ``--max-loss`` worse). Every view holds the
   same validation studies, so leaving a view out does not leave its studies out, and a
   rule that fits where the F2 curve peaks on those studies is favoured there (docs/
   ablation.md, fourteenth session); the held-out-view table is still reported;
4. only then score the ``--test`` folders with every rule's thresholds, for the report:
   they never change the decision (the foreign generator must stay an independent check);
5. ``--write DIR``: a new weights folder with the decided thresholds (the source folder is
   never written), via `retune.write_retuned`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from hohoho_core.atomic import atomic_open
from hohoho_core.metrics import search_thresholds
from hohoho_core.shift import (
    PERTURBATIONS,
    RULES,
    View,
    leave_one_view_out,
    macro_at,
    perturb_hu,
    pick_thresholds,
)
from train import common

log = logging.getLogger("hohoho.train")

STAGES = {"cnn_lstm": "prob", "cnn": "cnn"}  # report key -> array in the cached views
CURRENT = "val"
AS_SHIPPED = "as shipped"  # the weights folder's own thresholds


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Thresholds picked over shifted validation views",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=Path, default=Path("weights"))
    p.add_argument("--val", type=Path, required=True, help="the validation split's folder")
    p.add_argument("--view", action="append", default=[], metavar="NAME=ROOT",
                   help="another labelled validation-side folder scored as a view")
    p.add_argument("--perturb", nargs="*", default=sorted(PERTURBATIONS),
                   choices=sorted(PERTURBATIONS),
                   help="perturbations of the validation split, each a view")
    p.add_argument("--test", action="append", default=[], metavar="NAME=ROOT",
                   help="scored after the decision, for the report only")
    p.add_argument("--rules", nargs="*", default=["pooled", "mean", "worst"],
                   choices=sorted(RULES))
    p.add_argument("--min-gain", type=float, default=0.005,
                   help="a new rule must beat the current one by this mean macro F2 (over "
                        "the held-out views, or over the --decide-on folders)")
    p.add_argument("--decide-on", action="append", default=[], metavar="NAME=ROOT",
                   help="labelled folders of studies in no view (another seed): decide on "
                        "them instead of by leaving one view out, for both stages (CNN + "
                        "LSTM and CNN alone); a folder sharing a study with a view is refused")
    p.add_argument("--max-loss", type=float, default=0.01,
                   help="with --decide-on: the most a chosen rule may lose on any one folder")
    p.add_argument("--cache", type=Path, required=True, help="folder for the views' .npz")
    p.add_argument("--out", type=Path, required=True, help="report (JSON)")
    p.add_argument("--write", type=Path, default=None, help="new weights folder to write")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="the CNN's arithmetic for scoring; fp32, the arithmetic the shipped "
                        "thresholds were picked in, unless you ask otherwise")
    return p


def _named(items: list[str]) -> list[tuple[str, Path]]:
    out = []
    for item in items:
        name, sep, root = item.partition("=")
        if not sep or not name or not root:
            raise SystemExit(f"expected NAME=ROOT, got {item!r}")
        out.append((name, Path(root)))
    return out


#: Bumped when a perturbation changes, so cached views made with the old one are not reused.
PERTURB_VERSION = 1


def weights_key(folder: Path) -> str:
    """Short hash of the weights' tensors and config (temperatures, preprocessing): the
    cache is valid for these weights only."""
    h = hashlib.sha256()
    for f in sorted([*folder.glob("*.safetensors"), folder / "config.json"]):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def view_source(root: Path, perturbation: str | None, precision: str = "fp32") -> str:
    """What a cached view was scored from, in which arithmetic; a cached file from anything
    else (views cached before the arithmetic was recorded included) is scored again."""
    return f"{root.resolve()}|{perturbation or ''}|v{PERTURB_VERSION}|{precision}"


def score_view(predictor: Any, root: Path, perturbation: str | None) -> dict[str, np.ndarray]:
    """Labels and both stages' probabilities of every labelled slice under ``root``."""
    from hohoho_core.evaluate import predict_index
    from hohoho_core.rsna import build_index, iter_labelled_studies

    table = build_index(root, workers=1, progress=False).table
    studies = iter_labelled_studies(root, table)
    if perturbation is not None:
        def shifted(src: Any = studies) -> Any:
            for key, study, labels in src:
                seed = zlib.crc32(key.encode()) & 0x7FFFFFFF  # per study, run to run the same
                hu = perturb_hu(study.hu, perturbation, seed)
                yield key, dataclasses.replace(study, hu=hu), labels
        studies = shifted()
    r = predict_index(predictor, root, table, studies=studies)
    # Study keys too: --decide-on folders must share none with the views (plain strings:
    # the cache never needs pickle).
    return {"labels": r.labels, "prob": r.prob, "cnn": r.cnn_prob,
            "study_ids": np.asarray(r.study_ids, dtype=str)}


def cached_view(predictor: Any, key: str, cache: Path, name: str, root: Path,
                perturbation: str | None) -> dict[str, np.ndarray]:
    f = cache / key / f"{name}.npz"
    source = view_source(root, perturbation, predictor.precision)
    if f.is_file():
        with np.load(f) as z:
            if "source" in z.files and str(z["source"]) == source:
                return {k: z[k] for k in z.files if k != "source"}
        log.info("view %s: cached from another folder or perturbation, scored again", name)
    t = time.perf_counter()
    arrays = score_view(predictor, root, perturbation)
    f.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(f) as out:  # a run stopped mid-write leaves no broken view behind
        np.savez(out, **arrays, source=np.asarray(source))
    log.info("view %s: %d slices in %.0f s", name, len(arrays["labels"]),
             time.perf_counter() - t)
    return arrays


def as_view(name: str, arrays: dict[str, np.ndarray], stage: str) -> View:
    y = np.asarray(arrays["labels"])
    keep = (y >= 0).all(axis=1)  # a slice with an unknown label is left out, as in `score`
    return View(name, y[keep].astype(np.int64), np.asarray(arrays[stage], np.float64)[keep])


def thresholds_by_rule(views: list[View], rules: list[str]) -> dict[str, np.ndarray]:
    out = {CURRENT: search_thresholds(views[0].labels, views[0].prob)}
    for r in rules:
        out[r] = pick_thresholds(views, r)
    return out


def decide(views: list[View], rules: list[str], min_gain: float,
           thr_val: np.ndarray) -> dict[str, Any]:
    """Held-out scores of every rule and the rule to use (``views[0]`` is validation,
    ``thr_val`` the current rule's thresholds picked on it)."""
    held = leave_one_view_out(views, rules)
    # The current rule picks on validation alone; its validation score is in-sample, which
    # only favours keeping it.
    held[CURRENT] = macro_at({v.name: v for v in views}, thr_val)
    mean = {r: float(np.mean(list(d.values()))) for r, d in held.items()}
    best = max(rules, key=lambda r: mean[r]) if rules else CURRENT
    chosen = best if rules and mean[best] >= mean[CURRENT] + min_gain else CURRENT
    return {"held_out": held, "mean": mean, "best_new": best, "chosen": chosen}


def decide_on_fresh(fresh: dict[str, View], thr: dict[str, np.ndarray], own: np.ndarray,
                    rules: list[str], min_gain: float, max_loss: float) -> dict[str, Any]:
    """The rule to use, judged on studies no view holds: each rule's thresholds (picked
    over the views) against the weights folder's own ``own``. A rule qualifies when its
    mean macro F2 over ``fresh`` beats the folder's by at least ``min_gain`` and it is
    not below the folder's by more than ``max_loss`` on any one folder; the best
    qualifying rule is chosen, else `CURRENT` (the folder keeps its thresholds)."""
    scores = {r: macro_at(fresh, thr[r]) for r in rules}
    scores[AS_SHIPPED] = macro_at(fresh, own)
    mean = {r: float(np.mean(list(d.values()))) for r, d in scores.items()}
    # The largest drop against the folder's own thresholds on any one folder (0 if none).
    loss = {r: max(0.0, max(scores[AS_SHIPPED][n] - scores[r][n] for n in fresh))
            for r in rules}
    ok = [r for r in rules if mean[r] >= mean[AS_SHIPPED] + min_gain and loss[r] <= max_loss]
    chosen = max(ok, key=lambda r: mean[r]) if ok else CURRENT
    return {"scores": scores, "mean": mean, "largest_loss": loss, "chosen": chosen}


def shared_studies(fresh: dict[str, dict[str, np.ndarray]],
                   views: dict[str, dict[str, np.ndarray]]) -> dict[str, int]:
    """Per fresh folder, how many of its series keys some view also holds (should be 0)."""
    seen: set[str] = set()
    for arrays in views.values():
        seen.update(str(k) for k in arrays.get("study_ids", ()))
    return {n: len({str(k) for k in a.get("study_ids", ())} & seen) for n, a in fresh.items()}


def _table(first: str, rows: dict[str, dict[str, float]],
           mean: dict[str, float] | None = None) -> list[str]:
    """A markdown table: one row per rule, one column per set, and a mean column if given."""
    cols = list(next(iter(rows.values())))
    tail = " | mean |" if mean is not None else " |"
    out = [f"| {first} | " + " | ".join(cols) + tail,
           "| --- | " + " | ".join("---:" for _ in cols) + (" | ---: |" if mean else " |")]
    for rule, d in rows.items():
        cells = " | ".join(f"{d[c]:.3f}" for c in cols)
        out.append(f"| {rule} | {cells}" + (f" | {mean[rule]:.4f} |" if mean else " |"))
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = []
    for stage, rep in report["stages"].items():
        views = list(rep["held_out"][CURRENT])
        lines += [f"### {'CNN + LSTM' if stage == 'cnn_lstm' else 'CNN'}", "",
                  "Held-out macro slice F2 (thresholds picked on the other views):", "",
                  *_table("rule", rep["held_out"], rep["mean"])]
        by_views = rep.get("held_out_chosen", rep["chosen"])
        lines += ["", f"{'Decision by views alone' if 'fresh' in rep else 'Decision'}: "
                  f"**{by_views}** (best new rule {rep['best_new']}, "
                  f"mean {rep['mean'][rep['best_new']]:.4f} against {rep['mean'][CURRENT]:.4f};"
                  f" needed +{report['min_gain']:g}).", ""]
        if rep.get("fresh"):
            fr = rep["fresh"]
            lines += ["Decided on studies in no view (`--decide-on`; macro slice F2, each "
                      "rule's thresholds picked over all the views):", "",
                      *_table("thresholds", fr["scores"], fr["mean"]),
                      "", f"Decision on them: **{fr['chosen']}** (needed +{report['min_gain']:g}"
                      f" on the mean, no set below {AS_SHIPPED} by more than "
                      f"{report['max_loss']:g}; `{CURRENT}` keeps the folder's thresholds).", ""]
        if rep.get("shipped_on_views"):
            d = rep["shipped_on_views"]
            lines += ["The folder's own thresholds on the same views (for reference; not held "
                      "out): " + ", ".join(f"{v} {d[v]:.3f}" for v in views)
                      + f"; mean {np.mean(list(d.values())):.4f}.", ""]
        if rep.get("tests"):
            lines += ["Scored after the decision (macro slice F2):", "",
                      *_table("thresholds", rep["tests"]), ""]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict[str, Any]:
    common.setup_logging(True)
    import torch

    from hohoho_core.predict import Predictor
    from hohoho_core.retune import write_retuned

    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = Predictor.from_folder(args.weights, device="cpu", precision=args.precision)
    # A view scored in another arithmetic is another view: the cache key says which.
    key = weights_key(args.weights)  # the arithmetic is part of each view's source
    config = predictor.config  # loaded once, with the predictor
    shipped = {"cnn_lstm": np.asarray(config.thresholds, np.float64),
               "cnn": np.asarray(config.cnn_thresholds or config.thresholds, np.float64)}
    sources: list[tuple[str, Path, str | None]] = [("val", args.val, None)]
    sources += [(f"val_{n}", r, None) for n, r in _named(args.view)]
    sources += [(f"val_{k}", args.val, k) for k in args.perturb]
    fresh_src = [(f"fresh_{n}", r) for n, r in _named(args.decide_on)]
    names = ([n for n, _, _ in sources] + [f"test_{n}" for n, _ in _named(args.test)]
             + [n for n, _ in fresh_src])
    if len(set(names)) != len(names):
        raise SystemExit(f"two views share a name: {sorted(n for n in names if names.count(n) > 1)}")
    scored = {n: cached_view(predictor, key, args.cache, n, r, k) for n, r, k in sources}
    fresh = {n: cached_view(predictor, key, args.cache, n, r, None) for n, r in fresh_src}
    overlap = {n: k for n, k in shared_studies(fresh, scored).items() if k}
    if overlap:
        raise SystemExit(f"--decide-on folders share studies with the views ({overlap}): they "
                         "must hold studies in no view (another seed)")
    report: dict[str, Any] = {"weights": str(args.weights), "weights_key": key,
                              "views": [n for n, _, _ in sources], "min_gain": args.min_gain,
                              "max_loss": args.max_loss, "decide_on": list(fresh),
                              "stages": {}}
    for stage, array in STAGES.items():
        views = [as_view(n, scored[n], array) for n, _, _ in sources]
        thr = thresholds_by_rule(views, list(args.rules))
        rep = decide(views, list(args.rules), args.min_gain, thr[CURRENT])
        if fresh:
            rep["fresh"] = decide_on_fresh(
                {n: as_view(n, a, array) for n, a in fresh.items()}, thr, shipped[stage],
                list(args.rules), args.min_gain, args.max_loss)
            rep["held_out_chosen"], rep["chosen"] = rep["chosen"], rep["fresh"]["chosen"]
        # For the reader: the folder's own thresholds (picked in training on the same split,
        # from cached preprocessing, so a little different) on every view.
        rep["shipped_on_views"] = macro_at({v.name: v for v in views}, shipped[stage])
        rep["thresholds"] = {r: [float(x) for x in t] for r, t in thr.items()}
        report["stages"][stage] = rep
    # Only now, for the report: the test folders never reach the decision above.
    tests = {n: cached_view(predictor, key, args.cache, f"test_{n}", r, None)
             for n, r in _named(args.test)}
    for stage, array in STAGES.items():
        rep = report["stages"][stage]
        tviews = {n: as_view(n, a, array) for n, a in tests.items()}
        if not tviews:
            rep["tests"] = {}
            continue
        rep["tests"] = {r: macro_at(tviews, np.asarray(t)) for r, t in rep["thresholds"].items()}
        rep["tests"]["as shipped"] = macro_at(tviews, shipped[stage])
        rep["tests"]["picked on each set (oracle)"] = {
            n: float(macro_at({n: v}, search_thresholds(v.labels, v.prob))[n])
            for n, v in tviews.items()}
    common.write_json(args.out, report)
    args.out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    if args.write is not None:
        final = report["stages"]["cnn_lstm"]
        cnn = report["stages"]["cnn"]

        def decided(stage: str, rep: dict[str, Any]) -> np.ndarray:
            # Keeping the current rule keeps the folder's thresholds as they are.
            chosen = rep["chosen"]
            return shipped[stage] if chosen == CURRENT else np.asarray(rep["thresholds"][chosen])

        write_retuned(args.weights, args.write, decided("cnn_lstm", final), decided("cnn", cnn),
                      {"how": "train.shift_thresholds", "rule": final["chosen"],
                       "cnn_rule": cnn["chosen"], "views": report["views"],
                       "decided_on": report["decide_on"] or "views, one left out"})
        log.info("wrote %s", args.write)
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
