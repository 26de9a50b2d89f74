"""What a phantom study must contain: the plan, the bleeds, and the generator's constants."""

from __future__ import annotations

from dataclasses import dataclass, field

from hohoho_core.labels import SUBTYPES

#: A slice is positive for a subtype when the subtype covers more than this area (mm^2).
AREA_THRESHOLD_MM2 = 15.0
#: Pixel encodings: unsigned with intercept -1024, signed with intercept 0, RSNA 12-bit quirk.
ENCODINGS: tuple[str, ...] = ("uint16", "int16", "quirk12")
#: Fraction of studies with at least one bleed unless asked otherwise.
DEFAULT_POSITIVE_FRACTION = 0.4

#: Column of each subtype in the ``(S, 5)`` area arrays (``SUBTYPES`` order).
SUBTYPE_COLUMN = {name: i for i, name in enumerate(SUBTYPES)}
#: Root of every UID and image-id hash, so datasets never collide with other generators.
UID_ROOT = "hohoho-synthetic"

# Window tags written per study: single-valued or multi-valued like many RSNA files.
WINDOW_TAGS: tuple[tuple[float | list[float], float | list[float]], ...] = (
    (40.0, 80.0),
    ([40.0, 40.0], [80.0, 80.0]),
    ([40.0, 400.0], [80.0, 2000.0]),
    (35.0, 100.0),
)


@dataclass(frozen=True)
class Bleed:
    """One haemorrhage: its subtype, whether it is subtle, and its shape parameters (mm)."""

    subtype: str
    subtle: bool
    params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyPlan:
    """What a study must contain; everything else is drawn from the study's own seed."""

    subtypes: tuple[str, ...] = ()
    subtle: tuple[bool, ...] = ()
    tilt: bool = False
    encoding: str = "int16"
    n_slices: int = 30
    instance_order: str = "descending"  # "ascending" | "descending" | "shuffled"
    windows: int = 0  # index into WINDOW_TAGS
    pad_fov: bool = False  # circular field of view padded with -2000 (signed only)
    bits12_plain: bool = False  # unsigned with BitsStored 12 and intercept -1024 (no wrap)
    randomise: bool = False  # domain randomisation (synthetic/randomise.py), own RNG stream
    #: Slice spacing (mm) instead of the drawn 3-6 mm (a thin-slice rendering of the plan;
    #: its other draws differ from the plain study's, `dataset.generate_dataset`).
    slice_spacing: float | None = None
