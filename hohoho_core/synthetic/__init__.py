"""Phantom head-CT studies in the RSNA 2019 layout: the project's demo and test data.

Each study is drawn from smooth analytic 3D shapes in head coordinates (mm), rendered slice
by slice at realistic Hounsfield units, and written as one DICOM file per slice with the
header variety real scanners produce (gantry tilt, unsigned/signed pixels, the RSNA 12-bit
wrap quirk, shuffled instance numbers, multi-valued window tags). Bleeds are 3D shapes too;
a slice is labelled positive for a subtype when that subtype covers more than
``AREA_THRESHOLD_MM2`` of it, so labels follow the voxels, and ``any`` is their OR.

Coordinates: patient LPS (x to the patient's left, y posterior, z superior). Head
coordinates ``(u, v, h)``: ``u`` left, ``v`` posterior, both rotated by the study's yaw
about the head centre, and ``h`` height above the foramen magnum. Volumes are float32
``[S, H, W]`` with slice 0 the most inferior.

Modules, in the order data flows: ``plan`` (what a study holds), ``anatomy`` (per-study
random head), ``head`` (per-pixel geometry, per-slice context), ``skull``/``brain``/
``bleeds`` (painters), ``randomise`` (domain randomisation, off by default), ``phantom``
(one slice), ``study`` (one study), ``labelnoise``,
``dataset`` (the RSNA layout on disk), ``writer`` (DICOM files), ``montage``, ``cli``.
Nothing used for inference imports this package; it writes data, it never reads it back
for a prediction.

Run ``python -m hohoho_core.synthetic --out DIR --studies N --seed S`` to write a dataset.
"""

from hohoho_core.synthetic.cli import main
from hohoho_core.synthetic.dataset import SyntheticTruth, generate_dataset
from hohoho_core.synthetic.labelnoise import inject_label_noise
from hohoho_core.synthetic.montage import save_montage, save_randomisation_montage
from hohoho_core.synthetic.plan import (
    AREA_THRESHOLD_MM2,
    DEFAULT_POSITIVE_FRACTION,
    ENCODINGS,
    Bleed,
    StudyPlan,
)
from hohoho_core.synthetic.randomise import NEUTRAL_VARIATION, Variation, draw_variation
from hohoho_core.synthetic.study import SyntheticStudy, make_study, unwrap_quirk
from hohoho_core.synthetic.writer import ct_dataset, stored_values, write_dataset

__all__ = [
    "AREA_THRESHOLD_MM2",
    "DEFAULT_POSITIVE_FRACTION",
    "ENCODINGS",
    "NEUTRAL_VARIATION",
    "Bleed",
    "StudyPlan",
    "SyntheticStudy",
    "SyntheticTruth",
    "Variation",
    "ct_dataset",
    "draw_variation",
    "generate_dataset",
    "inject_label_noise",
    "main",
    "make_study",
    "save_montage",
    "save_randomisation_montage",
    "stored_values",
    "unwrap_quirk",
    "write_dataset",
]
