"""A learned ranker over every audit signal: logistic regression, saved as JSON.

The audit's signals (model and CNN disagreement, cleanlab, the sequence rules, the run
boundary evidence) each see some kinds of label error; `AuditRanker` weighs them by
fitting which cells were wrong on studies with injected label errors. It is a logistic
regression on standardised features (scikit-learn's ``LogisticRegression``), so the whole
model is a few numbers: it is stored as JSON, never pickled, and read back without
scikit-learn.

Precondition, as for every audit signal: the probabilities must be out of sample (the
model never trained on the slices it judges). The ranker learns how much to trust each
signal on the data it was fitted on; a ranker fitted on one generator's studies and
scored on another's is an out-of-distribution estimate (``bench/audit_scoring.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hohoho_core.atomic import atomic_write_text
from hohoho_core.audit_boundary import EVIDENCE_TERMS, RELATIVE_TERMS
from hohoho_core.labels import ANY_INDEX

__all__ = ["FEATURES", "AuditRanker", "cell_features", "edge_candidates", "fit_ranker",
           "interleave_edges", "model_agreement"]

#: Feature names, in column order of `cell_features`.
FEATURES: tuple[str, ...] = (
    "z_model",  # logit of |label - prob| (final, sequence model)
    "z_cnn",  # logit of |label - cnn_prob|
    "z_cleanlab",  # logit of 1 - cleanlab's class-adjusted self-confidence
    "z_hand",  # logit of the hand-weighted combined score (AuditWeights), a strong prior
    "cleanlab_issue",
    "rule_isolated_positive",
    "rule_gap_in_run",
    "rule_any_inconsistent",
    "is_shorter",
    "is_longer",
    *EVIDENCE_TERMS,
    *RELATIVE_TERMS,
    "boundary_score",
    "log_run_length",
    "label",
    "is_any",
    "model_agreement",  # how far the model agrees with the labels on the whole table
    # Products, so a linear model can trust a signal more in one context than another.
    "rule_x_z_model",
    "rule_x_z_cnn",
    "candidate_x_z_model",
    "candidate_x_z_cnn",
    "shorter_x_d_blood",
    "longer_x_d_blood",
    "shorter_x_d_focal",
    "longer_x_d_focal",
    "shorter_x_d_emb",
    "longer_x_d_emb",
    "shorter_x_z_model",
    "longer_x_z_model",
    "agreement_x_z_model",
    "agreement_x_z_cnn",
    "agreement_x_z_cleanlab",
    "shorter_x_r_focal_lo",
    "longer_x_r_focal_lo",
    "shorter_x_r_frac",
    "longer_x_r_frac",
    "shorter_x_r_emb",
    "longer_x_r_emb",
)
# Finer than AuditWeights' clip: many cells sit at 0.99 or beyond, and their order matters.
_CLIP = 1e-4
FORMAT = "hohoho-audit-ranker"
VERSION = 2


def _logit(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, dtype=np.float64), _CLIP, 1.0 - _CLIP)
    return np.log(x / (1.0 - x))


def model_agreement(cells: pd.DataFrame) -> float:
    """How far the model's probabilities agree with the labels over the audited table.

    ``2 * AUC - 1`` of ``prob`` against ``label`` (per class, averaged over the classes with
    both labels present), clipped to [0, 1]: 1 when the model separates the labels, 0 when it
    is blind to them (or no class has both labels). Most labels are right, so a model that
    disagrees with most of them is lost on these images (issue 14: the shipped model on
    another generator's studies), and its disagreements are then weak evidence.
    """
    lab = cells["label"].to_numpy()
    prob = cells["prob"].to_numpy(dtype=np.float64)
    cls = cells["class_index"].to_numpy()
    values = []
    for k in np.unique(cls):
        sel = cls == k
        y = lab[sel] == 1
        n1, n0 = int(y.sum()), int((~y).sum())
        if n1 == 0 or n0 == 0:
            continue
        ranks = pd.Series(prob[sel]).rank(method="average").to_numpy()
        values.append((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    if not values:
        return 0.0
    return float(np.clip(2.0 * np.mean(values) - 1.0, 0.0, 1.0))


def cell_features(cells: pd.DataFrame) -> np.ndarray:
    """Feature matrix ``(M, len(FEATURES))`` of `audit.audit_cells` rows.

    Evidence terms missing on a cell (off a run edge, or evidence not given) are 0, the
    value that says "no evidence either way"; the candidate indicators tell the ranker
    where they are defined.
    """
    candidate = cells["candidate"].to_numpy()
    is_candidate = candidate != ""
    shorter, longer = candidate == "run_shorter", candidate == "run_longer"
    cols = {
        "z_model": _logit(cells["model_score"].to_numpy()),
        "z_cnn": _logit(cells["cnn_score"].to_numpy()),
        "z_cleanlab": _logit(1.0 - cells["cleanlab_quality"].to_numpy()),
        "z_hand": _logit(cells["combined_score"].to_numpy()),
        "cleanlab_issue": cells["cleanlab_issue"].to_numpy().astype(np.float64),
        "rule_isolated_positive": cells["rule_isolated_positive"].to_numpy(),
        "rule_gap_in_run": cells["rule_gap_in_run"].to_numpy(),
        "rule_any_inconsistent": cells["rule_any_inconsistent"].to_numpy(),
        "is_shorter": shorter.astype(np.float64),
        "is_longer": longer.astype(np.float64),
        **{t: np.nan_to_num(cells[t].to_numpy(dtype=np.float64), nan=0.0)
           for t in (*EVIDENCE_TERMS, *RELATIVE_TERMS)},
        "boundary_score": np.where(is_candidate, cells["boundary_score"].to_numpy() - 0.5, 0.0),
        "log_run_length": np.log1p(cells["run_length"].to_numpy(dtype=np.float64)),
        "label": cells["label"].to_numpy(dtype=np.float64),
        "is_any": (cells["class_index"].to_numpy() == ANY_INDEX).astype(np.float64),
        "model_agreement": np.full(len(cells), model_agreement(cells)),
    }
    rule = np.maximum.reduce([cols["rule_isolated_positive"], cols["rule_gap_in_run"],
                              cols["rule_any_inconsistent"]])
    cand = cols["is_shorter"] + cols["is_longer"]
    for a, b in (("rule", "z_model"), ("rule", "z_cnn"), ("candidate", "z_model"),
                 ("candidate", "z_cnn"), ("shorter", "d_blood"), ("longer", "d_blood"),
                 ("shorter", "d_focal"), ("longer", "d_focal"), ("shorter", "d_emb"),
                 ("longer", "d_emb"), ("shorter", "z_model"), ("longer", "z_model"),
                 ("agreement", "z_model"), ("agreement", "z_cnn"), ("agreement", "z_cleanlab"),
                 ("shorter", "r_focal_lo"), ("longer", "r_focal_lo"), ("shorter", "r_frac"),
                 ("longer", "r_frac"), ("shorter", "r_emb"), ("longer", "r_emb")):
        left = {"rule": rule, "candidate": cand, "shorter": cols["is_shorter"],
                "longer": cols["is_longer"], "agreement": cols["model_agreement"]}[a]
        cols[f"{a}_x_{b}"] = left * cols[b]
    return np.column_stack([np.asarray(cols[f], dtype=np.float64) for f in FEATURES])


@dataclass(frozen=True)
class AuditRanker:
    """Logistic regression on standardised `FEATURES`: ``sigmoid(w . (x - mean) / scale + b)``.

    Attributes:
        features: feature names (must equal `FEATURES` of this code version).
        mean, scale: ``(F,)`` standardisation fitted on the training cells.
        coef: ``(F,)`` weights; intercept: the bias.
        meta: how it was fitted (data, seeds, C), saved with it.
    """

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if tuple(self.features) != FEATURES:
            raise ValueError("ranker features do not match this version's FEATURES")
        for name in ("mean", "scale", "coef"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != (len(FEATURES),) or not np.isfinite(arr).all():
                raise ValueError(f"ranker {name} must be {len(FEATURES)} finite numbers")
            object.__setattr__(self, name, arr)
        if not np.isfinite(self.intercept) or (self.scale <= 0).any():
            raise ValueError("ranker intercept must be finite and scales positive")

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Log-odds ``(M,)`` of a feature matrix ``(M, F)``."""
        return ((np.asarray(x) - self.mean) / self.scale) @ self.coef + self.intercept

    def score(self, cells: pd.DataFrame) -> np.ndarray:
        """Probability-like score in (0, 1) that each cell's label is wrong, ``(M,)``."""
        return 1.0 / (1.0 + np.exp(-self.decision(cell_features(cells))))

    def weights_table(self) -> pd.DataFrame:
        """Feature, standardised weight: what the ranker leans on (for reports)."""
        return pd.DataFrame({"feature": self.features, "weight": self.coef}).sort_values(
            "weight", key=np.abs, ascending=False, ignore_index=True)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "features": list(self.features),
                "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": float(self.intercept),
                "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuditRanker:
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} version {VERSION} file")
        return cls(features=tuple(d["features"]), mean=np.asarray(d["mean"]),
                   scale=np.asarray(d["scale"]), coef=np.asarray(d["coef"]),
                   intercept=float(d["intercept"]), meta=dict(d.get("meta", {})))

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically; returns the path."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> AuditRanker:
        """Read a ranker written by `save` (raises ValueError on a foreign or broken file)."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{Path(path).name} is not valid JSON: {exc}") from None
        return cls.from_dict(d)


def fit_ranker(
    cells: pd.DataFrame | np.ndarray,
    is_error: np.ndarray,
    *,
    c: float = 1.0,
    boundary_weight: float = 1.0,
    meta: Mapping[str, Any] | None = None,
) -> AuditRanker:
    """Fit an `AuditRanker` on cells whose errors are known (injected label noise).

    Args:
        cells: `audit.audit_cells` rows (several noise draws may be concatenated) or their
            `cell_features` matrix.
        is_error: ``(M,)`` bool, True where the cell's label was made wrong.
        c: inverse L2 regularisation strength of the logistic regression.
        boundary_weight: weight of an error on a run-edge candidate (``is_shorter`` or
            ``is_longer``) relative to any other error: boundary errors are a small share
            of the injected ones, and without it the fit mostly learns the rule-visible kinds.
        meta: saved with the ranker (data, seeds).

    Errors are rare (a few per thousand cells), so classes are weighted to balance
    (``class_weight="balanced"``); the score ranks, it is not a calibrated probability.
    """
    from sklearn.linear_model import LogisticRegression  # lazy: only fitting needs it

    x = cell_features(cells) if isinstance(cells, pd.DataFrame) else np.asarray(cells, float)
    y = np.asarray(is_error, dtype=bool)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} cells but {y.shape[0]} error flags")
    if y.all() or not y.any():
        raise ValueError("fitting needs both wrong and right cells")
    if not boundary_weight > 0:
        raise ValueError(f"boundary_weight must be > 0, got {boundary_weight}")
    weight = np.where(y & edge_candidates(x), float(boundary_weight), 1.0)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    lr.fit((x - mean) / scale, y, sample_weight=weight)
    return AuditRanker(features=FEATURES, mean=mean, scale=scale, coef=lr.coef_[0].copy(),
                       intercept=float(lr.intercept_[0]),
                       meta={"c": c, "cells": int(len(y)), "errors": int(y.sum()),
                             "boundary_weight": float(boundary_weight), **dict(meta or {})})


def edge_candidates(x: np.ndarray) -> np.ndarray:
    """``(M,)`` bool: cells that are run-edge candidates (``is_shorter`` or ``is_longer``),
    from a `cell_features` matrix."""
    x = np.asarray(x, dtype=np.float64)
    return (x[:, FEATURES.index("is_shorter")] + x[:, FEATURES.index("is_longer")]) > 0


def interleave_edges(order: np.ndarray, edge_order: np.ndarray, every: int) -> np.ndarray:
    """A review queue with every ``every``-th place kept for a run edge.

    ``order``: every cell position, best first (the main ranking). ``edge_order``: the
    run-edge candidates' positions, best first (an edge ranking). Places ``every - 1``,
    ``2 * every - 1``, ... take the best edge candidate not yet listed; the others the next
    cell of ``order`` not yet listed. Each cell appears once; when the candidates run out the
    main order fills the rest.
    """
    if every < 2:
        raise ValueError(f"every must be >= 2, got {every}")
    order = np.asarray(order, dtype=np.int64)
    edge_order = np.asarray(edge_order, dtype=np.int64)
    listed = np.zeros(len(order), dtype=bool)
    out = np.empty(len(order), dtype=np.int64)
    i = j = 0
    for place in range(len(order)):
        if (place + 1) % every == 0:
            while j < len(edge_order) and listed[edge_order[j]]:
                j += 1
            if j < len(edge_order):
                out[place] = edge_order[j]
                listed[edge_order[j]] = True
                continue
        while listed[order[i]]:
            i += 1
        out[place] = order[i]
        listed[order[i]] = True
    return out
