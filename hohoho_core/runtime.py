"""Process-wide torch settings, set once by an entry point (CLI, app, training script, bench).

Thread counts, the quantised engine and determinism flags belong to the whole process, so
library objects (`predict.Predictor`, `predict.quantize_int8`) never change them: two
predictors in one process (the app serves many sessions) would otherwise overwrite each
other's settings. An entry point calls `configure_torch` once, before building models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hohoho_core.precision import QUANTIZED_ENGINES
from hohoho_core.system import available_cores

__all__ = [
    "QUANTIZED_ENGINES",
    "TorchSettings",
    "best_quantized_engine",
    "configure_torch",
    "cpu_flags",
]


@dataclass(frozen=True)
class TorchSettings:
    """What `configure_torch` left in effect."""

    threads: int
    deterministic: bool
    quantized_engine: str


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (``avx2``, ``avx512_bf16``, ``amx_bf16``, ...).

    From the ``flags`` line of ``/proc/cpuinfo`` (or the text given); empty where there is
    none (not Linux), which makes `precision.resolve_precision` choose fp32.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def best_quantized_engine() -> str:
    """The preferred int8 engine this torch build supports; RuntimeError when it has none."""
    supported = torch.backends.quantized.supported_engines
    for name in QUANTIZED_ENGINES:
        if name in supported:
            return name
    raise RuntimeError("this torch build has no quantized CPU engine")


def configure_torch(
    threads: int | None = None,
    deterministic: bool = False,
    quantized_engine: str | None = None,
) -> TorchSettings:
    """Set torch's process-wide state once, at an entry point.

    Args:
        threads: intra-op threads; None uses every core this process may run on
            (`system.available_cores`).
        deterministic: True makes cuDNN pick the same algorithms every call (no autotuning),
            so the same input gives the same bits on a GPU.
        quantized_engine: None leaves the int8 engine as it is; "auto" selects
            `best_quantized_engine`; otherwise one of ``torch.backends.quantized
            .supported_engines``. Needed before ``Predictor(precision="int8")``.

    Returns:
        The settings now in effect.
    """
    n = available_cores() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(n)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    if quantized_engine is not None:
        engine = best_quantized_engine() if quantized_engine == "auto" else quantized_engine
        if engine not in torch.backends.quantized.supported_engines:
            raise ValueError(
                f"quantized engine {engine!r} is not in this torch build "
                f"({', '.join(torch.backends.quantized.supported_engines)})"
            )
        torch.backends.quantized.engine = engine
    return TorchSettings(
        threads=torch.get_num_threads(),
        deterministic=bool(torch.backends.cudnn.deterministic),
        quantized_engine=str(torch.backends.quantized.engine),
    )
