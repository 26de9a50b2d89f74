"""How much a busy Python thread slows one CNN batch, eager torch against TorchScript.

In `predict`'s pipeline the studies are read in the main thread while the CNN lanes run
in threads of the same process. Eager torch takes Python's GIL back between operators, so
a lane waits for the reader at every layer; a frozen TorchScript module runs its whole
forward in C++ without the GIL (why `Predictor` runs bf16 that way, `bf16_script`).
This measures one batch of the shipped CNN on one thread, alone and beside a thread that
only runs Python bytecode, for each way of running it, in one run:

    python -m bench.gil_stall [--weights weights] [--batch 16] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.common import machine_info, machine_line
from bench.context import REPO_ROOT
from hohoho_core.predict import Predictor, bf16_script

Runner = Callable[[torch.Tensor], object]


def _busy_python(stop: threading.Event) -> None:
    """Pure bytecode, never releasing the GIL on its own (a reader's Python parts)."""
    n = 0
    while not stop.is_set():
        for i in range(2000):
            n += i * i
    del n


def _median_ms(run: Runner, x: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(x)
        times.append(1000.0 * (time.perf_counter() - t0))
    return statistics.median(times)


def measure(run: Runner, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median ms of one call alone, then beside a busy Python thread."""
    with torch.inference_mode():
        run(x)  # warm-up: first-call graph optimisation and allocations
        alone = _median_ms(run, x, repeats)
        stop = threading.Event()
        busy = threading.Thread(target=_busy_python, args=(stop,), daemon=True)
        busy.start()
        try:
            beside = _median_ms(run, x, repeats)
        finally:
            stop.set()
            busy.join()
    return alone, beside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(REPO_ROOT / "weights"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    torch.set_num_threads(1)  # one lane's share on 2 cores
    pred = Predictor.from_folder(Path(args.weights), precision="fp32", engine="torch")
    twin = pred._infer_cnn
    cfg = pred.preprocess_config
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((args.batch, cfg.channels, cfg.size, cfg.size),
                                    dtype=np.float32))
    x = x.contiguous(memory_format=torch.channels_last)

    def eager_bf16(t: torch.Tensor) -> object:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return twin(t)

    runners: dict[str, Runner] = {"fp32, eager torch": twin}
    onnx = Predictor.from_folder(Path(args.weights), precision="fp32")
    if onnx.engine == "onnxruntime":
        runners["fp32, ONNX Runtime (the fp32 default)"] = onnx._infer_cnn
    runners["bf16, eager autocast"] = eager_bf16
    scripted = bf16_script(twin, cfg.channels, cfg.size)
    if scripted is not None:
        runners["bf16, TorchScript (the bf16 path)"] = scripted
    print(f"{machine_line(machine_info())}; batch {args.batch} at {cfg.size} px, 1 thread, "
          f"median of {args.repeats}")
    print("| CNN | alone, ms | beside a busy Python thread, ms | slowdown |")
    print("| --- | ---: | ---: | ---: |")
    for name, run in runners.items():
        alone, beside = measure(run, x, args.repeats)
        print(f"| {name} | {alone:.0f} | {beside:.0f} | {beside / alone:.2f}x |")


if __name__ == "__main__":
    main()
