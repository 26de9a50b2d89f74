"""Saliency overlays as DICOM Secondary Capture images (highdicom), one per positive subtype.

For each subtype the study is positive for, the slice with the highest probability gets a
Grad-CAM overlay (`hohoho_core.explain`) on its brain-window model input, enlarged for
reading, stored as an RGB Secondary Capture in a new series of the same study. Every
image says "not for clinical use" in its series description and image comments. The
reader never takes these for slices (secondary capture, RGB: `SkipReason.RGB_OR_SECONDARY`).
"""

from __future__ import annotations

from collections.abc import Mapping

import highdicom as hd
import numpy as np
import pydicom
import torch
from pydicom.uid import generate_uid

from hohoho_core.explain import overlay, saliency_map
from hohoho_core.predict import Predictor, StudyPrediction
from hohoho_core.study import Study

__all__ = ["CAPTURE_SERIES_DESCRIPTION", "saliency_captures"]

CAPTURE_SERIES_DESCRIPTION = "HOHOHO saliency (not for clinical use)"
_SERIES_NUMBER = 9902
#: Pixels per model-input pixel in the stored image (128 px input -> 512 px image).
_ZOOM = 4


def _peak_slice(pred: StudyPrediction, k: int) -> int:
    """The positive slice of class ``k`` with the highest probability."""
    prob = np.where(pred.labels[:, k], pred.prob[:, k], -np.inf)
    return int(np.argmax(prob))


def saliency_captures(
    pred: StudyPrediction,
    study: Study,
    headers: Mapping[str, pydicom.Dataset],
    predictor: Predictor,
    *,
    method: str = "gradcam",
    series_uid: str | None = None,
) -> list[hd.sc.SCImage]:
    """One Secondary Capture per positive subtype (none for a negative study).

    ``headers``: the source files' headers by `SliceInfo.source` (`sr.evidence_headers`).
    """
    positive = [k for k, c in enumerate(pred.classes) if pred.summary.positive[c]]
    if not positive:
        return []
    x = predictor.model_input(study)  # what the CNN read (a thin series' slab or reformat)
    series_uid = series_uid or generate_uid()
    out = []
    for n, k in enumerate(positive, 1):
        i = _peak_slice(pred, k)
        ref = headers[study.slices[i].source]
        inp = torch.from_numpy(np.ascontiguousarray(x[i : i + 1], dtype=np.float32))
        sal = saliency_map(predictor.cnn, inp, k, method)
        rgb = overlay(x[i, 0], sal)
        rgb = np.repeat(np.repeat(rgb, _ZOOM, axis=0), _ZOOM, axis=1)
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref,
            pixel_array=rgb,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=_SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=n,
            manufacturer="HOHOHO (research software, not for clinical use)",
            patient_orientation=("L", "P"),
        )
        image.SeriesDescription = CAPTURE_SERIES_DESCRIPTION
        image.ImageComments = (
            f"{pred.classes[k]} {method} saliency, slice {i + 1} of {study.n_slices} "
            f"(p = {pred.prob[i, k]:.2f}); research software, not for clinical use"
        )
        image.BurnedInAnnotation = "NO"
        out.append(image)
    return out
