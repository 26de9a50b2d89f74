"""One markdown table from several ``make_demo_weights`` runs (issue 13's equal-budget ablation).

    python -m train.ablation_table runs/abl/s128 runs/abl/w128 runs/abl/n128 \
        --extra-test rand=data/demo_train/test --out runs/abl/table.md

Each run folder holds the ``demo_result.json`` that ``make_demo_weights`` writes. Every row
reports the validation macro slice F2 (the only number a choice between rows may use), the
own test splits and the foreign generator's studies, CNN and CNN + LSTM, with the run's own
thresholds, and for the foreign studies also with thresholds picked on them (an oracle that
tells ranking from threshold transfer), AUC and ECE. ``--extra-test NAME=ROOT`` scores a
run's weights on a labelled RSNA-layout folder its run did not score (for example a run
trained on plain phantoms on the randomised test split), the way users run them.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from train import common
from train.make_demo_weights import check_folder

log = logging.getLogger("hohoho.train")

MODELS = ("cnn", "cnn_lstm")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Markdown table of make_demo_weights runs",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="work dirs with demo_result.json")
    p.add_argument("--extra-test", action="append", default=[], metavar="NAME=ROOT",
                   help="score each run's weights on this labelled folder too (cached)")
    p.add_argument("--out", type=Path, default=None, help="write the table here (else stdout)")
    return p


def _macro(rep: dict[str, Any] | None, model: str, tuned: bool = False) -> float | None:
    if rep is None:
        return None
    r = rep[model]["tuned"] if tuned else rep[model]
    return r["slice"]["macro"]


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def describe(info: dict[str, Any]) -> str:
    """Short label of a run: input mode, size, randomisation, stage-1 images seen."""
    share = info.get("randomise_fraction", 1.0)
    rand = (("randomised" if share >= 1 else f"{share:.0%} randomised")
            if info.get("randomise", True) else "plain")
    return f"{info['mode']}, {info['size']} px, {rand}"


def extra_scores(run: Path, info: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    """``{name: report}`` for each ``NAME=ROOT``, cached in ``<run>/extra_<name>.json``."""
    out: dict[str, Any] = {}
    for spec in extra:
        name, _, root = spec.partition("=")
        if not root:
            raise SystemExit(f"--extra-test needs NAME=ROOT, got {spec!r}")
        cached = run / f"extra_{name}.json"
        sets = info.get("data") or {}
        own = sets.get("sets", sets).get("test", {}).get("root")
        if own and Path(own).resolve() == Path(root).resolve():
            out[name] = info["shipped_test"]  # the run already scored this folder
            continue
        if cached.is_file():
            out[name] = json.loads(cached.read_text(encoding="utf-8"))
            continue
        weights = Path(info.get("out") or run / "weights")
        log.info("%s: scoring %s on %s", run.name, weights, root)
        rep = check_folder(weights, Path(root), run / "cache" / "index" / f"extra_{name}")
        common.write_json(cached, rep)
        out[name] = rep
    return out


def table(runs: list[Path], extra: list[str]) -> str:
    head = ["run", "input", "val F2 CNN", "val F2 CNN+LSTM"]
    sets = ["own test", "own plain test", *(s.partition("=")[0] for s in extra)]
    for s in sets:
        head += [f"{s} CNN", f"{s} CNN+LSTM"]
    head += ["foreign CNN", "foreign CNN+LSTM", "foreign CNN+LSTM (thr. picked there)",
             "foreign AUC CNN+LSTM", "foreign ECE CNN", "stage 1 min"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for run in runs:
        info = json.loads((run / "demo_result.json").read_text(encoding="utf-8"))
        reps = {"own test": info["shipped_test"], "own plain test": info.get("plain_test"),
                **extra_scores(run, info, extra)}
        val = info["metrics"]["val"]
        row = [run.name, describe(info), _f(_macro(val, "cnn")), _f(_macro(val, "cnn_lstm"))]
        for s in sets:
            row += [_f(_macro(reps.get(s), m)) for m in MODELS]
        foreign = (info.get("foreign") or {}).get("metrics")
        row += [_f(_macro(foreign, "cnn")), _f(_macro(foreign, "cnn_lstm")),
                _f(_macro(foreign, "cnn_lstm", tuned=True)),
                _f(foreign["cnn_lstm"]["auc_macro"] if foreign else None),
                _f(foreign["cnn"]["ece_macro"] if foreign else None),
                f"{info['times']['stage 1 CNN'] / 60:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> str:
    common.setup_logging(True)
    text = table(list(args.runs), list(args.extra_test))
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    main(get_args_parser().parse_args())
