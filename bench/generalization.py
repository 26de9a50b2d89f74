"""Generalisation check: the shipped model on head-CT phantoms from a generator it never saw.

    python bench/generalization.py                 # 60 foreign studies at 512 px, seed 7001
    python bench/generalization.py --studies 4     # a smoke run

1. Writes the foreign dataset (``bench/foreign_phantom.py``, RSNA 2019 layout) into
   ``--data-dir``, or reuses it when ``generated.json`` there records the same generator
   version, studies, seed and size.
2. Indexes it with `hohoho_core.rsna.build_index` (checking the index's labels against
   the generator's truth), loads every study with `hohoho_core.dicom.load_study` and runs
   `hohoho_core.predict.Predictor` (the public pipeline, fp32) on it.
3. Aligns the predictions to the truth by image id and scores CNN alone and CNN + LSTM
   with `hohoho_core.metrics`, at the thresholds shipped in the weights' config (CNN:
   ``cnn_thresholds``; CNN + LSTM: ``thresholds``), never tuned on this set.

Writes ``<out>.json`` and ``<out>.md`` (default ``bench/generalization.*``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
# Run as a script, Python puts bench/ first on the path; the package imports need the root.
if sys.path and Path(sys.path[0]).resolve() == REPO / "bench":
    sys.path[0] = str(REPO)
elif str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.foreign_phantom import (  # noqa: E402
    AREA_THRESHOLD_MM2,
    GENERATOR_VERSION,
    read_truth,
    write_foreign_dataset,
)
from hohoho_core.labels import CLASSES, SUBTYPES  # noqa: E402

#: Below this many studies the report says it is a smoke run.
FULL_STUDIES = 60
MARKER = "generated.json"
STAGES = (("cnn", "CNN"), ("cnn_lstm", "CNN+LSTM"))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="the shipped model on foreign phantom head CT")
    p.add_argument("--weights", type=Path, default=REPO / "weights")
    p.add_argument("--studies", type=int, default=FULL_STUDIES)
    p.add_argument("--seed", type=int, default=7001)
    p.add_argument("--size", type=int, default=512, help="generated image size (px)")
    p.add_argument("--data-dir", type=Path, default=REPO / "data" / "foreign")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "generalization",
                   help="writes OUT.json and OUT.md")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--batch-size", type=int, default=16)
    return p


# --------------------------------------------------------------------------- data


def ensure_dataset(data_dir: Path, studies: int, seed: int, size: int) -> dict[str, Any]:
    """Write the foreign set unless ``generated.json`` says this exact one is there.

    A folder holding slices without our marker is refused (never overwritten); one with
    a marker for another foreign set is regenerated in place.
    """
    spec = {"generator": "bench.foreign_phantom", "version": GENERATOR_VERSION,
            "studies": studies, "seed": seed, "size": size}
    marker = data_dir / MARKER
    old = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None
    if old is not None and {k: old.get(k) for k in spec} == spec \
            and (data_dir / "foreign_truth.csv").is_file():
        return {**spec, "reused": True, "seconds": old.get("seconds")}
    has_slices = any((data_dir / "stage_2_train").glob("*.dcm")) \
        if (data_dir / "stage_2_train").is_dir() else False
    if has_slices and (old is None or old.get("generator") != spec["generator"]):
        raise SystemExit(f"{data_dir} holds another dataset: remove it or pick --data-dir")
    marker.unlink(missing_ok=True)
    t = time.perf_counter()
    write_foreign_dataset(data_dir, studies, seed, size, overwrite=True)
    took = time.perf_counter() - t
    marker.write_text(json.dumps({**spec, "seconds": took}), encoding="utf-8")
    return {**spec, "reused": False, "seconds": took}


def index_studies(data_dir: Path, truth: pd.DataFrame) -> dict[str, list[Path]]:
    """Study uid -> slice files in z order, via `build_index`; its labels must match."""
    from hohoho_core.rsna import build_index

    index = build_index(data_dir, workers=1, progress=False, use_cache=False)
    table = index.table
    if index.unreadable or index.missing_files or index.missing_labels:
        raise RuntimeError(f"index problems: {len(index.unreadable)} unreadable, "
                           f"{len(index.missing_files)} missing files, "
                           f"{len(index.missing_labels)} unlabelled")
    merged = table.merge(truth, on="image_id", how="outer", suffixes=("", "_truth"),
                         indicator=True)
    if (merged["_merge"] != "both").any():
        raise RuntimeError("the index and the generator's truth list different images")
    for col in (*CLASSES, "slice_index", "study_uid"):
        if not (merged[col] == merged[f"{col}_truth"]).all():
            raise RuntimeError(f"the index disagrees with the generator's truth on {col}")
    return {
        uid: [data_dir / p for p in grp.sort_values("slice_index")["path"]]
        for uid, grp in table.groupby("study_uid", sort=True)
    }


# --------------------------------------------------------------------------- scoring


def _stage_metrics(y: np.ndarray, prob: np.ndarray, thr: np.ndarray,
                   study_ids: np.ndarray) -> dict[str, Any]:
    from hohoho_core.metrics import f2_report, roc_auc_per_class, rsna_log_loss, study_level

    rep = f2_report(y, prob, thr, study_ids=study_ids)
    auc = roc_auc_per_class(y, prob)
    _, ys = study_level(y.astype(bool), study_ids)
    _, ps = study_level(prob, study_ids)
    sauc = roc_auc_per_class(ys, ps)

    def named(a: np.ndarray) -> dict[str, float | None]:
        return {c: (None if math.isnan(v) else float(v)) for c, v in zip(CLASSES, a, strict=True)}

    def macro(a: np.ndarray) -> float | None:
        ok = a[~np.isnan(a)]
        return float(ok.mean()) if ok.size else None

    rep["auc"] = named(auc)
    rep["auc_macro"] = macro(auc)
    rep["study_auc"] = named(sauc)
    rep["study_auc_macro"] = macro(sauc)
    rep["log_loss"] = rsna_log_loss(y, prob)
    return rep


def score(preds: pd.DataFrame, truth: pd.DataFrame, thresholds: dict[str, np.ndarray]
          ) -> dict[str, Any]:
    """Metrics per stage; ``preds`` has image_id and ``<stage>_<class>`` columns."""
    joined = truth.merge(preds, on="image_id", how="left", validate="one_to_one")
    lost = joined[f"cnn_{CLASSES[0]}"].isna()
    if lost.any():
        raise RuntimeError(f"{int(lost.sum())} labelled slices got no prediction")
    y = joined[list(CLASSES)].to_numpy().astype(np.int64)
    ids = joined["study_uid"].to_numpy()
    out: dict[str, Any] = {}
    for stage, _ in STAGES:
        if stage not in thresholds:
            continue
        prob = joined[[f"{stage}_{c}" for c in CLASSES]].to_numpy(dtype=np.float64)
        out[stage] = _stage_metrics(y, prob, thresholds[stage], ids)
    return out


# --------------------------------------------------------------------------- report


def _shown(path: Path) -> str:
    """A path relative to the repository when inside it (reports stay machine-neutral)."""
    try:
        return Path(path).resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def render_markdown(res: dict[str, Any]) -> str:
    data, m, stages = res["data"], res["metrics"], [s for s in STAGES if s[0] in res["metrics"]]
    lines = ["# Generalisation: the shipped model on a foreign phantom generator", ""]
    if data["studies"] < FULL_STUDIES:
        lines += [f"**Smoke run ({data['studies']} studies): too few for the numbers to mean "
                  f"anything; the full check is `--studies {FULL_STUDIES}`.**", ""]
    lines += [
        f"**Synthetic data only. Not for clinical use.** The model (`{res['model']['weights']}`) "
        "was trained only on `hohoho_core.synthetic`; these studies come from "
        "`bench/foreign_phantom.py`, "
        "an independent generator written separately (different anatomy construction, "
        "bleed shapes, noise, DICOM conventions), never used in training or threshold "
        "selection. The thresholds are the ones shipped in the weights' config.",
        "",
        "## Data",
        "",
        f"- Generator: `bench/foreign_phantom.py` version {data['version']}, seed "
        f"{data['seed']}, {data['studies']} studies, {data['slices']} slices "
        f"({data['slices_min']}-{data['slices_max']} per study, 5 mm), {data['size']} px, "
        f"pixel spacing {data['spacing_min']:.3f}-{data['spacing_max']:.3f} mm, noise "
        f"{data['noise_min']:.1f}-{data['noise_max']:.1f} HU; "
        f"{'reused from' if data['reused'] else 'written to'} `{data['dir']}`.",
        f"- A slice is positive for a subtype when it covers at least "
        f"{AREA_THRESHOLD_MM2:g} mm^2 there. Positive studies: {data['positive_studies']} of "
        f"{data['studies']}.",
        "",
        "| class | positive slices | positive studies |",
        "| --- | --- | --- |",
    ]
    for c in CLASSES:
        lines.append(f"| {c} | {data['positive_slices'][c]} | {data['positive_study_counts'][c]} |")
    lines += ["", "## Results", "",
              f"Measured once, fp32, {res['model']['weights']} "
              f"({res['model']['description']}).", ""]
    head = ["class"]
    for key in ("threshold", "slice F2", "study F2", "slice AUC", "study AUC"):
        head += [f"{key} {label}" for _, label in stages]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for c in CLASSES:
        row = [c]
        row += [_f(m[s]["thresholds"][c]) for s, _ in stages]
        row += [_f(m[s]["slice"]["per_class"][c]) for s, _ in stages]
        row += [_f(m[s]["study"]["per_class"][c]) for s, _ in stages]
        row += [_f(m[s]["auc"][c]) for s, _ in stages]
        row += [_f(m[s]["study_auc"][c]) for s, _ in stages]
        lines.append("| " + " | ".join(row) + " |")
    row = ["**macro**"] + [""] * len(stages)
    row += [f"**{_f(m[s]['slice']['macro'])}**" for s, _ in stages]
    row += [_f(m[s]["study"]["macro"]) for s, _ in stages]
    row += [_f(m[s]["auc_macro"]) for s, _ in stages]
    row += [_f(m[s]["study_auc_macro"]) for s, _ in stages]
    lines.append("| " + " | ".join(row) + " |")
    lines += ["", "RSNA weighted log loss: " + ", ".join(
        f"{label} {m[s]['log_loss']:.4f}" for s, label in stages) + ".", ""]
    lines += ["AUC is n/a where a class has no positives (or no negatives) in this set; F2 "
              "follows scikit-learn's zero_division=0 (a class with no positive slice and "
              "none predicted scores 0).", ""]
    ref = res.get("reference")
    if ref:
        lines += ["## Against the model's own generator", "",
                  "The same weights on the held-out synthetic test split of "
                  "`hohoho_core.synthetic` (from `weights/config.json` metrics.test):", "",
                  "| | macro slice F2 | macro study F2 | macro slice AUC |",
                  "| --- | --- | --- | --- |"]
        for s, label in stages:
            if s not in ref or s not in m:
                continue
            lines.append(
                f"| {label}, own generator (test split) | {_f(ref[s]['slice_macro'])} | "
                f"{_f(ref[s]['study_macro'])} | {_f(ref[s]['auc_macro'])} |")
            lines.append(
                f"| {label}, foreign generator | {_f(m[s]['slice']['macro'])} | "
                f"{_f(m[s]['study']['macro'])} | {_f(m[s]['auc_macro'])} |")
        lines.append("")
    t = res["timing_s"]
    if data["reused"]:
        took = data.get("seconds")
        gen = "reused" + (f" (written earlier in {took:.1f} s)" if took is not None else "")
    else:
        gen = f"{t['generate']:.1f} s"
    lines += [
        "## How it was made", "",
        f"- Command: `{res['command']}`",
        f"- Machine: {res['machine']}",
        f"- Wall time: generate {gen}, index {t['index']:.1f} s, load + predict "
        f"{t['predict']:.1f} s ({t['predict'] / max(data['slices'], 1) * 1000:.0f} ms per "
        f"slice), total {t['total']:.1f} s.",
        f"- Created {res['created']}.",
        "",
        "Synthetic data only. Not for clinical use.",
        "",
    ]
    return "\n".join(lines)


def _reference(config: Any) -> dict[str, Any] | None:
    test = (getattr(config, "metrics", None) or {}).get("test")
    if not isinstance(test, dict):
        return None
    out = {}
    for s, _ in STAGES:
        r = test.get(s)
        if isinstance(r, dict):
            out[s] = {"slice_macro": r.get("slice", {}).get("macro"),
                      "study_macro": (r.get("study") or {}).get("macro"),
                      "auc_macro": r.get("auc_macro")}
    return out or None


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.studies < 1:
        raise SystemExit("--studies must be >= 1")
    from bench.common import machine_info, machine_line
    from hohoho_core.dicom import load_study
    from hohoho_core.predict import Predictor

    start = time.perf_counter()
    data_dir = Path(args.data_dir)
    gen = ensure_dataset(data_dir, args.studies, args.seed, args.size)
    truth = read_truth(data_dir)

    t = time.perf_counter()
    studies = index_studies(data_dir, truth)
    t_index = time.perf_counter() - t

    predictor = Predictor.from_folder(args.weights, batch_size=args.batch_size,
                                      threads=args.threads)
    cfg = predictor.config
    thresholds = {"cnn_lstm": np.asarray(cfg.thresholds, dtype=np.float64)}
    if predictor.lstm is None:
        thresholds = {"cnn": thresholds["cnn_lstm"]}
    else:
        cnn_thr = cfg.cnn_thresholds if cfg.cnn_thresholds is not None else cfg.thresholds
        thresholds["cnn"] = np.asarray(cnn_thr, dtype=np.float64)

    t = time.perf_counter()
    rows = []
    for uid, paths in studies.items():
        study = load_study(paths, workers=1)
        if study.report.skipped:
            raise RuntimeError(f"study {uid}: {len(study.report.skipped)} slices skipped")
        pred = predictor.predict(study)
        for i, image_id in enumerate(pred.image_ids):
            row: dict[str, Any] = {"image_id": image_id, "pred_study_uid": pred.study_uid}
            row.update({f"cnn_{c}": float(pred.cnn_prob[i, j]) for j, c in enumerate(CLASSES)})
            if pred.lstm_prob is not None:
                row.update({f"cnn_lstm_{c}": float(pred.lstm_prob[i, j])
                            for j, c in enumerate(CLASSES)})
            rows.append(row)
    t_predict = time.perf_counter() - t
    preds = pd.DataFrame(rows)
    metrics = score(preds, truth, thresholds)

    per_study = truth.groupby("study_uid")[list(CLASSES)].max()
    info = pd.read_csv(data_dir / "foreign_studies.csv")
    n_per = truth.groupby("study_uid").size()
    total = time.perf_counter() - start
    machine = machine_info()
    description = (cfg.data or {}).get("description") or "trained on hohoho_core.synthetic"
    res: dict[str, Any] = {
        "data": {
            **gen,
            "dir": _shown(data_dir),
            "slices": len(truth),
            "slices_min": int(n_per.min()),
            "slices_max": int(n_per.max()),
            "spacing_min": float(info["pixel_spacing_mm"].min()),
            "spacing_max": float(info["pixel_spacing_mm"].max()),
            "noise_min": float(info["noise_hu"].min()),
            "noise_max": float(info["noise_hu"].max()),
            "positive_slices": {c: int(truth[c].sum()) for c in CLASSES},
            "positive_study_counts": {c: int(per_study[c].sum()) for c in CLASSES},
            "positive_studies": int(per_study["any"].sum()),
            "subtypes_per_study": info["positive"].fillna("").tolist(),
            "area_threshold_mm2": AREA_THRESHOLD_MM2,
        },
        "model": {"weights": _shown(args.weights), "description": str(description),
                  "preprocess": cfg.preprocess, "lstm": predictor.lstm is not None},
        "metrics": metrics,
        "reference": _reference(cfg),
        "timing_s": {"generate": None if gen["reused"] else gen["seconds"],
                     "index": t_index, "predict": t_predict, "total": total},
        "machine": machine_line(machine),
        "machine_info": machine,
        "command": "python bench/generalization.py " + shlex.join(
            list(argv) if argv is not None else sys.argv[1:]),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "subtypes": list(SUBTYPES),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(res), encoding="utf-8")
    summary = ", ".join(f"{label} macro slice F2 {metrics[s]['slice']['macro']:.3f}"
                        for s, label in STAGES if s in metrics)
    print(f"{len(studies)} studies, {len(truth)} slices: {summary}; wrote {md_path} and "
          f"{json_path.name} in {total:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
