"""Studies for the audit bench: rendered in memory, scored by the shipped model, noised.

Two generators: the project's own (``hohoho_core.synthetic.make_study``) and the
independent one in ``bench/foreign_phantom.py``, which shares no code with it and which
the shipped model never saw. Each study is rendered, run through the shipped weights on the
CPU (``Predictor.predict_input`` and ``sequence_prob``: CNN probabilities, embeddings,
LSTM probabilities) and measured for acute blood (``audit_boundary.blood_map``: how much, where).
Only those arrays are kept (cached as ``.npz``, never pickled): label noise is drawn
afterwards, as often as wanted, on the clean labels (``inject_label_noise``), and a
model that never trained on these studies stays out of sample for every draw.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hohoho_core.audit_boundary import SENSITIVE_BLOOD_HU, SliceEvidence, blood_map, brain_area
from hohoho_core.labels import CLASSES, SUBTYPES
from hohoho_core.predict import Predictor
from hohoho_core.preprocess import make_input
from hohoho_core.synthetic.labelnoise import inject_label_noise

#: Bump when what a cached set holds changes.
CACHE_VERSION = 4


@dataclass
class StudySet:
    """Slices of many studies, concatenated in study order, slice 0 inferior.

    ``labels`` are the clean labels ``(N, 6)``; ``prob`` the LSTM's, ``cnn_prob`` the CNN's
    ``(N, 6)``; ``embeddings`` ``(N, 512)``; ``blood`` ``(N,)`` mm^2 and ``blood_map``
    ``(N, 32, 32)`` where it is; ``blood_map_lo`` the same with the wider, less smoothed
    range (``SENSITIVE_BLOOD_HU``, 1 mm); ``brain`` ``(N,)`` mm^2 inside the skull;
    ``study`` ``(N,)``
    study number; ``index`` ``(N,)`` slice position in its study.
    """

    name: str
    labels: np.ndarray
    prob: np.ndarray
    cnn_prob: np.ndarray
    embeddings: np.ndarray
    blood: np.ndarray
    blood_map: np.ndarray
    blood_map_lo: np.ndarray
    brain: np.ndarray
    study: np.ndarray
    index: np.ndarray
    seconds: float

    @property
    def evidence(self) -> SliceEvidence:
        return SliceEvidence(cnn_prob=self.cnn_prob, embeddings=self.embeddings,
                             blood=self.blood, blood_map=self.blood_map,
                             blood_map_lo=self.blood_map_lo, brain=self.brain)

    def image_ids(self) -> np.ndarray:
        return np.array([f"ID_{self.name}_{s}_{i}" for s, i in
                         zip(self.study, self.index, strict=True)], dtype=object)

    def study_uids(self) -> np.ndarray:
        return np.array([f"{self.name}-{s}" for s in self.study], dtype=object)

    def truth(self) -> pd.DataFrame:
        """The clean labels in ``truth.csv`` form (for ``error_kinds``)."""
        t = pd.DataFrame(self.labels.astype(int), columns=list(CLASSES))
        t.insert(0, "image_id", self.image_ids())
        t.insert(1, "study_uid", self.study_uids())
        t.insert(2, "true_index", self.index)
        return t

    def degraded(self, sigma: float, seed: int) -> StudySet:
        """A copy whose model outputs are blurred: logits times a random temperature in
        [0.5, 1] plus Gaussian noise of ``sigma``, so a ranker fitted on it learns how far
        to lean on the model (the model is weaker on data unlike its training data)."""
        if sigma <= 0:
            return self
        rng = np.random.default_rng([seed, 0xD15])
        out = {}
        for k in ("prob", "cnn_prob"):
            p = np.clip(getattr(self, k), 1e-6, 1 - 1e-6)
            z = np.log(p / (1 - p)) * rng.uniform(0.5, 1.0) + rng.normal(0, sigma, p.shape)
            out[k] = 1.0 / (1.0 + np.exp(-z))
        return StudySet(name=self.name, labels=self.labels, embeddings=self.embeddings,
                        blood=self.blood, blood_map=self.blood_map,
                        blood_map_lo=self.blood_map_lo, brain=self.brain, study=self.study,
                        index=self.index,
                        seconds=self.seconds, **out)

    def noisy(self, rate: float, seed: int, draw: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """One noise draw: (audit table with noisy labels, errors with image_id/class/...)."""
        rng = np.random.default_rng([seed, draw, 0xA0D17])
        noisy, errors = inject_label_noise(self.labels, self.study, self.index, rate, rng)
        table = pd.DataFrame(noisy.astype(int), columns=list(CLASSES))
        table.insert(0, "image_id", self.image_ids())
        table.insert(1, "study_uid", self.study_uids())
        table.insert(2, "slice_index", self.index)
        errors = errors.assign(image_id=self.image_ids()[errors["row"].to_numpy(dtype=int)])
        return table, errors


def _own_study(seed: int, i: int, size: int, slices: tuple[int, int],
               randomise: bool = False) -> tuple[np.ndarray, ...]:
    """A study of the project's generator: half with one or two subtypes; ``randomise``
    turns on its domain randomisation (``hohoho_core.synthetic.randomise``)."""
    from hohoho_core.synthetic import StudyPlan, make_study

    rng = np.random.default_rng([seed, i, 0x0A11])
    subtypes: tuple[str, ...] = ()
    if rng.random() < 0.5:
        k = 2 if rng.random() < 0.3 else 1
        subtypes = tuple(str(s) for s in rng.choice(SUBTYPES, size=k, replace=False))
    plan = StudyPlan(subtypes=subtypes, n_slices=int(rng.integers(slices[0], slices[1] + 1)),
                     tilt=bool(rng.random() < 0.2), randomise=randomise)
    st = make_study(seed, i, size=size, plan=plan)
    return st.hu, st.labels, float(st.pixel_spacing)


def _foreign_study(seed: int, i: int, size: int) -> tuple[np.ndarray, ...]:
    from bench.foreign_phantom import make_foreign_study

    st = make_foreign_study(seed, i, size=size)
    return st.hu, st.labels, float(st.pixel_spacing)


def build_set(
    name: str,
    generator: str,
    seed: int,
    studies: int,
    predictor: Predictor,
    *,
    size: int,
    slices: tuple[int, int] = (16, 24),
    cache_dir: Path | None = None,
) -> StudySet:
    """Render ``studies`` studies of ``generator`` ("own" | "own_rand" | "foreign") and
    score them."""
    spec = {"v": CACHE_VERSION, "generator": generator, "seed": seed, "studies": studies,
            "size": size, "slices": list(slices),
            "weights": hashlib.sha256(json.dumps(predictor.config.thresholds).encode())
            .hexdigest()[:12]}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"{name}-{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return StudySet(name=name, seconds=float(z["seconds"]),
                            **{k: z[k] for k in ("labels", "prob", "cnn_prob", "embeddings",
                                                 "blood", "blood_map", "blood_map_lo",
                                                 "brain", "study", "index")})
    t = time.perf_counter()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("labels", "prob", "cnn_prob", "embeddings",
                                           "blood", "blood_map", "blood_map_lo",
                                           "brain", "study", "index")}
    cnn_t = torch.from_numpy(predictor.cnn_temperatures)
    for i in range(studies):
        if generator in ("own", "own_rand"):
            hu, labels, spacing = _own_study(seed, i, size, slices, generator == "own_rand")
        elif generator == "foreign":
            hu, labels, spacing = _foreign_study(seed, i, size)
        else:
            raise ValueError(f"unknown generator {generator!r}")
        emb, logits = predictor.predict_input(make_input(hu, predictor.preprocess_config))
        lstm = predictor.sequence_prob(emb, logits)
        parts["labels"].append(np.asarray(labels, dtype=np.uint8))
        parts["cnn_prob"].append(torch.sigmoid(torch.from_numpy(logits) / cnn_t).numpy())
        parts["prob"].append(lstm if lstm is not None else parts["cnn_prob"][-1])
        parts["embeddings"].append(emb)
        bmap = blood_map(hu, spacing)
        parts["blood_map"].append(bmap)
        parts["blood"].append(bmap.sum(axis=(1, 2), dtype=np.float64))
        parts["blood_map_lo"].append(blood_map(hu, spacing, hu_range=SENSITIVE_BLOOD_HU,
                                               smooth_mm=1.0))
        parts["brain"].append(brain_area(hu, spacing))
        parts["study"].append(np.full(len(hu), i, dtype=np.int64))
        parts["index"].append(np.arange(len(hu), dtype=np.int64))
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    # float64 and clipped: probabilities straight from float32 sigmoid may round to 1.0.
    for k in ("prob", "cnn_prob"):
        arrays[k] = np.clip(arrays[k].astype(np.float64), 0.0, 1.0)
    seconds = time.perf_counter() - t
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, seconds=np.float64(seconds), **arrays)
    return StudySet(name=name, seconds=seconds, **arrays)


def describe(s: StudySet) -> dict[str, Any]:
    """Counts for the report."""
    positive = pd.Series(s.labels[:, -1]).groupby(s.study).max()
    runs = 0
    for st in np.unique(s.study):
        rows = s.study == st
        for j in range(len(SUBTYPES)):
            col = np.concatenate([[0], s.labels[rows, j].astype(int), [0]])
            runs += int((np.diff(col) == 1).sum())
    return {"studies": int(len(positive)), "studies_positive": int(positive.sum()),
            "slices": int(len(s.labels)), "positive_slices": int(s.labels[:, -1].sum()),
            "subtype_runs": runs, "seconds": round(s.seconds, 1)}
