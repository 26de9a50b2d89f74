"""How well each piece of run-boundary evidence separates injected boundary errors from
true run edges, per generator (issue 14: why boundary errors are missed on the foreign one).

For every boundary candidate of a noise draw (`audit_boundary.boundary_candidates`: the
edge slice of a run, "shorter", or the slice just outside it, "longer") the candidate is an
error when its cell was flipped by the injected noise (a run extended by one slice makes a
"shorter" candidate an error; a run end dropped makes a "longer" one an error). The AUC of
each evidence term between error and true candidates says how far that term can rank the
errors first: 0.5 is blind, 1.0 perfect. A term that is missing on a candidate counts as
0 (no evidence either way), as in the ranker.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hohoho_core.audit_boundary import ALL_TERMS
from hohoho_core.labels import CLASSES

#: Terms reported besides the evidence terms: the model's own disagreement on the cell.
EXTRA = ("z_model", "z_cnn", "boundary_score")


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN without both classes."""
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = pd.Series(s).rank(method="average").to_numpy()
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def candidate_frame(sset: Any, rate: float, seed: int, draws: int) -> pd.DataFrame:
    """Boundary candidates of ``draws`` noise draws with ``is_error`` and the terms."""
    from bench.audit_scoring import audit_draw

    parts = []
    for d in range(draws):
        cells, err_cells, _ = audit_draw(sset, rate, seed, d)
        cand = cells[cells["candidate"] != ""].copy()
        is_err = np.zeros(len(cells), dtype=bool)
        is_err[err_cells] = True
        cand["is_error"] = is_err[cand.index.to_numpy()]
        # Sub-type cells only: an "any" candidate repeats its subtype's evidence.
        cand = cand[cand["class"] != CLASSES[-1]]
        p = np.clip(cand["model_score"].to_numpy(), 1e-4, 1 - 1e-4)
        q = np.clip(cand["cnn_score"].to_numpy(), 1e-4, 1 - 1e-4)
        cand["z_model"] = np.log(p / (1 - p))
        cand["z_cnn"] = np.log(q / (1 - q))
        parts.append(cand)
    return pd.concat(parts, ignore_index=True)


def evidence_table(frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """AUC of each term per (set, candidate kind), with the candidate and error counts."""
    out: dict[str, Any] = {}
    for name, fr in frames.items():
        for kind in ("run_shorter", "run_longer"):
            sub = fr[fr["candidate"] == kind]
            y = sub["is_error"].to_numpy()
            row = {"candidates": len(sub), "errors": int(y.sum())}
            for t in (*EXTRA, *ALL_TERMS):
                v = np.nan_to_num(sub[t].to_numpy(dtype=np.float64), nan=0.0)
                row[t] = auc(v, y)
                row[f"{t}_present"] = float(np.isfinite(sub[t].to_numpy(dtype=float)).mean())
            out[f"{name}/{kind}"] = row
    return out


def render_evidence(table: dict[str, Any]) -> str:
    """Markdown: one row per term, one column per (set, kind)."""
    cols = list(table)
    head = "| term | " + " | ".join(c.replace("/run_", " ") for c in cols) + " |"
    lines = [head, "| --- | " + " | ".join("---:" for _ in cols) + " |",
             "| candidates (errors) | " + " | ".join(
                 f"{table[c]['candidates']} ({table[c]['errors']})" for c in cols) + " |"]
    for t in (*EXTRA, *ALL_TERMS):
        cells = []
        for c in cols:
            v, pres = table[c][t], table[c][f"{t}_present"]
            cells.append("n/a" if v != v else f"{v:.2f}" + ("" if pres > 0.95 else
                                                             f" ({pres:.0%})"))
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
