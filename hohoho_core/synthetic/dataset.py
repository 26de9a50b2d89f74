"""A dataset of phantom studies in the RSNA 2019 layout: plans, image ids, files, labels.

Every random choice comes from its own stream of the dataset seed (``spawn_key`` 0: plans,
1: each study, 2: label noise, 3: instance order, 4: which studies
a fractional ``randomise`` randomises), so a dataset is the same for a seed
whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import generate_uid

from hohoho_core.labels import CLASSES, SUBTYPES
from hohoho_core.rsna_csv import write_rsna_csv
from hohoho_core.synthetic.labelnoise import inject_label_noise
from hohoho_core.synthetic.plan import (
    DEFAULT_POSITIVE_FRACTION,
    UID_ROOT,
    WINDOW_TAGS,
    StudyPlan,
)
from hohoho_core.synthetic.study import MAX_THIN_SLICES, make_study
from hohoho_core.synthetic.writer import ct_dataset, write_dataset

_TILT_FRACTION = 1 / 5
_QUIRK_FRACTION = 1 / 6
_SECOND_SUBTYPE = 0.3
_SUBTLE = 0.3


@dataclass
class SyntheticTruth:
    """What `generate_dataset` wrote.

    Attributes:
        root: the dataset folder.
        truth: one row per slice: image_id, study_uid, series_uid, true_index, z, six clean
            labels (the content of ``truth.csv``).
        labels: index image_id, six int columns: what ``stage_2_train.csv`` says (noisy).
        errors: image_id, class, clean, noisy, kind: every injected label error.
        studies: one row per study: study_uid, series_uid, n_slices, pixel_spacing,
            slice_spacing, tilt_deg, encoding, instance_order, subtypes (";"-joined).
        seconds: wall time of the generation.
    """

    root: Path
    truth: pd.DataFrame
    labels: pd.DataFrame
    errors: pd.DataFrame
    studies: pd.DataFrame
    seconds: float


#: The slice spacing (mm) a forced-spacing dataset scales the planned slice count from.
THICK_MM = 5.0


def _plan_dataset(
    seed: int,
    n_studies: int,
    slices: tuple[int, int],
    positive_fraction: float = DEFAULT_POSITIVE_FRACTION,
) -> list[StudyPlan]:
    """Stratified plans: 40 % positive (by default), 1 in 5 tilted, 1 in 6 with the 12-bit quirk."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    n = n_studies

    def pick(frac: float) -> set[int]:
        k = round(frac * n)
        if n >= 2:
            k = max(k, 1)
        return set(rng.permutation(n)[:k].tolist())

    positives, tilted, quirk = pick(positive_fraction), pick(_TILT_FRACTION), pick(_QUIRK_FRACTION)
    order = list(rng.permutation(len(SUBTYPES)))
    partner = {
        "intraparenchymal": "intraventricular",
        "subdural": "subarachnoid",
        "epidural": "subdural",
        "subarachnoid": "intraventricular",
        "intraventricular": "intraparenchymal",
    }
    plans, j = [], 0
    for i in range(n):
        subtypes: tuple[str, ...] = ()
        if i in positives:
            first = SUBTYPES[order[j % len(order)]]
            j += 1
            subtypes = (first,)
            if rng.random() < _SECOND_SUBTYPE:
                subtypes = (first, partner[first])
        subtle = tuple(bool(rng.random() < _SUBTLE) for _ in subtypes)
        if i in quirk:
            encoding = "quirk12"
        else:
            encoding = "uint16" if rng.random() < 0.5 else "int16"
        plans.append(
            StudyPlan(
                subtypes=subtypes,
                subtle=subtle,
                tilt=i in tilted,
                encoding=encoding,
                n_slices=int(rng.integers(slices[0], slices[1] + 1)),
                instance_order=str(
                    rng.choice(["descending", "ascending", "shuffled"], p=[0.5, 0.3, 0.2])
                ),
                windows=int(rng.integers(0, len(WINDOW_TAGS))),
                pad_fov=encoding == "int16" and bool(rng.random() < 0.3),
                bits12_plain=encoding == "uint16" and bool(rng.random() < 0.4),
            )
        )
    return plans


def _image_ids(seed: int, plans: Sequence[StudyPlan]) -> list[list[str]]:
    """Unique 9-hex-digit RSNA-style ids, deterministic for the seed."""
    seen: set[str] = set()
    out = []
    for i, plan in enumerate(plans):
        ids = []
        # a forced spacing is another series of the exam: its own ids (plain keys unchanged)
        extra = "" if plan.slice_spacing is None else f":spacing {plan.slice_spacing:g}"
        for k in range(plan.n_slices):
            salt = 0
            while True:
                key = f"{UID_ROOT}:{seed}:{i}:{k}:{salt}{extra}".encode()
                hx = hashlib.sha256(key).hexdigest()[:9]
                if hx not in seen:
                    break
                salt += 1
            seen.add(hx)
            ids.append(f"ID_{hx}")
        out.append(ids)
    return out


def _write_study(
    args: tuple[int, int, int, StudyPlan, list[str], str],
) -> list[dict]:
    """Render study ``index`` and write its DICOM files; return its truth rows."""
    seed, index, size, plan, ids, folder = args
    st = make_study(seed, index, size=size, plan=plan)
    uid = [UID_ROOT, str(seed), str(index)]
    study_uid = generate_uid(entropy_srcs=[*uid, "study"])
    if plan.slice_spacing is not None:  # another series of the same exam: new series/SOPs
        uid = [*uid, f"spacing {plan.slice_spacing:g}"]
    series_uid = generate_uid(entropy_srcs=[*uid, "series"])
    n = st.hu.shape[0]
    inst = _instance_numbers(seed, index, n, plan.instance_order)
    enc = _encoding_tags(plan.encoding, plan.bits12_plain)
    wc, ww = WINDOW_TAGS[plan.windows]
    rows = []
    for k in range(n):
        ds = ct_dataset(
            st.hu[k],
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=generate_uid(entropy_srcs=[*uid, "sop", str(k)]),
            position=tuple(float(round(c, 4)) for c in st.positions[k]),
            orientation=st.orientation,
            pixel_spacing=(round(st.pixel_spacing, 6), round(st.pixel_spacing, 6)),
            slice_thickness=st.slice_spacing,
            instance_number=int(inst[k]),
            rescale_slope=1.0,
            patient_name=f"SYNTHETIC^CASE{index:04d}",
            patient_id=f"SYN{index:04d}",
            window_centre=wc,
            window_width=ww,
            **enc,
        )
        if abs(st.tilt_deg) > 0:
            ds.GantryDetectorTilt = f"{st.tilt_deg:.3f}"
        write_dataset(ds, Path(folder) / f"{ids[k]}.dcm")
        row = {
            "image_id": ids[k],
            "study_uid": study_uid,
            "series_uid": series_uid,
            "true_index": k,
            "z": round(float(st.z[k]), 4),
        }
        row.update({c: int(st.labels[k, j]) for j, c in enumerate(CLASSES)})
        row["_tilt"] = st.tilt_deg
        row["_spacing"] = st.slice_spacing
        row["_ps"] = st.pixel_spacing
        rows.append(row)
    return rows


def _instance_numbers(seed: int, index: int, n: int, order: str) -> np.ndarray:
    """InstanceNumber of each slice (slice 0 inferior): ascending, descending or shuffled."""
    order_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, index)))
    if order == "ascending":
        return np.arange(1, n + 1)
    if order == "descending":
        return np.arange(n, 0, -1)
    return order_rng.permutation(n) + 1


def _encoding_tags(encoding: str, bits12_plain: bool) -> dict[str, float | int]:
    """Pixel representation, bits stored and intercept of an encoding (see ``ENCODINGS``)."""
    if encoding == "quirk12":
        return {"pixel_representation": 0, "bits_stored": 12, "rescale_intercept": 0.0}
    if encoding == "uint16":
        return {
            "pixel_representation": 0,
            "bits_stored": 12 if bits12_plain else 16,
            "rescale_intercept": -1024.0,
        }
    return {"pixel_representation": 1, "bits_stored": 16, "rescale_intercept": 0.0}


def generate_dataset(
    out: Path,
    n_studies: int,
    seed: int,
    size: int = 512,
    label_noise: float = 0.0,
    slices: tuple[int, int] = (20, 40),
    workers: int = 1,
    positive_fraction: float = DEFAULT_POSITIVE_FRACTION,
    randomise: bool | float = False,
    slice_spacing: float | None = None,
) -> SyntheticTruth:
    """Write ``n_studies`` phantom studies in the RSNA 2019 layout under ``out``.

    Writes ``stage_2_train.csv`` (``ID,Label``, six rows per image, noisy labels when
    ``label_noise > 0``), ``stage_2_train/ID_<hex>.dcm``, ``truth.csv`` and, with noise,
    ``label_errors.csv``. Deterministic for ``seed`` (and independent of ``workers``).
    ``positive_fraction`` (default 0.4, like the generator's natural mix) lets a training
    set be enriched with bleeds so rare subtypes get enough examples. ``randomise`` turns
    on domain randomisation (`hohoho_core.synthetic.randomise`): anatomy, reconstruction,
    artefacts, hard negatives, blood density and the labelling rule vary per study; a
    fraction in (0, 1) randomises that share of the studies (drawn per study from the seed)
    and leaves the others plain, identical to the same studies of a plain dataset.
    ``slice_spacing`` (mm) renders every study as a thin- (or thick-) slice reconstruction
    of the same planned study: its slice count becomes the planned count times
    `THICK_MM` / spacing (at most `MAX_THIN_SLICES`): another series of the same planned
    exam (same StudyInstanceUID, plan and subtypes; new series, SOP and image ids). Not
    the same volume cut finer: the slice count enters the study's draws, so pose,
    coverage and bleeds are drawn anew (compare such datasets as sets).

    Raises:
        FileExistsError: ``out/stage_2_train`` holds DICOM files of another dataset.
    """
    if n_studies < 1:
        raise ValueError("n_studies must be at least 1")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    if not 8 <= slices[0] <= slices[1] <= 80:
        raise ValueError("slices must satisfy 8 <= low <= high <= 80")
    start = time.perf_counter()
    out = Path(out)
    folder = out / "stage_2_train"
    folder.mkdir(parents=True, exist_ok=True)
    fraction = float(randomise)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"randomise must be a bool or a fraction in [0, 1], got {randomise}")
    plans = _plan_dataset(seed, n_studies, slices, positive_fraction)
    if fraction > 0:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4,)))
        pick = rng.random(n_studies) < fraction if fraction < 1 else np.ones(n_studies, bool)
        plans = [replace(plan, randomise=bool(k)) for plan, k in zip(plans, pick, strict=True)]
    if slice_spacing is not None:
        if not 0.3 <= slice_spacing <= 10.0:
            raise ValueError(f"slice_spacing must be in 0.3..10 mm, got {slice_spacing}")
        plans = [replace(plan, slice_spacing=float(slice_spacing),
                         n_slices=min(MAX_THIN_SLICES, max(8, round(
                             (plan.n_slices - 1) * THICK_MM / slice_spacing) + 1)))
                 for plan in plans]
    ids = _image_ids(seed, plans)
    # Never mix with other files: stale slices would contradict the new label CSV.
    wanted = {f"{i}.dcm" for study_ids in ids for i in study_ids}
    stale = [p.name for p in folder.glob("*.dcm") if p.name not in wanted]
    if stale:
        raise FileExistsError(
            f"{folder} already holds {len(stale)} other DICOM files; choose an empty folder"
        )
    (out / "label_errors.csv").unlink(missing_ok=True)
    jobs = [(seed, i, size, plans[i], ids[i], str(folder)) for i in range(n_studies)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_write_study, jobs))
    else:
        results = [_write_study(job) for job in jobs]
    truth = pd.DataFrame([row for rows in results for row in rows])
    extra = truth[["_tilt", "_spacing", "_ps"]]
    truth = truth.drop(columns=["_tilt", "_spacing", "_ps"])
    clean = truth[list(CLASSES)].to_numpy(np.uint8)
    noise_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    noisy, err = inject_label_noise(
        clean, truth["study_uid"].to_numpy(), truth["true_index"].to_numpy(), label_noise, noise_rng
    )
    errors = pd.DataFrame(
        {
            "image_id": truth["image_id"].to_numpy()[err["row"].to_numpy(int)],
            "class": err["class"].to_numpy(str),
            "clean": err["clean"].to_numpy(int),
            "noisy": err["noisy"].to_numpy(int),
            "kind": err["kind"].to_numpy(str),
        }
    )
    labels = pd.DataFrame(noisy.astype(int), columns=list(CLASSES), index=truth["image_id"])
    labels.index.name = "image_id"
    _write_label_csv(out / "stage_2_train.csv", labels)
    truth.to_csv(out / "truth.csv", index=False)
    if label_noise > 0:
        errors[["image_id", "class", "clean", "noisy"]].to_csv(
            out / "label_errors.csv", index=False
        )
    studies = []
    for i, plan in enumerate(plans):
        rows = truth.index[truth["image_id"].isin(ids[i])]
        first = rows[0]
        present = [c for c in SUBTYPES if truth.loc[rows, c].any()]
        studies.append(
            {
                "study_uid": truth.at[first, "study_uid"],
                "series_uid": truth.at[first, "series_uid"],
                "n_slices": len(rows),
                "pixel_spacing": float(extra.at[first, "_ps"]),
                "slice_spacing": float(extra.at[first, "_spacing"]),
                "tilt_deg": float(extra.at[first, "_tilt"]),
                "encoding": plan.encoding,
                "instance_order": plan.instance_order,
                "subtypes": ";".join(present),
            }
        )
    return SyntheticTruth(
        root=out,
        truth=truth,
        labels=labels,
        errors=errors,
        studies=pd.DataFrame(studies),
        seconds=time.perf_counter() - start,
    )


def _write_label_csv(path: Path, labels: pd.DataFrame) -> None:
    """``ID,Label`` with six rows per image in ``CLASSES`` order, images sorted by id."""
    lab = labels.sort_index()
    write_rsna_csv(path, lab.index.to_numpy(str), lab.to_numpy(), kind="labels")
