"""Label audit: rank slice labels by how likely they are wrong, each with its reason.

Three kinds of evidence, then one combined ranking:

* the model: out-of-fold probabilities (a model that never trained on the slice it
  judges) scored with cleanlab's ``multilabel_classification`` (confident learning,
  Northcutt et al., JAIR 2021), plus the per-class disagreement ``|label - prob|`` so a
  flag names its class;
* sequence rules along the sorted series (the poster's Fig. 7 "strange patterns"): an
  isolated positive among negatives, a one-slice gap inside a positive run, and an
  "any" label that contradicts the subtypes;
* run boundaries (`audit_boundary`): at each run edge, whether the run should end one
  slice earlier or later, from the CNN and LSTM probabilities, embeddings and the blood
  seen in the image on both sides (optional ``SliceEvidence``).

The ranking is the learned `audit_ranker.AuditRanker` over every signal (by default the
one shipped in ``weights/audit_ranker.json``, fitted on injected label errors), with the
fixed `AuditWeights` sum kept as one of its features and as the fallback; either way a
subtype cell and its "any" cell rank together (`audit_any.carry_any`). Everything here is NumPy/pandas in, pandas out. Arrays of labels and probabilities are
``(N, 6)`` with columns ``labels.CLASSES``.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from hohoho_core.audit_any import carry_any
from hohoho_core.audit_boundary import SliceEvidence, cell_candidates
from hohoho_core.labels import ANY_INDEX, CLASSES
from hohoho_core.rsna_csv import Source, read_rsna_csv

if TYPE_CHECKING:
    from hohoho_core.audit_ranker import AuditRanker

__all__ = [
    "RULES",
    "SIGNALS",
    "AuditWeights",
    "SliceEvidence",
    "audit_cells",
    "audit_from_files",
    "carry_any",
    "model_flags",
    "rank_flags",
    "read_probs_csv",
    "sequence_flags",
    "shipped_ranker",
]

#: File name of the learned ranker in a weights folder.
RANKER_FILE = "audit_ranker.json"

#: Sequence rules, in the order reasons are listed.
RULES: tuple[str, ...] = ("isolated_positive", "gap_in_run", "any_inconsistent")
#: Values of ``rank_flags(signal_only=...)``; None ranks by the combined score.
SIGNALS: tuple[str, ...] = ("model", "sequence", "cleanlab", "cnn", "boundary")
Signal = Literal["model", "sequence", "cleanlab", "cnn", "boundary"]

# Rule scores. A pattern with both neighbours present is clear evidence (1.0). On the
# first or last slice only one neighbour exists, and a bleed can genuinely be cut off by
# the scan range, so the same pattern counts half. When "any" is 0 but a subtype is 1 the
# rule cannot tell which of the two is wrong: "any" gets the full score (the issue's
# convention) and each positive subtype half, and the model decides between them.
SCORE_CLEAR = 1.0
SCORE_EDGE = 0.5
SCORE_SUBTYPE_VS_ANY = 0.5

_N_CLASSES = len(CLASSES)
_CLASS_INDEX = {name: k for k, name in enumerate(CLASSES)}


@dataclass(frozen=True)
class AuditWeights:
    """Weights of the combined score, added on the log-odds scale (naive Bayes).

    ``score = sigmoid(model * z + sequence * r + cleanlab * c)`` with

    * ``z`` the model's evidence: the mean of ``logit(m)`` and ``logit(m_adj)``, where
      ``m = |label - prob|`` is the model's probability of the flipped label (for a
      calibrated out-of-fold model, the chance the label is wrong) and ``m_adj`` the same
      after cleanlab's per-class adjustment (``1 - cleanlab_quality``), which corrects a
      model whose probabilities are shifted per class (asymmetric-loss training does
      that). Both are clipped to ``[clip, 1 - clip]`` so one over-confident probability
      cannot veto a rule;
    * ``r`` the rule score in [0, 1];
    * ``c`` 1 where cleanlab's confident learning flags the cell.

    Each independent piece of evidence multiplies the odds, so a rule the model backs
    outranks the rule alone and the model alone. With the defaults (and ``m_adj = m``) a
    gap slice (r = 1) multiplies the odds by ``e**3 ~ 20``: the model at 0.9 then gives
    0.995, the model at 0.9 without a pattern 0.90, the gap with the model at 0.1 0.69,
    and a gap the model firmly contradicts (m <= 0.01) 0.17. ``model=0`` ignores the
    model. The defaults come from simulations on ``hohoho_core.synthetic`` label noise
    with stand-in models of several strengths and biases; a benchmark on real
    out-of-fold predictions should re-tune them.
    """

    model: float = 1.0
    sequence: float = 3.0
    cleanlab: float = 0.5
    clip: float = 0.01

    def __post_init__(self) -> None:
        values = (self.model, self.sequence, self.cleanlab)
        if any(not np.isfinite(v) or v < 0 for v in values):
            raise ValueError(f"AuditWeights must be finite and >= 0, got {values}")
        if not 0.0 < self.clip < 0.5:
            raise ValueError(f"AuditWeights.clip must be in (0, 0.5), got {self.clip}")

    def _logit(self, x: np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(x, dtype=np.float64), self.clip, 1.0 - self.clip)
        return np.log(x / (1.0 - x))

    def combine(
        self,
        m: np.ndarray,
        r: np.ndarray,
        c: np.ndarray,
        m_adjusted: np.ndarray | None = None,
    ) -> np.ndarray:
        """Combined score in (0, 1).

        Args:
            m: ``(M,)`` model disagreement ``|label - prob|``.
            r: ``(M,)`` rule score in [0, 1].
            c: ``(M,)`` 1.0 where cleanlab flags the cell, else 0.0.
            m_adjusted: ``(M,)`` cleanlab's class-adjusted disagreement; ``m`` if None.
        """
        z = self._logit(m)
        if m_adjusted is not None:
            z = 0.5 * (z + self._logit(m_adjusted))
        total = self.model * z + self.sequence * np.asarray(r) + self.cleanlab * np.asarray(c)
        return 1.0 / (1.0 + np.exp(-total))


# --------------------------------------------------------------------------- checks


def _check_labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2 or arr.shape[1] != _N_CLASSES:
        raise ValueError(f"labels must have shape (N, {_N_CLASSES}), got {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError("labels contain NaN or infinite values")
    if not np.isin(arr, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return arr.astype(np.int8)


def _check_prob(prob: np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(prob, dtype=np.float64)
    if arr.shape != (n, _N_CLASSES):
        raise ValueError(f"prob must have shape ({n}, {_N_CLASSES}), got {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr > 1).any():
        raise ValueError("prob must be finite probabilities in [0, 1]")
    return arr


# --------------------------------------------------------------------------- rules


def sequence_flags(
    labels: np.ndarray, study_ids: np.ndarray, slice_index: np.ndarray
) -> pd.DataFrame:
    """Flag label patterns along each sorted series.

    Args:
        labels: ``(N, 6)`` int in {0, 1}, columns ``CLASSES``.
        study_ids: ``(N,)`` series key (study UID, or study + series UID); slices with the
            same key form one sequence.
        slice_index: ``(N,)`` int, position in the sorted series. Only the order matters:
            neighbours are the previous and next slice present in the input.

    Returns:
        One row per (slice row, class, rule), sorted by row, class, rule, with columns
        ``row`` (index into the inputs), ``class``, ``class_index``, ``rule``, ``score``
        (in (0, 1]), ``proposed_label`` (the label the rule suggests) and ``detail`` (a
        short phrase). Rules, applied to all six classes unless said:

        * ``isolated_positive``: label 1 with both neighbours 0 (score 1.0); on the first
          or last slice, label 1 with its one neighbour 0 (0.5). A one-slice series has
          no neighbours and is never flagged.
        * ``gap_in_run``: label 0 with both neighbours 1 (1.0). Edge slices are never a
          gap: a 0 at the end of a run is how a run ends.
        * ``any_inconsistent`` (within the slice): "any" 0 while some subtype is 1 flags
          "any" (1.0, propose 1) and each positive subtype (0.5, propose 0); "any" 1
          while every subtype is 0 flags "any" (1.0, propose 0).
    """
    lab = _check_labels(labels)
    n = lab.shape[0]
    sid = np.asarray(study_ids)
    pos = np.asarray(slice_index)
    if sid.shape != (n,) or pos.shape != (n,):
        raise ValueError(
            f"study_ids {sid.shape} and slice_index {pos.shape} must both have shape ({n},)"
        )
    codes, _ = pd.factorize(pd.Series(sid, dtype=object))
    order = np.lexsort((pos, codes))
    s_codes, s_pos, s_lab = codes[order], pos[order], lab[order]
    same_prev = np.zeros(n, dtype=bool)
    same_prev[1:] = s_codes[1:] == s_codes[:-1]
    if (same_prev[1:] & (s_pos[1:] == s_pos[:-1])).any():
        raise ValueError("slice_index has duplicates within a series")
    same_next = np.zeros(n, dtype=bool)
    same_next[:-1] = same_prev[1:]

    # Neighbour labels; -1 where the neighbour does not exist (start or end of series).
    prev = np.full_like(s_lab, -1)
    prev[1:] = np.where(same_prev[1:, None], s_lab[:-1], -1)
    nxt = np.full_like(s_lab, -1)
    nxt[:-1] = np.where(same_next[:-1, None], s_lab[1:], -1)
    has_prev, has_next = prev >= 0, nxt >= 0

    parts: list[pd.DataFrame] = []

    def add(mask: np.ndarray, rule: str, score: np.ndarray | float, proposed: int, detail):
        r, k = np.nonzero(mask)
        if r.size == 0:
            return
        sc = np.broadcast_to(np.asarray(score, dtype=np.float64), mask.shape)[r, k]
        det = detail[r, k] if isinstance(detail, np.ndarray) else np.full(r.size, detail)
        parts.append(
            pd.DataFrame(
                {
                    "row": order[r],
                    "class_index": k,
                    "rule": rule,
                    "score": sc,
                    "proposed_label": proposed,
                    "detail": det,
                }
            )
        )

    # Isolated positive: every existing neighbour is 0 and at least one exists.
    iso = (s_lab == 1) & (has_prev | has_next)
    iso &= (~has_prev | (prev == 0)) & (~has_next | (nxt == 0))
    both = has_prev & has_next
    add(
        iso,
        "isolated_positive",
        np.where(both, SCORE_CLEAR, SCORE_EDGE),
        0,
        np.where(
            both,
            "positive on this slice only, both neighbouring slices negative",
            "positive on the edge slice only, its one neighbour negative",
        ),
    )
    add(
        (s_lab == 0) & (prev == 1) & (nxt == 1),
        "gap_in_run",
        SCORE_CLEAR,
        1,
        "negative slice inside a positive run (both neighbours positive)",
    )

    sub_any = s_lab[:, :ANY_INDEX].max(axis=1)
    any_col = s_lab[:, ANY_INDEX]
    any_missing = np.zeros_like(s_lab, dtype=bool)
    any_missing[:, ANY_INDEX] = (any_col == 0) & (sub_any == 1)
    add(any_missing, "any_inconsistent", SCORE_CLEAR, 1, "'any' is 0 but a subtype is 1")
    sub_extra = np.zeros_like(s_lab, dtype=bool)
    sub_extra[:, :ANY_INDEX] = ((any_col == 0)[:, None]) & (s_lab[:, :ANY_INDEX] == 1)
    add(sub_extra, "any_inconsistent", SCORE_SUBTYPE_VS_ANY, 0, "subtype is 1 but 'any' is 0")
    any_extra = np.zeros_like(s_lab, dtype=bool)
    any_extra[:, ANY_INDEX] = (any_col == 1) & (sub_any == 0)
    add(any_extra, "any_inconsistent", SCORE_CLEAR, 0, "'any' is 1 but no subtype is 1")

    columns = ["row", "class", "class_index", "rule", "score", "proposed_label", "detail"]
    if not parts:
        return pd.DataFrame(
            {
                "row": pd.Series(dtype=np.int64),
                "class": pd.Series(dtype=object),
                "class_index": pd.Series(dtype=np.int64),
                "rule": pd.Series(dtype=object),
                "score": pd.Series(dtype=np.float64),
                "proposed_label": pd.Series(dtype=np.int64),
                "detail": pd.Series(dtype=object),
            }
        )[columns]
    out = pd.concat(parts, ignore_index=True)
    out["row"] = out["row"].astype(np.int64)
    out["class_index"] = out["class_index"].astype(np.int64)
    out["proposed_label"] = out["proposed_label"].astype(np.int64)
    out["class"] = np.asarray(CLASSES, dtype=object)[out["class_index"].to_numpy()]
    out["_rule_order"] = out["rule"].map({r: i for i, r in enumerate(RULES)})
    out = out.sort_values(["row", "class_index", "_rule_order"], kind="stable")
    return out[columns].reset_index(drop=True)


# --------------------------------------------------------------------------- model


def model_flags(labels: np.ndarray, prob: np.ndarray) -> pd.DataFrame:
    """Score every (slice, class) label against out-of-fold probabilities with cleanlab.

    Args:
        labels: ``(N, 6)`` int in {0, 1}, columns ``CLASSES``.
        prob: ``(N, 6)`` float in [0, 1], out-of-sample probabilities (k-fold, split by
            patient: a model must never judge a slice it trained on).

    Returns:
        ``N * 6`` rows ordered by (row, class_index) with columns ``row``, ``class``,
        ``class_index``, ``label``, ``prob`` and

        * ``model_score``: ``1 - `` cleanlab's per-class self-confidence, i.e. the
          model's probability of the flipped label, ``|label - prob|`` (higher = more
          suspicious);
        * ``cleanlab_quality``: cleanlab's per-class self-confidence after its
          class-imbalance adjustment (``adjust_pred_probs=True``: the per-class confident
          threshold is subtracted, so a 0.3 on a rare class counts); lower = worse;
        * ``cleanlab_issue``: bool, cleanlab's confident-learning verdict per class
          (``find_multilabel_issues_per_class``, ``prune_by_noise_rate``);
        * ``cleanlab_slice_quality``: cleanlab's label quality of the whole slice
          (per-class scores aggregated), repeated on its six rows;
        * ``cleanlab_score``: ``0.5 * issue + 0.5 * (1 - cleanlab_quality)`` in [0, 1],
          the "cleanlab only" ranking signal (flagged cells first).

    cleanlab's multi-label validation needs at least one positive label in the data; with
    none, self-confidence is taken directly (it is by definition the probability of the
    given label) and no confident-learning issues are reported.
    """
    lab = _check_labels(labels)
    n = lab.shape[0]
    p = _check_prob(prob, n)

    if n > 0 and lab.any():
        from cleanlab.multilabel_classification import filter as cl_filter
        from cleanlab.multilabel_classification import rank as cl_rank

        # cleanlab's multi-label format: one list of positive class indices per example.
        as_lists = [np.flatnonzero(row).tolist() for row in lab]
        with warnings.catch_warnings():
            # Rare classes (few positives) trigger an informational warning per class.
            warnings.filterwarnings(
                "ignore", message=r"May not flag all label issues", category=UserWarning
            )
            self_conf = cl_rank.get_label_quality_scores_per_class(
                as_lists, p, method="self_confidence"
            )
            adjusted = cl_rank.get_label_quality_scores_per_class(
                as_lists, p, method="self_confidence", adjust_pred_probs=True
            )
            slice_quality = cl_rank.get_label_quality_scores(as_lists, p)
            issues = cl_filter.find_multilabel_issues_per_class(as_lists, p, n_jobs=1)
        self_conf = np.asarray(self_conf, dtype=np.float64)
        adjusted = np.clip(np.asarray(adjusted, dtype=np.float64), 0.0, 1.0)
        issues = np.asarray(issues, dtype=bool)
        slice_quality = np.asarray(slice_quality, dtype=np.float64)
    else:
        self_conf = np.where(lab == 1, p, 1.0 - p)
        adjusted = self_conf.copy()
        issues = np.zeros(lab.shape, dtype=bool)
        slice_quality = self_conf.min(axis=1) if n else np.zeros(0)

    rows = np.repeat(np.arange(n, dtype=np.int64), _N_CLASSES)
    cls = np.tile(np.arange(_N_CLASSES, dtype=np.int64), n)
    return pd.DataFrame(
        {
            "row": rows,
            "class": np.asarray(CLASSES, dtype=object)[cls],
            "class_index": cls,
            "label": lab.reshape(-1).astype(np.int64),
            "prob": p.reshape(-1),
            "model_score": 1.0 - self_conf.reshape(-1),
            "cleanlab_quality": adjusted.reshape(-1),
            "cleanlab_issue": issues.reshape(-1),
            "cleanlab_slice_quality": np.repeat(slice_quality, _N_CLASSES),
            "cleanlab_score": 0.5 * issues.reshape(-1) + 0.5 * (1.0 - adjusted.reshape(-1)),
        }
    )


# --------------------------------------------------------------------------- ranking


def _reason(label: int, cls: str, prob: float, details: str) -> str:
    """One readable sentence: what the label is, which pattern, what the model thinks."""
    flipped = 1 - label
    backs = prob if flipped == 1 else 1.0 - prob
    # Only a relabel has a target; "supports the label to 1" read as the opposite claim.
    verdict = f"backs a relabel to {flipped}" if backs >= 0.5 else "supports the label"
    head = f"{cls} labelled {label}"
    model = f"the model gives {prob:.2f} ({verdict})"
    if details:
        return f"{head}: {details}; {model}."
    return f"{head}; {model}."


def audit_cells(
    table: pd.DataFrame,
    prob: np.ndarray,
    weights: AuditWeights | None = None,
    evidence: SliceEvidence | None = None,
) -> pd.DataFrame:
    """Every signal and boundary feature of every (slice, class) cell, unranked.

    Args and validation as in `rank_flags`.

    Returns:
        ``6 * N`` rows in (row, class) order: the columns `rank_flags` documents (without
        ``reason``, ``score``, ``rank`` and ``learned_score``) plus ``row``,
        ``class_index``, ``candidate`` (``run_shorter`` | ``run_longer`` | ""),
        ``cnn_score`` (``|label - cnn_prob|``, the model score when no
        CNN probabilities are given), ``cleanlab_quality``, one ``rule_<name>`` score per
        rule, the boundary evidence terms (``audit_boundary.EVIDENCE_TERMS``, NaN off a
        candidate), ``run_length`` (0 off a candidate) and ``_details``.
    """
    weights = weights if weights is not None else AuditWeights()
    needed = ["image_id", "study_uid", "slice_index", *CLASSES]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"table is missing columns {missing}")
    n = len(table)
    label_frame = table[list(CLASSES)]
    if label_frame.isna().to_numpy().any():
        raise ValueError("table has slices without labels; drop them before the audit")
    labels = _check_labels(label_frame.to_numpy())
    p = _check_prob(prob, n)
    ev = evidence if evidence is not None else SliceEvidence()
    ev.check(n)
    if ev.cnn_prob is not None:
        _check_prob(ev.cnn_prob, n)

    key = table["study_uid"].astype(str)
    if "series_uid" in table.columns:
        key = key + "\x1f" + table["series_uid"].astype(str)
    seq = sequence_flags(labels, key.to_numpy(), table["slice_index"].to_numpy())
    out = model_flags(labels, p)
    n_cells = n * _N_CLASSES

    cell = out["row"].to_numpy() * _N_CLASSES + out["class_index"].to_numpy()
    seq_cell = seq["row"].to_numpy() * _N_CLASSES + seq["class_index"].to_numpy()
    # Noisy-OR over the rules that fire on one cell: independent hints add up, capped at 1.
    miss = np.ones(n_cells)
    np.multiply.at(miss, seq_cell, 1.0 - seq["score"].to_numpy())
    r = (1.0 - miss)[cell]
    per_rule = {}
    for rule in RULES:
        v = np.zeros(n_cells)
        hit = (seq["rule"] == rule).to_numpy()
        np.maximum.at(v, seq_cell[hit], seq["score"].to_numpy()[hit])
        per_rule[f"rule_{rule}"] = v[cell]
    rules = np.full(n_cells, "", dtype=object)
    details = np.full(n_cells, "", dtype=object)
    if len(seq):
        grouped = seq.groupby(seq_cell, sort=False)
        rule_str = grouped["rule"].agg(lambda s: ";".join(dict.fromkeys(s)))
        detail_str = grouped["detail"].agg("; ".join)
        rules[rule_str.index.to_numpy()] = rule_str.to_numpy()
        details[detail_str.index.to_numpy()] = detail_str.to_numpy()

    bc = cell_candidates(labels, key.to_numpy(), table["slice_index"].to_numpy(), p, ev)
    kind, edge, boundary, terms = bc["candidate"], bc["edge"], bc["boundary_score"], bc["terms"]
    run_length, cand_detail = bc["run_length"], bc["detail"]
    candidate = kind.copy()
    # A rule names the pattern first; a boundary candidate otherwise; else a plain cell.
    kind = np.where(rules != "", np.array([s.split(";")[0] for s in rules], dtype=object),
                    np.where(kind != "", kind, "cell"))
    details = np.array([a if not b else (f"{a}; {b}" if a else b)
                        for a, b in zip(details, cand_detail, strict=True)], dtype=object)

    m = out["model_score"].to_numpy()
    c = out["cleanlab_issue"].to_numpy().astype(np.float64)
    m_adj = 1.0 - out["cleanlab_quality"].to_numpy()
    combined = weights.combine(m, r, c, m_adjusted=m_adj)
    combined, partner = carry_any(combined.reshape(n, _N_CLASSES), labels)
    label_flat = out["label"].to_numpy()
    if ev.cnn_prob is not None:
        cnn_score = np.abs(label_flat - np.asarray(ev.cnn_prob, dtype=np.float64).reshape(-1))
    else:
        cnn_score = m.copy()

    rows = out["row"].to_numpy()
    image_ids = table["image_id"].astype(str).to_numpy()
    cls_names = out["class"].to_numpy()
    group = np.char.add(np.char.add(image_ids[rows].astype(str), ":"), cls_names.astype(str))
    part = np.repeat(partner, _N_CLASSES)
    is_any = out["class_index"].to_numpy() == ANY_INDEX
    linked = is_any & (part >= 0)
    group = group.astype(object)
    group[linked] = [f"{image_ids[rw]}:{CLASSES[pj]}" for rw, pj in
                     zip(rows[linked], part[linked], strict=True)]
    return pd.DataFrame(
        {
            "row": rows,
            "image_id": table["image_id"].to_numpy()[rows],
            "study_uid": table["study_uid"].to_numpy()[rows],
            "slice_index": table["slice_index"].to_numpy()[rows],
            "class": cls_names,
            "class_index": out["class_index"].to_numpy(),
            "label": label_flat,
            "prob": out["prob"].to_numpy(),
            "model_score": m,
            "cnn_score": cnn_score,
            "sequence_score": r,
            "cleanlab_score": out["cleanlab_score"].to_numpy(),
            "cleanlab_quality": out["cleanlab_quality"].to_numpy(),
            "cleanlab_issue": out["cleanlab_issue"].to_numpy(),
            "boundary_score": boundary,
            "combined_score": combined.reshape(-1),
            "rules": rules[cell],
            "kind": kind[cell],
            "edge": edge[cell],
            "group": group,
            "candidate": candidate[cell],
            "run_length": run_length[cell],
            **per_rule,
            **{t: v[cell] for t, v in terms.items()},
            "_details": details[cell],
        }
    )


@functools.lru_cache(maxsize=4)
def _load_ranker(path: str, mtime_ns: int) -> AuditRanker:
    from hohoho_core.audit_ranker import AuditRanker

    return AuditRanker.load(path)


def shipped_ranker(folder: Path | str | None = None) -> AuditRanker:
    """The learned ranker of a weights folder.

    Without ``folder``: the ``audit_ranker.json`` of `weights.default_weights_dir` when
    it has one, else the repository's shipped one (`weights.shipped_weights_dir`): the
    ranker reads the audit's signals, not the network, so a folder of other weights (a
    fine-tuned model) can share it.

    Raises:
        ValueError: no ``audit_ranker.json`` there, or it is not a ranker of this version
            (refit with ``python -m bench.audit_scoring --save-ranker``).
    """
    from hohoho_core.weights import default_weights_dir, shipped_weights_dir

    if folder is not None:
        path = Path(folder) / RANKER_FILE
    else:
        path = default_weights_dir() / RANKER_FILE
        if not path.is_file():
            path = shipped_weights_dir() / RANKER_FILE
    if not path.is_file():
        raise ValueError(f"no learned audit ranker at {path}; pass ranker=None for the "
                         "hand-weighted score")
    try:
        return _load_ranker(str(path), path.stat().st_mtime_ns)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def rank_flags(
    table: pd.DataFrame,
    prob: np.ndarray,
    weights: AuditWeights | None = None,
    *,
    signal_only: Signal | None = None,
    top: int | None = None,
    evidence: SliceEvidence | None = None,
    ranker: AuditRanker | Literal["shipped"] | None = "shipped",
) -> pd.DataFrame:
    """Combine the model and the sequence rules into one ranked list of (image, class).

    Args:
        table: one row per slice with columns ``image_id``, ``study_uid``,
            ``slice_index`` and the six ``CLASSES`` label columns (0/1); a
            ``series_uid`` column, when present, splits studies into series.
        prob: ``(N, 6)`` out-of-fold probabilities, rows aligned with ``table``.
        weights: weights of the combined score (``AuditWeights()`` by default).
        signal_only: rank by one signal alone, for benchmarks: ``"model"``
            (``|label - prob|``), ``"sequence"`` (rule score), ``"cleanlab"``
            (``cleanlab_score``), ``"cnn"`` (``|label - cnn_prob|``) or ``"boundary"``
            (``boundary_score``). None ranks by the learned score, or by the combined
            score when ``ranker`` is None.
        top: keep only the ``top`` highest-ranked rows.
        evidence: per-slice CNN probabilities, embeddings and blood areas for the
            boundary evidence (`audit_boundary.SliceEvidence`); None: probabilities only.
        ranker: a fitted `audit_ranker.AuditRanker`, ``"shipped"`` (the default:
            `shipped_ranker`, from the weights folder) or None (the hand-weighted
            `AuditWeights` score only; ``learned_score`` is NaN). Its score, after
            `carry_any`, becomes ``learned_score`` and the ranking. It uses the boundary
            evidence (`audit_boundary`) of every run edge, from the probabilities alone
            or from ``evidence`` when given, the rules and cleanlab as features.

    Returns:
        One row per (image_id, class), ``6 * N`` rows (or ``top``) sorted by ``rank``
        (1 = most suspicious), with columns ``image_id, study_uid, slice_index, class,
        label, prob, model_score, sequence_score, cleanlab_score, cleanlab_issue,
        combined_score, rules`` (semicolon-separated rule names, "" if none), then
        ``cnn_score``, ``boundary_score`` (0 off a run edge), ``learned_score`` (NaN
        without a ranker), ``kind`` (the candidate: a rule name, ``run_shorter`` = the
        edge slice of a run that may end one slice earlier / start one later,
        ``run_longer`` = the slice just outside a run that may extend to it, or
        ``cell``), ``edge`` (``start`` | ``end`` | ""), ``group`` (``image_id:class``;
        an "any" cell that moves with a subtype cell shares that subtype's group),
        ``reason`` (a sentence), ``score`` (the ranking signal) and ``rank``.
        Combined and learned scores carry between a subtype and its "any" cell
        (`carry_any`). Combined-score ties are split by the raw model score, then the
        rule score; single-signal ties keep table order (then class order), so a
        single-signal ranking never borrows another signal. Several rules on one cell
        combine by noisy-OR: ``1 - prod(1 - r_i)``.
    """
    if signal_only is not None and signal_only not in SIGNALS:
        raise ValueError(f"signal_only must be None or one of {SIGNALS}, got {signal_only!r}")
    if top is not None and top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    if isinstance(ranker, str):
        if ranker != "shipped":
            raise ValueError(f"ranker must be an AuditRanker, 'shipped' or None, got {ranker!r}")
        ranker = shipped_ranker()
    cells = audit_cells(table, prob, weights, evidence)
    n = len(table)
    learned = np.full(len(cells), np.nan)
    if ranker is not None:
        raw = ranker.score(cells).reshape(n, _N_CLASSES)
        learned = carry_any(raw, cells["label"].to_numpy().reshape(n, _N_CLASSES))[0].reshape(-1)
    cells["learned_score"] = learned
    columns = ["image_id", "study_uid", "slice_index", "class", "label", "prob",
               "model_score", "sequence_score", "cleanlab_score", "cleanlab_issue",
               "combined_score", "rules", "cnn_score", "boundary_score", "learned_score",
               "kind", "edge", "group", "_details"]
    result = cells[columns]
    if signal_only is None:
        score_col = "combined_score" if ranker is None else "learned_score"
    else:
        score_col = {"model": "model_score", "sequence": "sequence_score",
                     "cleanlab": "cleanlab_score", "cnn": "cnn_score",
                     "boundary": "boundary_score"}[signal_only]
    result = result.assign(score=result[score_col].to_numpy())
    m = result["model_score"].to_numpy()
    r = result["sequence_score"].to_numpy()
    if signal_only is None:
        # The clip makes very confident model disagreements tie; the raw score splits them.
        order = np.lexsort((-r, -m, -result["score"].to_numpy()))
    else:
        # One signal alone: ties keep (row, class) order rather than borrow another signal.
        order = np.argsort(-result["score"].to_numpy(), kind="stable")
    result = result.iloc[order].reset_index(drop=True)
    result["rank"] = np.arange(1, len(result) + 1, dtype=np.int64)
    if top is not None:
        result = result.iloc[:top].copy()
    # Sentences only for the rows kept: millions of f-strings would dominate a full audit.
    result.insert(
        result.columns.get_loc("score"),
        "reason",
        [
            _reason(int(lb), cl, float(pr), d)
            for lb, cl, pr, d in zip(
                result["label"], result["class"], result["prob"], result["_details"], strict=True
            )
        ],
    )
    return result.drop(columns="_details")


# --------------------------------------------------------------------------- files


def read_probs_csv(
    path: Source,
    image_ids: np.ndarray | pd.Series | list[str],
    *,
    name: str | None = None,
) -> np.ndarray:
    """Read RSNA-submission-format probabilities into an array aligned with ``image_ids``.

    Args:
        path: CSV with header ``ID,Label`` and rows ``ID_<image>_<class>,<probability>``
            (a path, its bytes or an open file).
        image_ids: ``(N,)`` image IDs (``ID_<hex>``) in the order wanted.
        name: what error messages call the file (default: its name).

    Returns:
        ``(N, 6)`` float64, columns ``CLASSES``. Rows for other images are ignored;
        identical duplicate rows are tolerated.

    Raises:
        ValueError: (`RsnaCsvError`) missing columns, a malformed ID, an unknown class
            suffix, values outside [0, 1], conflicting duplicates, or an image/class of
            ``image_ids`` without a value. Out-of-fold scores must be complete and
            unambiguous: a guessed probability would become a guessed label flag.
    """
    return read_rsna_csv(
        path,
        kind="probabilities",
        image_ids=image_ids,
        on_invalid="error",
        on_duplicate="drop",
        on_conflict="error",
        on_missing="error",
        name=name,
    ).to_numpy(dtype=np.float64)


def audit_from_files(
    data_dir: Path | str,
    probs_csv: Path | str,
    *,
    labels_csv: Path | str | None = None,
    weights: AuditWeights | None = None,
    signal_only: Signal | None = None,
    top: int | None = None,
    cache_dir: Path | str | None = None,
    workers: int | None = None,
    ranker: AuditRanker | Literal["shipped"] | None = "shipped",
    image_evidence: bool = True,
) -> pd.DataFrame:
    """Audit an RSNA-layout dataset against out-of-fold probabilities.

    Args:
        data_dir: folder with ``stage_2_train.csv`` and ``stage_2_train/ID_<hex>.dcm``
            (indexed by ``hohoho_core.rsna.build_index``).
        probs_csv: RSNA-submission-format out-of-fold probabilities for those images.
        labels_csv: labels file, when not the one ``build_index`` finds by default.
        weights, signal_only, top: as in ``rank_flags``.
        cache_dir, workers: passed to ``build_index`` (its defaults when None).
        ranker: as in ``rank_flags`` (the shipped learned ranker by default).
        image_evidence: read the slices near run edges for the blood evidence of the
            boundary candidates (`audit_images.image_evidence`); False: probabilities only.

    Returns:
        ``rank_flags`` output for every labelled slice; slices without labels (-1 or NaN
        in the index) are left out, and the neighbours of a slice are then the nearest
        labelled slices of its series.
    """
    from hohoho_core import rsna  # lazy: header indexing pulls in pydicom

    index = rsna.build_index(
        Path(data_dir), labels_csv=labels_csv, cache_dir=cache_dir, workers=workers, progress=False
    )
    table = index.table
    labelled = table[list(CLASSES)].isin([0, 1]).all(axis=1).to_numpy()
    table = table.loc[labelled].reset_index(drop=True)
    if table.empty:
        raise ValueError("no labelled slices to audit")
    prob = read_probs_csv(probs_csv, table["image_id"].to_numpy())
    evidence = None
    if image_evidence:
        from hohoho_core.audit_images import table_evidence
        from hohoho_core.dicom.loader import load_study

        root = Path(data_dir)  # index paths are relative to the dataset folder
        skipped: list[str] = []
        evidence = table_evidence(table, lambda paths: load_study([root / p for p in paths]),
                                  skipped=skipped)
        if skipped:
            # A count only: the reasons name series UIDs, which stay out of logs.
            warnings.warn(f"audit: no image evidence for {len(skipped)} series that could "
                          "not be read; their run edges rank on the other signals",
                          stacklevel=2)
    return rank_flags(table, prob, weights, signal_only=signal_only, top=top,
                      evidence=evidence, ranker=ranker)
