"""Which CNN arithmetic runs: fp32, bf16 or int8, and what ``--precision auto`` resolves to.

A faster path is acceptable only where it keeps the model's answers (issue 16): macro F2 on
the weights' held-out test split within `F2_BAR` of fp32 and no probability moved by more
than `DP_BAR`. Those are properties of a weights folder, so the measurements live beside the
weights in ``precision.json`` (written by ``python -m bench.batch``), with the speed of each
path on the CPU class it was measured on.

``auto`` resolves, for a CPU device, to the fastest path that (1) passed both bars, (2) this
CPU runs natively (bf16 needs avx512_bf16 or AMX-bf16; int8 needs a quantised engine) and
(3) was measured faster than fp32 on this CPU class; anything unmeasured stays fp32. So a
folder without the table, another CPU class, or a GPU gets fp32. int8 also needs (4) this
CPU to run the quantisation recipe its check was made with (`int8_recipe`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hohoho_core.atomic import atomic_write_text

__all__ = [
    "DP_BAR",
    "ENGINES",
    "F2_BAR",
    "PRECISIONS",
    "QUANTIZED_ENGINES",
    "TABLE_NAME",
    "VNNI_FLAGS",
    "PathCheck",
    "PrecisionTable",
    "Resolution",
    "cpu_class",
    "int8_recipe",
    "merge_table",
    "natively_supported",
    "read_table",
    "resolve_precision",
    "write_table",
]

#: Concrete CNN arithmetic paths (`predict.Predictor`); "auto" resolves to one of them.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
#: What runs the fp32 CNN on the CPU (`onnx_cnn`); "auto": onnxruntime where installed.
ENGINES: tuple[str, ...] = ("auto", "torch", "onnxruntime")
#: int8 CPU engines in order of preference: "x86" (oneDNN + fbgemm, VNNI/AMX) is the fastest
#: where built; qnnpack is the ARM fallback (`runtime.best_quantized_engine`).
QUANTIZED_ENGINES: tuple[str, ...] = ("x86", "fbgemm", "onednn", "qnnpack")
#: CPU flags whose int8 kernels in torch accumulate straight into 32 bits (no 16-bit
#: step). AVX-VNNI without AVX-512 is left out, as torch's own VNNI check leaves it out.
VNNI_FLAGS = frozenset({"avx512_vnni", "amx_int8"})
TABLE_NAME = "precision.json"
F2_BAR = 0.005  # |macro F2 - fp32 macro F2| on the test split
DP_BAR = 0.02  # max |p - p_fp32| over every slice and class of the test split
_FORMAT = "hohoho-precision"


def cpu_class(flags: Iterable[str]) -> str:
    """The CPU class speed is recorded under, from ``/proc/cpuinfo`` flags."""
    f = set(flags)
    if "amx_bf16" in f:
        return "amx"
    if "avx512_bf16" in f:
        return "avx512_bf16"
    if "avx512f" in f:
        return "avx512"
    if "avx2" in f:
        return "avx2"
    return "other"


def int8_recipe(flags: Iterable[str], engine: str) -> str:
    """The int8 recipe `predict.quantize_int8` uses with this CPU and quantised engine.

    "vnni-minmax8" (activations on 8 bits, min-max ranges) where VNNI sums in 32 bits;
    "torch-default" (torch's qconfig: 7-bit activations, histogram ranges) elsewhere. The
    two move probabilities differently, so an accuracy check holds for its recipe only.
    """
    if engine != "qnnpack" and VNNI_FLAGS & set(flags):
        return "vnni-minmax8"
    return "torch-default"


def natively_supported(path: str, flags: Iterable[str], quantized_engines: Iterable[str]) -> bool:
    """Whether this CPU runs ``path`` in hardware (bf16 elsewhere is emulated: slow)."""
    if path == "fp32":
        return True
    if path == "bf16":
        return bool({"avx512_bf16", "amx_bf16"} & set(flags))
    if path == "int8":
        return any(e in QUANTIZED_ENGINES for e in quantized_engines)
    raise ValueError(f"unknown precision {path!r}")


@dataclass(frozen=True)
class PathCheck:
    """One path measured against fp32 on the weights' test split.

    Attributes:
        macro_f2: slice-level macro F2 at the weights' thresholds.
        f2_delta: ``|macro_f2 - fp32 macro_f2|``.
        max_dp: largest ``|p - p_fp32|`` (final output, every slice and class).
        slices_per_s: end-to-end batch rate per CPU class (`cpu_class`) it was timed on.
        n_slices: test-split slices the comparison with fp32 covered.
        recipe: int8 only: the `int8_recipe` the accuracy was measured with ("" unknown).
    """

    macro_f2: float
    f2_delta: float
    max_dp: float
    slices_per_s: dict[str, float] = field(default_factory=dict)
    n_slices: int = 0
    recipe: str = ""

    @property
    def accepted(self) -> bool:
        return self.f2_delta <= F2_BAR and self.max_dp <= DP_BAR


@dataclass(frozen=True)
class PrecisionTable:
    """Every path's `PathCheck` for one weights folder (``paths["fp32"]`` is the reference)."""

    paths: dict[str, PathCheck]
    test_split: str = ""
    n_slices: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": 1,
            "bars": {"f2_delta": F2_BAR, "max_dp": DP_BAR},
            "test_split": self.test_split,
            "n_slices": self.n_slices,
            "paths": {
                name: {"macro_f2": c.macro_f2, "f2_delta": c.f2_delta, "max_dp": c.max_dp,
                       "accepted": c.accepted, "slices_per_s": dict(c.slices_per_s),
                       "n_slices": c.n_slices, **({"recipe": c.recipe} if c.recipe else {})}
                for name, c in self.paths.items()
            },
        }


def read_table(folder: str | Path) -> PrecisionTable | None:
    """The folder's ``precision.json``, or None when it has none.

    Raises:
        ValueError: the file exists but is not a precision table.
    """
    path = Path(folder) / TABLE_NAME
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != _FORMAT:
            raise ValueError("not a precision table")
        paths = {
            str(name): PathCheck(
                macro_f2=float(p["macro_f2"]), f2_delta=float(p["f2_delta"]),
                max_dp=float(p["max_dp"]),
                slices_per_s={str(k): float(v) for k, v in p.get("slices_per_s", {}).items()},
                n_slices=int(p.get("n_slices", 0)),
                recipe=str(p.get("recipe", "")),
            )
            for name, p in doc["paths"].items()
            if name in PRECISIONS
        }
        return PrecisionTable(paths, str(doc.get("test_split", "")), int(doc.get("n_slices", 0)))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: unreadable precision table ({err})") from None


def merge_table(old: PrecisionTable | None, new: PrecisionTable) -> PrecisionTable:
    """``new``, keeping what ``old`` (the folder's table) measured and ``new`` did not.

    Speeds on other CPU classes are kept. A path's old accuracy check is kept when the new
    one covered fewer slices of the same test split with the same recipe and passed the
    bars: on a CPU that emulates bf16 the bench checks it on a few studies only, and that
    weaker check must not replace a whole split's. A new check that fails the bars
    contradicts the old one and replaces it, as does one on another split (new weights)
    or with another int8 recipe (one recipe per table).
    """
    if old is None:
        return new
    same_split = old.test_split == new.test_split
    paths: dict[str, PathCheck] = {}
    for name, check in new.paths.items():
        before = old.paths.get(name)
        speeds = {**(before.slices_per_s if before else {}), **check.slices_per_s}
        if (before is not None and same_split and before.recipe == check.recipe
                and check.accepted and before.n_slices > check.n_slices):
            check = replace(before, slices_per_s=speeds)
        else:
            check = replace(check, slices_per_s=speeds)
        paths[name] = check
    if same_split:  # a path this run did not score keeps its check
        for name, before in old.paths.items():
            paths.setdefault(name, before)
    return replace(new, paths=paths)


def write_table(folder: str | Path, table: PrecisionTable) -> Path:
    """Write ``precision.json`` into ``folder`` atomically; returns its path."""
    path = Path(folder) / TABLE_NAME
    atomic_write_text(path, json.dumps(table.to_dict(), indent=1) + "\n")
    return path


@dataclass(frozen=True)
class Resolution:
    """The path that runs and why (one line for the CLI and the app)."""

    precision: str
    reason: str

    def describe(self) -> str:
        return f"{self.precision} ({self.reason})"


def resolve_precision(
    requested: str,
    table: PrecisionTable | None,
    flags: Iterable[str],
    quantized_engines: Iterable[str],
    device_type: str = "cpu",
) -> Resolution:
    """``requested`` ("auto" or a path in `PRECISIONS`) -> the path that runs (module docs)."""
    if requested in PRECISIONS:
        return Resolution(requested, "requested")
    if requested != "auto":
        raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}, got {requested!r}")
    if device_type != "cpu":
        return Resolution("fp32", f"auto: on {device_type} only fp32 is measured")
    if table is None or "fp32" not in table.paths:
        return Resolution("fp32", "auto: these weights have no measured precision table")
    flags = set(flags)
    engines = list(quantized_engines)
    klass = cpu_class(flags)
    base = table.paths["fp32"].slices_per_s.get(klass)
    if base is None:
        return Resolution("fp32", f"auto: no speed measured on a {klass} CPU")
    best, best_rate = "fp32", base
    for name, check in table.paths.items():
        rate = check.slices_per_s.get(klass)
        if (name != "fp32" and check.accepted and rate is not None and rate > best_rate
                and natively_supported(name, flags, engines)
                and _same_recipe(name, check, flags, engines)):
            best, best_rate = name, rate
    if best != "fp32":
        return Resolution(best, f"auto: {best_rate / base:.2f}x fp32 on {klass}, within the bars")
    return Resolution("fp32", f"auto: {_why_not(table, klass, flags, engines, base)}")


def _why_not(table: PrecisionTable, klass: str, flags: set[str], engines: list[str],
             base: float) -> str:
    """Why each faster path was passed over, briefly."""
    notes = []
    for name, check in table.paths.items():
        if name == "fp32":
            continue
        if not check.accepted:
            notes.append(f"{name} misses the accuracy bars")
        elif not natively_supported(name, flags, engines):
            notes.append(f"{name} not native on {klass}")
        elif not _same_recipe(name, check, flags, engines):
            notes.append(f"{name} checked with another recipe ({check.recipe or 'unknown'}) "
                         "than this CPU's")
        else:
            notes.append(f"{name} not faster on {klass}")
    return "; ".join(notes) or "no other path measured"


def _same_recipe(name: str, check: PathCheck, flags: set[str], engines: list[str]) -> bool:
    """int8's accuracy holds only for the recipe it was measured with (`int8_recipe`)."""
    if name != "int8":
        return True
    engine = next((e for e in QUANTIZED_ENGINES if e in engines), "")
    return check.recipe == int8_recipe(flags, engine)
