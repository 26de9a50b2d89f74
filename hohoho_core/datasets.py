"""Training datasets: slices from the memory-mapped cache, studies as embedding sequences.

An epoch never decodes DICOM: ``SliceDataset`` reads the int16 HU already cropped and resized
by ``hohoho_core.cache``, takes the slice and its neighbours, and windows them exactly as
``preprocess.input_from_resized_hu`` does at inference. Splits are made by study (or patient)
with ``split_by_study``, never by slice, so no study leaks between train, validation and test.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from hohoho_core.atomic import atomic_open
from hohoho_core.augment import slab_channels, to_model_input
from hohoho_core.labels import CLASSES
from hohoho_core.preprocess import PreprocessConfig

__all__ = [
    "EmbeddingSequenceDataset",
    "EmbeddingTable",
    "SliceDataset",
    "WeightedSliceSampler",
    "collate_sequences",
    "load_embeddings",
    "save_embeddings",
    "slice_weights",
    "split_by_study",
]

#: A callable that augments HU slabs ``[N, C, H, W]`` given a generator (``HUAugment``).
HUTransform = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


class SliceDataset(Dataset):
    """One item per slice of the cached studies ``keys``.

    ``ds[i] -> (x, y, meta)``:

    - ``output="input"``: x float32 ``[3, size, size]`` in [0, 1] (slice and neighbours,
      windowed per ``cfg.mode``), after ``augment`` on HU when given;
    - ``output="hu"``: x float32 HU ``[C, size, size]`` (C = 3 for "stacked", else 1), for
      augmenting whole batches on the device (``HUAugment`` then ``to_model_input``);
    - y float32 ``(6,)`` labels in ``CLASSES`` order (-1 where unknown, only when
      ``labeled_only=False``); meta ``{"index", "study", "slice"}`` ints (``study`` indexes
      ``self.keys``).

    ``augment`` draws from a generator seeded by (``seed``, epoch, item) with
    ``augment_by="slice"``, or by (``seed``, epoch, study) with ``augment_by="study"`` so all
    slices of a study share one transform (for augmented copies of whole sequences).

    Studies are opened lazily as memory maps and a bounded number stays open (``max_open``)
    so a 20,000-study cache does not exhaust file handles.
    """

    def __init__(
        self,
        cache: Any,
        keys: Sequence[str],
        cfg: PreprocessConfig,
        augment: HUTransform | None = None,
        output: Literal["input", "hu"] = "input",
        labeled_only: bool = True,
        seed: int = 0,
        max_open: int = 64,
        augment_by: Literal["slice", "study"] = "slice",
    ) -> None:
        if output not in ("input", "hu"):
            raise ValueError(f"output must be 'input' or 'hu', got {output!r}")
        if augment_by not in ("slice", "study"):
            raise ValueError(f"augment_by must be 'slice' or 'study', got {augment_by!r}")
        self.augment_by = augment_by
        self.cache = cache
        self.keys = list(keys)
        self.cfg = cfg
        self.augment = augment
        self.output = output
        self.seed = seed
        self.epoch = 0
        self._max_open = max_open
        self._open: OrderedDict[int, Any] = OrderedDict()
        studies, slices, labels, n_slices = [], [], [], []
        self.study_image_ids: list[list[str]] = []  # per study, in slice order
        for s, key in enumerate(self.keys):
            st = cache.get(key)
            self.study_image_ids.append(list(st.image_ids))
            n = int(st.hu.shape[0])
            lab = np.asarray(st.labels, dtype=np.int8).reshape(n, len(CLASSES))
            keep = (lab >= 0).all(1) if labeled_only else np.ones(n, bool)
            idx = np.nonzero(keep)[0]
            studies.append(np.full(len(idx), s, np.int32))
            slices.append(idx.astype(np.int32))
            labels.append(lab[idx])
            n_slices.append(n)
            side = tuple(st.hu.shape[1:])
            if side != (cfg.size, cfg.size):
                raise ValueError(
                    f"cache study {s} has slices {side}, the config asks for size {cfg.size}"
                )
        empty = np.zeros(0, np.int32)
        self.study_index = np.concatenate(studies) if studies else empty
        self.slice_index = np.concatenate(slices) if slices else empty
        self.labels = (
            np.concatenate(labels) if labels else np.zeros((0, len(CLASSES)), np.int8)
        )  # (N, 6) int8
        self.n_slices = np.asarray(n_slices, np.int32)  # slices per study (all, labelled or not)

    def __len__(self) -> int:
        return len(self.slice_index)

    def image_id(self, i: int) -> str:
        """The image id (RSNA ``ID_<hex>``) of item ``i``."""
        return self.study_image_ids[int(self.study_index[i])][int(self.slice_index[i])]

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws (each item's generator is seeded by seed, epoch, i)."""
        self.epoch = epoch

    def _study(self, s: int) -> Any:
        st = self._open.get(s)
        if st is None:
            st = self.cache.get(self.keys[s])
            self._open[s] = st
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(s)
        return st

    def slab(self, i: int) -> np.ndarray:
        """HU ``[C, size, size]`` float32 for item ``i`` (neighbours repeat at study edges)."""
        s, k = int(self.study_index[i]), int(self.slice_index[i])
        hu = self._study(s).hu
        if slab_channels(self.cfg) == 3:
            n = int(self.n_slices[s])
            rows = [max(k - 1, 0), k, min(k + 1, n - 1)]
            return np.asarray(hu[rows], dtype=np.float32)
        return np.asarray(hu[k : k + 1], dtype=np.float32)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        x = torch.from_numpy(self.slab(i))
        if self.augment is not None:
            # "study": every slice of a study gets the same draw (one consistent rotation,
            # flip and window for the whole sequence, as a real scan would have)
            unit = i if self.augment_by == "slice" else -1 - int(self.study_index[i])
            g = torch.Generator().manual_seed(_item_seed(self.seed, self.epoch, unit))
            x = self.augment(x[None], g)[0]
        if self.output == "input":
            x = to_model_input(x[None], self.cfg)[0]
        y = torch.from_numpy(self.labels[i].astype(np.float32))
        meta = {"index": i, "study": int(self.study_index[i]), "slice": int(self.slice_index[i])}
        return x, y, meta


def _item_seed(seed: int, epoch: int, i: int) -> int:
    # a fixed mix so that (seed, epoch, i) triples rarely collide; non-negative below 2**62
    return (seed * 1_000_003 + epoch * 7_919 + i * 104_729) % (2**62)


def slice_weights(
    labels: np.ndarray, positive_fraction: float = 0.5, temper: float = 0.5
) -> np.ndarray:
    """Sampling weights ``(N,)`` that draw positive slices ``positive_fraction`` of the time.

    labels: ``(N, 6)`` {0, 1} (column 5 = any). Negative slices share ``1 - positive_fraction``
    equally. Among positives, a slice weighs ``max_k n_k ** -temper`` over its positive
    subtypes k (n_k = positives of k), so rare subtypes (epidural) are drawn more often
    without repeating a handful of slices endlessly (temper 0 = uniform, 1 = class-balanced).
    Weights sum to 1. With no positives (or no negatives) the weights are uniform.
    """
    if not 0 < positive_fraction < 1:
        raise ValueError("positive_fraction must be in (0, 1)")
    y = np.asarray(labels) > 0
    n = len(y)
    if n == 0:
        return np.zeros(0)
    pos = y.any(1)
    if pos.all() or not pos.any():
        return np.full(n, 1.0 / n)
    counts = np.maximum(y.sum(0), 1).astype(np.float64)
    per_class = counts**-temper  # (6,)
    sub = y[:, : len(CLASSES) - 1]
    w_pos = np.where(sub, per_class[: len(CLASSES) - 1], 0.0).max(1)
    # a slice positive only for "any" (no subtype) still gets the "any" weight
    w_pos = np.where(w_pos > 0, w_pos, per_class[-1])
    w = np.where(pos, w_pos, 0.0)
    w[pos] *= positive_fraction / w[pos].sum()
    w[~pos] = (1 - positive_fraction) / (~pos).sum()
    return w


class WeightedSliceSampler(Sampler[int]):
    """Draws with replacement from ``weights``; shards the draws across DDP ranks.

    Every rank draws the same ``num_samples`` indices from a generator seeded by
    ``seed + epoch`` and keeps every ``world_size``-th, so the ranks together see one
    weighted epoch without overlap. Call ``set_epoch`` each epoch.
    """

    def __init__(
        self,
        weights: np.ndarray,
        num_samples: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        w = np.asarray(weights, np.float64)
        if w.ndim != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be a non-empty 1-D array of non-negative numbers")
        self.weights = torch.from_numpy(w)
        total = num_samples if num_samples is not None else len(w)
        self.per_rank = int(math.ceil(total / world_size))
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        idx = torch.multinomial(
            self.weights, self.per_rank * self.world_size, replacement=True, generator=g
        )
        return iter(idx[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_rank


def split_by_study(
    keys: Sequence[str],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
    strata: Mapping[str, int] | None = None,
) -> list[list[str]]:
    """Split study keys into ``len(fractions)`` disjoint lists, never splitting a group.

    groups: optional key -> patient (or any group) id; all studies of a group land in the
    same split (default: each study is its own group). strata: optional key -> small int
    (e.g. 1 when the study has a bleed); groups are split within each stratum (a group takes
    the largest stratum of its studies) so every split gets its share of positives.
    Deterministic for a seed; the lists keep the input order of ``keys``.
    """
    fr = np.asarray(fractions, np.float64)
    if fr.ndim != 1 or len(fr) == 0 or (fr < 0).any() or abs(fr.sum() - 1) > 1e-6:
        raise ValueError("fractions must be non-negative and sum to 1")
    keys = list(keys)
    if len(set(keys)) != len(keys):
        raise ValueError("study keys must be unique")
    group_of = {k: (groups[k] if groups is not None else k) for k in keys}
    stratum: dict[str, int] = {}
    for k in keys:
        g = group_of[k]
        stratum[g] = max(stratum.get(g, -(2**31)), int(strata[k]) if strata is not None else 0)
    rng = np.random.default_rng(seed)
    split_of: dict[str, int] = {}
    for s in sorted(set(stratum.values())):
        members = sorted(g for g, v in stratum.items() if v == s)
        order = rng.permutation(len(members))
        bounds = np.round(np.cumsum(fr) * len(members)).astype(int)
        for rank, j in enumerate(order):
            split_of[members[j]] = min(int(np.searchsorted(bounds, rank, side="right")),
                                       len(fr) - 1)
    _fill_empty_splits(split_of, fr)
    out: list[list[str]] = [[] for _ in fr]
    for k in keys:
        out[split_of[group_of[k]]].append(k)
    return out


def _fill_empty_splits(split_of: dict[str, int], fr: np.ndarray) -> None:
    """Give each split with a positive fraction at least one group, where there are enough.

    Rounding per stratum can leave a small split empty (10 studies, 5 with a bleed, 80/10/10:
    each stratum's 0.5 of a validation study rounds to 0). The missing split takes one group
    from the split with the most (the last of its groups by id, so a seed still gives one
    answer); splits that are not empty do not change.
    """
    wanted = [j for j in range(len(fr)) if fr[j] > 0]
    if len(split_of) < len(wanted):
        return
    for j in wanted:
        members = {i: sorted(g for g, s in split_of.items() if s == i) for i in range(len(fr))}
        if members[j]:
            continue
        donor = max(range(len(fr)), key=lambda i: (len(members[i]), -i))
        split_of[members[donor][-1]] = j


@dataclass
class EmbeddingTable:
    """Per-slice stage-1 outputs of one split (one file per split).

    embeddings ``(N, D)`` float32, logits ``(N, 6)`` float32, labels ``(N, 6)`` int8
    (-1 unknown), study ``(N,)`` str keys, image_id ``(N,)`` str, slice_index ``(N,)`` int32
    (position in the sorted study).
    """

    embeddings: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    study: np.ndarray
    image_id: np.ndarray
    slice_index: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.embeddings)
        for name in ("logits", "labels", "study", "image_id", "slice_index"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"embedding table column {name} has the wrong length")


def save_embeddings(path: Path, table: EmbeddingTable) -> Path:
    """Write an ``.npz`` (embeddings as float16 to halve the size; no pickled objects)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:  # a file object: np.savez would append ".npz" to a path
        np.savez(
            f,
            embeddings=table.embeddings.astype(np.float16),
            logits=table.logits.astype(np.float32),
            labels=table.labels.astype(np.int8),
            study=np.asarray(table.study, dtype=str),
            image_id=np.asarray(table.image_id, dtype=str),
            slice_index=table.slice_index.astype(np.int32),
        )
    return path


def load_embeddings(path: Path) -> EmbeddingTable:
    """Read a file written by ``save_embeddings`` (``allow_pickle=False``)."""
    with np.load(Path(path), allow_pickle=False) as z:
        return EmbeddingTable(
            embeddings=z["embeddings"].astype(np.float32),
            logits=z["logits"],
            labels=z["labels"],
            study=z["study"],
            image_id=z["image_id"],
            slice_index=z["slice_index"],
        )


class EmbeddingSequenceDataset(Dataset):
    """Studies as sequences: ``ds[i]`` is one study's slices in order.

    Items are dicts: ``emb [S, D]``, ``logits [S, 6]``, ``labels [S, 6]`` float32 tensors,
    ``rows (S,)`` int64 positions in the table, ``key`` str.
    """

    def __init__(self, table: EmbeddingTable) -> None:
        self.table = table
        order = np.lexsort((table.slice_index, table.study))
        studies = table.study[order]
        cuts = np.nonzero(studies[1:] != studies[:-1])[0] + 1
        self.rows = np.split(order, cuts) if len(order) else []
        self.keys = [str(table.study[r[0]]) for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.rows[i]
        t = self.table
        return {
            "emb": torch.from_numpy(np.ascontiguousarray(t.embeddings[r], np.float32)),
            "logits": torch.from_numpy(np.ascontiguousarray(t.logits[r], np.float32)),
            "labels": torch.from_numpy(t.labels[r].astype(np.float32)),
            "rows": torch.from_numpy(r.astype(np.int64)),
            "key": self.keys[i],
        }


def collate_sequences(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pad studies to the longest one: ``emb [B, S, D]``, ``logits``/``labels [B, S, 6]``,
    ``mask [B, S]`` bool (True on real slices), ``lengths (B,)``, ``rows [B, S]`` (-1 on
    padding), ``keys`` list of str."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    b = len(items)
    s = max(int(it["emb"].shape[0]) for it in items)
    d = int(items[0]["emb"].shape[1])
    k = int(items[0]["labels"].shape[1])
    emb = torch.zeros(b, s, d)
    logits = torch.zeros(b, s, k)
    labels = torch.zeros(b, s, k)
    rows = torch.full((b, s), -1, dtype=torch.int64)
    mask = torch.zeros(b, s, dtype=torch.bool)
    for i, it in enumerate(items):
        n = int(it["emb"].shape[0])
        emb[i, :n] = it["emb"]
        logits[i, :n] = it["logits"]
        labels[i, :n] = it["labels"]
        rows[i, :n] = it["rows"]
        mask[i, :n] = True
    return {
        "emb": emb,
        "logits": logits,
        "labels": labels,
        "mask": mask,
        "lengths": mask.sum(1),
        "rows": rows,
        "keys": [str(it["key"]) for it in items],
    }
