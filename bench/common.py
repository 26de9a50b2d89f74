"""Shared pieces of the benchmarks: timing, ratios, the machine line, FLOPs and result records.

Every timed figure is the median of ``repeats`` calls after ``warmup`` untimed calls
(`time_call`); ratios are plain quotients of figures measured in the same run (`ratio`).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from hohoho_core.system import available_cores

__all__ = [
    "CpuSnapshot",
    "Goal",
    "Row",
    "Section",
    "Timing",
    "check_goal",
    "cnn_flops",
    "compute_floor_s",
    "cpu_snapshot",
    "lstm_flops",
    "machine_info",
    "machine_line",
    "matmul_note",
    "matmul_rates",
    "other_load",
    "ratio",
    "time_call",
]


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated calls (warm-up calls excluded)."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def best(self) -> float:
        return float(min(self.samples))

    @property
    def n(self) -> int:
        return len(self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": self.best, "n": self.n,
                "samples_s": list(self.samples)}


def time_call(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (perf_counter)."""
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing(tuple(samples))


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN when either is missing or the denominator is not > 0."""
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator <= 0:
        return float("nan")
    return float(numerator / denominator)


# --------------------------------------------------------------------------- compute floor


def matmul_rates(n: int = 2048, repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """This machine's fp32 ``n x n`` matrix-product rate in FLOP/s, per GEMM library.

    ``2 n^3`` over the best of ``repeats``, with torch's current thread count (the one
    every other figure uses), for ``torch.mm`` (MKL on x86) and, when it is installed,
    ONNX Runtime's ``MatMul`` (its own MLAS kernels). Both are measured because neither
    is the hardware's rate everywhere: MKL takes its AVX2 code on AMD CPUs, where MLAS
    runs AVX-512 at about twice the rate (measured on a Zen 5 EPYC), so a floor from
    ``torch.mm`` alone would flatter every ratio there. The best (not the median) repeat:
    the floor is what the hardware can do, not what it did on average.
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    timing = time_call(lambda: torch.mm(a, b, out=out), repeats=repeats, warmup=warmup)
    rates = {"torch.mm": 2.0 * n**3 / timing.best}
    run = _onnx_matmul(b.numpy(), torch.get_num_threads())
    if run is not None:
        a_np = a.numpy()
        timing = time_call(lambda: run(a_np), repeats=repeats, warmup=warmup)
        rates["onnxruntime MatMul"] = 2.0 * n**3 / timing.best
    return rates


def _onnx_matmul(b: np.ndarray, threads: int) -> Callable[[np.ndarray], Any] | None:
    """``a -> a @ b`` in an ONNX Runtime session on the CPU, or None without onnxruntime."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    n = b.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(np.ascontiguousarray(b, dtype=np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, onnx.IR_VERSION)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return lambda a: session.run(None, {"a": a})


def matmul_note(rates: dict[str, float], n: int = 2048, repeats: int = 10) -> str:
    """How the floor's rate (the fastest of `matmul_rates`) was measured, each library's rate named (for a table's "how")."""
    each = ", ".join(f"{name} {rate / 1e9:.0f}" for name, rate in rates.items())
    best = max(rates, key=rates.__getitem__)
    return (f"{n}x{n} fp32, best of {repeats}, {torch.get_num_threads()} threads; the "
            f"fastest library here: {best} (GFLOP/s: {each})")


def cnn_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs (2 per multiply-add) of ``model(x)`` counted by torch's ``FlopCounterMode``.

    Counts convolutions and matrix products, the work that sets the floor; pointwise
    operations (ReLU, batch norm, pooling) are not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return int(counter.get_total_flops())


def lstm_flops(lstm: nn.Module, n_steps: int) -> int:
    """FLOPs of every ``nn.LSTM`` inside ``lstm`` over one sequence of ``n_steps``.

    ``FlopCounterMode`` does not see the fused CPU LSTM kernel, so count by hand: each step of
    each layer and direction multiplies the input by ``W_ih [4H, in]`` and the state by
    ``W_hh [4H, H]``, i.e. ``2 (numel(W_ih) + numel(W_hh))`` FLOPs per step.
    """
    total = 0
    for module in lstm.modules():
        if isinstance(module, nn.LSTM):
            for name, p in module.named_parameters():
                if name.startswith("weight_"):
                    total += 2 * p.numel() * n_steps
    return total


def compute_floor_s(flops: float, rate: float) -> float:
    """Seconds the work would take at the measured matrix-multiply rate."""
    return ratio(flops, rate)


# --------------------------------------------------------------------------- records


@dataclass
class Row:
    """One measured figure: ``value`` in ``unit``, how it was measured in ``detail``, and the
    raw timed samples (seconds) behind it when it is a timing."""

    what: str
    value: float | str | None
    unit: str = ""
    detail: str = ""
    samples_s: list[float] = field(default_factory=list)


@dataclass
class Goal:
    """A target from the issue and whether this run met it (``cause`` says why not)."""

    what: str
    measured: float
    op: str  # "<=" or ">="
    limit: float
    unit: str = ""
    met: bool | None = None
    cause: str = ""


def check_goal(
    what: str, measured: float, op: str, limit: float, unit: str = "", cause: str = ""
) -> Goal:
    """Build a `Goal`; ``cause`` (the measured reason) is kept only when the goal is missed.

    A NaN measurement is neither met nor missed (``met`` is None): it was not measured.
    """
    if op not in ("<=", ">="):
        raise ValueError(f"op must be '<=' or '>=', got {op!r}")
    if not math.isfinite(measured):
        return Goal(what, measured, op, limit, unit, None, cause or "not measured")
    met = measured <= limit if op == "<=" else measured >= limit
    return Goal(what, measured, op, limit, unit, met, "" if met else cause)


@dataclass
class Section:
    """What one benchmark section measured."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def add(
        self,
        what: str,
        value: float | str | None,
        unit: str = "",
        detail: str = "",
        samples: Sequence[float] | Timing | None = None,
    ) -> Row:
        if isinstance(samples, Timing):
            samples = samples.samples
        row = Row(what, value, unit, detail, [float(v) for v in samples or ()])
        self.rows.append(row)
        return row

    def goal(self, *args: Any, **kwargs: Any) -> Goal:
        g = check_goal(*args, **kwargs)
        self.goals.append(g)
        return g

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- machine


@dataclass(frozen=True)
class CpuSnapshot:
    """Wall clock, CPU seconds of the whole machine, and CPU seconds of this process."""

    wall: float
    machine_busy: float
    own: float


def cpu_snapshot() -> CpuSnapshot:
    """Read ``/proc/stat`` (busy = user + nice + system + irq + softirq + steal)."""
    busy = float("nan")
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = f.readline().split()[1:]
        ticks = [int(v) for v in fields]
        busy = (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]) / os.sysconf(
            "SC_CLK_TCK"
        )
    except (OSError, ValueError, IndexError):
        pass
    return CpuSnapshot(time.perf_counter(), busy, time.process_time())


def other_load(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """Cores kept busy by *other* processes between two snapshots (NaN off Linux)."""
    wall = after.wall - before.wall
    if wall <= 0:
        return float("nan")
    others = (after.machine_busy - before.machine_busy) - (after.own - before.own)
    return max(0.0, others / wall)



def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> Sequence[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return line.split(":", 1)[1].split()
    except OSError:
        pass
    return ()


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, vector extensions, torch/numpy versions, threads and any GPU."""
    import numpy as np

    flags = set(_cpu_flags())
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "cores": available_cores(),
        "cpu": _cpu_model(),
        "isa": isa,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "gpu": gpu,
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def machine_line(info: dict[str, Any]) -> str:
    """One line for the top of results.md."""
    gpu = info.get("gpu") or "no GPU"
    isa = ", ".join(info.get("isa") or []) or "-"
    load = info.get("load_avg_1min")
    load_text = f"; load average {load:.2f} at start" if isinstance(load, int | float) else ""
    return (
        f"{info['cores']} cores of {info['cpu']} ({isa}); torch {info['torch']} "
        f"({info.get('torch_cpu_capability', '?')} kernels), {info['threads']} threads; "
        f"numpy {info['numpy']}; Python {info['python']}; {gpu}{load_text}"
    )


def stop_process_group(proc: subprocess.Popen[Any]) -> None:
    """Stop a server started in its own process group: SIGTERM, then SIGKILL after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
