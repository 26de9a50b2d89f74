"""Batch prediction at scale (issue 16): one run over a 200-study synthetic RSNA folder.

    python -m bench.batch                 # writes the "batch" section of bench/results.md
                                          # and weights/precision.json (--no-table: not)

For each CNN arithmetic path (fp32, bf16, int8) it runs the real command line,
``python -m hohoho_core predict FOLDER --precision P --workers N``, as a child process and
reads its final progress line (slices per second of the pipeline, after the header scan),
its wall time and the peak memory of its process tree (the command's peak resident set plus
each reader process's private pages; see `run_cli`).
In the same run it times the CNN alone (`Predictor.predict_stream`'s own CNN timing on model
inputs held in memory, batched exactly as the command batches them) and the fp32 compute
floor (FLOPs / this machine's best fp32 GEMM rate, `bench.common.matmul_rates`), and scores
each path against fp32 on the shipped weights' synthetic test split (macro F2 and the largest
probability move). The rule of `hohoho_core.precision` then
decides the default, and the table it reads is written beside the weights.

bf16 runs emulated (about 6x slower than fp32) on CPUs without avx512_bf16/AMX: there it is
timed and scored on the first ``--bf16-studies`` studies only, which the rows say.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from bench.common import (
    Section,
    Timing,
    cnn_flops,
    compute_floor_s,
    cpu_snapshot,
    machine_info,
    machine_line,
    matmul_note,
    matmul_rates,
    other_load,
    ratio,
)
from bench.context import FULL, REPO_ROOT, SHIPPED_WEIGHTS, BenchContext, generate_once
from bench.int8 import test_split_root
from bench.report import render_markdown
from hohoho_core.batch import PreparedStudy, default_lanes, default_workers, prepared_studies
from hohoho_core.dicom import scan_source
from hohoho_core.evaluate import predict_index, score
from hohoho_core.precision import (
    DP_BAR,
    F2_BAR,
    PRECISIONS,
    PathCheck,
    PrecisionTable,
    cpu_class,
    int8_recipe,
    merge_table,
    read_table,
    resolve_precision,
    write_table,
)
from hohoho_core.predict import CnnTiming, Predictor
from hohoho_core.rsna import build_index
from hohoho_core.runtime import configure_torch, cpu_flags
from hohoho_core.system import available_cores
from hohoho_core.weights import load_weights

TITLE = "9. Batch prediction (200-study folder)"
GOAL_EFFICIENCY = 0.9  # pipeline rate / CNN-alone rate
GOAL_FLOOR = 1.5  # default path's time per slice / fp32 compute floor per slice
GOAL_PEAK_GB = 2.0


def _children_cpu_s() -> float:
    """CPU seconds of this process's finished (waited-for) descendants."""
    t = os.times()
    return t.children_user + t.children_system


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="batch prediction bench -> bench/results.md")
    p.add_argument("--work", type=Path, default=REPO_ROOT / "data" / "bench")
    p.add_argument("--studies", type=int, default=200)
    p.add_argument("--seed", type=int, default=2030)
    p.add_argument("--size", type=int, default=256, help="phantom size in px (the test "
                   "split's; the demo's 512 px took too long to generate here)")
    p.add_argument("--workers", type=int, default=None,
                   help="reader processes (default: predict's default for this machine)")
    p.add_argument("--lanes", type=int, default=None,
                   help="CNN lanes of the command (default: predict's default for this machine)")
    p.add_argument("--bf16-studies", type=int, default=5,
                   help="studies bf16 runs on where it is emulated (no avx512_bf16/AMX)")
    p.add_argument("--other-studies", type=int, default=20,
                   help="studies of the folder the non-default paths run on end to end "
                   "(0: all); the default path always runs on the whole folder")
    p.add_argument("--cnn-studies", type=int, default=5,
                   help="studies of the folder held in memory to time the CNN alone")
    p.add_argument("--split-studies", type=int, default=20,
                   help="score every path on the test split's first N series (0: the whole "
                   "split, 100 series, about 3,000 slices per path)")
    p.add_argument("--repeats", type=int, default=3,
                   help="end-to-end runs of each path, each judged against the CNN alone "
                   "timed just before and after it; the median run is reported")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench")
    p.add_argument("--no-table", action="store_true",
                   help="do not write weights/precision.json")
    return p


# --------------------------------------------------------------------------- measurements


def _tree_pids(pid: int) -> list[int]:
    """``pid`` and every live descendant (Linux /proc)."""
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(k) for k in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def _private_bytes(pid: int) -> int | None:
    """Resident pages of ``pid`` that no other process maps (smaps_rollup Private_*), bytes.

    A forked reader inherits the parent's pages; its own resident set (and high-water mark)
    counts them all, though they stay shared with the command."""
    try:
        total = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
        return total
    except (OSError, ValueError):
        return None


#: Seconds between looks at the reader processes' private pages. One look reads
#: smaps_rollup, which walks the page tables: 28 ms of CPU per look at the command's size
#: (2-core EPYC), a fifth of a core at the 10 looks a second used before, taken from the run
#: being measured. With no reader process nothing is looked at during the run.
SAMPLE_S = 2.0


def run_cli(data: Path, weights: Path, out: Path, precision: str,
            workers: int, engine: str = "auto", lanes: int = 1) -> dict[str, Any]:
    """The real command as a child process: wall time, pipeline rate, peak memory.

    Peak memory: the command's peak resident set (``ru_maxrss`` from ``wait4``: the largest
    of the command and its reaped children, which is the command, as it holds the model)
    plus each reader process's largest private resident size seen (every `SAMPLE_S`; its
    shared pages are the command's, counted there). A reader's growth between two looks can
    be missed; its memory is bounded by its queue (``prefetch`` studies). The command is
    started through `bench/peak_rss.py`: started from this process, which holds several
    models, its ``ru_maxrss`` would start at this process's size.
    """
    cmd = [sys.executable, "-m", "hohoho_core", "predict", str(data), "--weights", str(weights),
           "--out", str(out), "--precision", precision, "--workers", str(workers),
           "--engine", engine, "--lanes", str(lanes), "--progress-every", "1e9"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    fd, name = tempfile.mkstemp(prefix="hohoho_rss_")
    os.close(fd)
    rss_file = Path(name)
    try:
        return _run_measured(cmd, env, rss_file, precision, workers)
    finally:  # also when the command could not start or the bench is interrupted
        rss_file.unlink(missing_ok=True)


def _run_measured(cmd: list[str], env: dict[str, str], rss_file: Path, precision: str,
                  workers: int) -> dict[str, Any]:
    """`run_cli`'s work: the command through `bench/peak_rss.py`, which writes its peak
    resident set (KiB) into ``rss_file``."""
    launcher = [sys.executable, str(Path(__file__).with_name("peak_rss.py")), str(rss_file)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(launcher + cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    private: dict[int, int] = {}
    texts: dict[str, str] = {"out": "", "err": ""}

    def drain(key: str, stream: IO[str]) -> None:
        try:
            texts[key] = stream.read()
        except (OSError, ValueError) as err:  # keep going: the exit status tells the rest
            texts[key] = f"(could not read: {err})"
        finally:
            stream.close()

    pipes = [threading.Thread(target=drain, args=(k, f), daemon=True)
             for k, f in (("out", proc.stdout), ("err", proc.stderr))]
    for t in pipes:
        t.start()
    while any(t.is_alive() for t in pipes):  # pipes open: the command runs
        if workers:
            # The tree is the launcher, the command, then the command's readers.
            for p in _tree_pids(proc.pid)[2:]:
                seen = _private_bytes(p)
                if seen is not None:
                    private[p] = max(private.get(p, 0), seen)
        next(t for t in pipes if t.is_alive()).join(SAMPLE_S)
    for t in pipes:
        t.join()
    proc.wait()
    wall = time.perf_counter() - t0
    stdout, stderr = texts["out"], texts["err"]
    maxrss_kib = int(rss_file.read_text(encoding="utf-8") or 0)
    peak = maxrss_kib * 1024 + sum(private.values())  # ru_maxrss: KiB on Linux
    if proc.returncode != 0:
        raise RuntimeError(f"predict --precision {precision} failed: {stderr[-800:]}")
    last = [ln for ln in stderr.splitlines() if ln.startswith("predict: ")][-1]
    rate = float(re.search(r"([\d.]+) slices/s", last).group(1))  # type: ignore[union-attr]
    slices = int(re.search(r"([\d,]+) slices", last).group(1).replace(",", ""))  # type: ignore[union-attr]
    ran = re.search(r"precision: (\S+)", stdout + stderr)
    # The command's own account of its CNN passes, over the same seconds as ``rate``.
    cnn = re.search(r"CNN ([\d.]+)% of the time, ([\d.]+) slices/s", last)
    return {"wall_s": wall, "rate": rate, "slices": slices, "peak_bytes": peak,
            "cnn_share": float(cnn.group(1)) / 100 if cnn else None,
            "cnn_rate_in_run": float(cnn.group(2)) if cnn else None,
            "progress": last, "ran": ran.group(1) if ran else "?", "stdout": stdout.strip()}


def subset_folder(data: Path, n_studies: int, work: Path) -> Path:
    """The first ``n_studies`` series of ``data`` as an RSNA folder of hard links."""
    target = work / f"{data.name}_first{n_studies}"
    images = target / "stage_2_train"
    if images.is_dir() and any(images.iterdir()):
        return target
    images.mkdir(parents=True, exist_ok=True)
    with scan_source(data) as scan:
        series = scan.loadable_series()[:n_studies]
        # The headers name each series' files; the study objects carry their sources.
        keep = {(s.study_uid, s.series_uid) for s in series}
        for study in scan.iter_studies(skip=lambda a, b: (a, b) not in keep):
            for info in study.slices:
                name = Path(info.source).name
                os.link(data / "stage_2_train" / name, images / name)
    return target


def cnn_inputs(data: Path, predictor: Predictor, n: int) -> list[np.ndarray]:
    """Model inputs of the first ``n`` studies of ``data``, held in memory."""
    out = []
    with scan_source(data) as scan:
        for study in scan.iter_studies():
            out.append(predictor.preprocess(study))
            if len(out) == n:
                break
    return out


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block (the command's setting for
    what is built or timed there: an ONNX Runtime session takes torch's count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reading_rate(folder: Path, predictor: Predictor, threads: int) -> tuple[float, int]:
    """(slices per second, slices) of reading and preprocessing ``folder`` in this process
    with ``threads`` torch threads, after its header scan: `batch.prepared_studies` without
    reader processes, the code both a reader process (1 thread) and the command's own
    in-process reading (all its threads) run. Best of three passes after one to warm up."""
    with torch_threads(threads), scan_source(folder) as scan:
        jobs = [(s.study_uid, s.series_uid) for s in scan.loadable_series()]
        cfg = predictor.preprocess_config

        def one_pass() -> tuple[float, int]:
            t0, n = time.perf_counter(), 0
            for item in prepared_studies(scan, jobs, cfg, workers=0):
                n += 0 if item.x is None else len(item.x)
            return time.perf_counter() - t0, n

        one_pass()
        seconds, n = min(one_pass() for _ in range(3))
    return n / seconds, n


def cnn_alone_rate(predictor: Predictor, inputs: Sequence[np.ndarray],
                   earlier: Timing | None = None, threads: int | None = None
                   ) -> tuple[float, Timing]:
    """Slices per second of the CNN alone over ``inputs`` held in memory, batched exactly as
    the command batches them (`Predictor.predict_stream`: full batches across studies, the
    last one padded), timed by the stream's own `CnnTiming` (CNN passes only): the median of
    three passes after one to warm up, pooled with ``earlier`` passes (the same timing taken
    before the end-to-end run: this machine's speed drifts by up to a fifth between minutes).
    ``threads``: torch's threads meanwhile (each lane's, for a predictor with lanes)."""
    items = [PreparedStudy(i, f"1.{i}", f"1.{i}.1", [f"ID_{i}_{j}" for j in range(len(x))], x)
             for i, x in enumerate(inputs)]
    # Slices through the CNN, the last batch's padding included: 145 held slices fill 10
    # batches of 16, a tenth of them padding, where a 5,949-slice run pads 15 slices.
    b = predictor.batch_size
    n = -(-sum(len(x) for x in inputs) // b) * b

    def cnn_seconds() -> float:
        timing = CnnTiming()
        for _ in predictor.predict_stream(items, timing=timing):
            pass
        return timing.seconds

    with torch_threads(threads or torch.get_num_threads()):
        cnn_seconds()  # warm-up
        t = Timing(tuple(cnn_seconds() for _ in range(3)))
    if earlier is not None:
        t = Timing(earlier.samples + t.samples)
    return n / t.median, t


def split_scores(predictors: dict[str, Predictor], root: Path, subset: dict[str, int],
                 limit: int | None = None) -> dict[str, dict[str, float]]:
    """Macro F2 of each path and its largest probability move from fp32, on the test split.

    ``subset[name]``: only the split's first that many series (emulated bf16); fp32 is
    compared on the same series. ``limit``: the first that many series for every path.
    """
    table = build_index(root, workers=1, progress=False).table
    series = list(dict.fromkeys(zip(table["study_uid"], table["series_uid"], strict=True)))
    if limit is not None:
        table = _first_series(table, series, limit)
    ref = predict_index(predictors["fp32"], root, table)
    out: dict[str, dict[str, float]] = {}
    for name, predictor in predictors.items():
        n = subset.get(name)
        sub = table
        if n is not None:
            sub = _first_series(table, series, n)
        p = ref if name == "fp32" else predict_index(predictor, root, sub)
        mask = np.isin(ref.image_ids, p.image_ids)
        ref_prob = ref.prob[mask]
        order = {i: k for k, i in enumerate(ref.image_ids[mask])}
        ref_prob = ref_prob[[order[i] for i in p.image_ids]]
        thr = predictor.thresholds
        f2 = score(p.labels, p.prob, thr, p.study_ids)["slice"]["macro"]
        ref_labels = ref.labels[mask][[order[i] for i in p.image_ids]]
        f2_ref = score(ref_labels, ref_prob, predictors["fp32"].thresholds,
                       p.study_ids)["slice"]["macro"]
        out[name] = {"macro_f2": float(f2), "f2_delta": abs(float(f2) - float(f2_ref)),
                     "max_dp": float(np.abs(p.prob - ref_prob).max()), "n_slices": len(p),
                     "n_series": len(set(p.study_ids.tolist()))}
    return out


def _first_series(table: Any, series: list[tuple[str, str]], n: int) -> Any:
    keep = set(series[:n])
    return table[[k in keep for k in zip(table["study_uid"], table["series_uid"], strict=True)]]


# --------------------------------------------------------------------------- the section


def run(args: argparse.Namespace) -> Section:
    threads = available_cores()
    flags = cpu_flags()
    klass = cpu_class(flags)
    workers = default_workers(threads) if args.workers is None else args.workers
    lanes = default_lanes(threads) if args.lanes is None else args.lanes
    lane_threads = max(1, threads // lanes)
    sec = Section("batch", TITLE)
    weights = SHIPPED_WEIGHTS
    cnn, _, config = load_weights(weights)
    size = config.preprocess.size
    work = Path(args.work)
    data = generate_once(work / f"batch_{args.studies}x{args.size}_seed{args.seed}",
                         args.studies, args.seed, args.size, (20, 40), workers=1)
    ctx = BenchContext(FULL, work, threads)
    test_root = test_split_root(ctx, config.data or {})
    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(flags))
    bf16_data = data if native_bf16 else subset_folder(data, args.bf16_studies, work)
    other_data = (data if args.other_studies == 0
                  else subset_folder(data, args.other_studies, work))
    sec.params.update({
        "machine": machine_line(machine_info()),
        "model": f"shipped weights/ ({config.arch}, {size} px input)",
        "folder": f"{args.studies} synthetic studies, {args.size} px, 20-40 slices "
                  f"(python -m hohoho_core.synthetic --studies {args.studies} --seed "
                  f"{args.seed} --size {args.size})",
        "command": f"python -m hohoho_core predict FOLDER --precision P --workers {workers} "
                   f"--lanes {lanes}",
        "threads": f"{lanes} CNN lane(s) of {lane_threads} torch thread(s) in the command "
                   f"({threads} usable cores), {workers} reader process(es)",
        "CPU class": klass,
        "load average at start": f"{os.getloadavg()[0]:.2f}",
    })

    # The fp32 compute floor per slice, as in section 1: FLOPs / the best GEMM rate here.
    rates = matmul_rates()
    rate = max(rates.values())
    x16 = torch.rand(16, config.preprocess.channels, size, size)
    flops_slice = cnn_flops(cnn.eval(), x16) / 16
    floor_slice = compute_floor_s(flops_slice, rate)
    sec.add("fp32 matmul rate", rate / 1e9, "GFLOP/s", matmul_note(rates))
    sec.add("compute floor per slice", floor_slice * 1e3, "ms",
            f"CNN {flops_slice / 1e9:.2f} GFLOP/slice / matmul rate; "
            f"{1 / floor_slice:.0f} slices/s")

    # One lane of every thread: the F2 scoring, and the CNN alone as it ran before lanes.
    predictors = {p: Predictor.from_folder(weights, precision=p) for p in PRECISIONS}
    # The command's lanes, each with its share of the threads (built as the command builds
    # them: an ONNX Runtime session takes torch's thread count).
    with torch_threads(lane_threads):
        laned = ({p: Predictor.from_folder(weights, precision=p, lanes=lanes)
                  for p in PRECISIONS} if lanes > 1 else predictors)
    sec.params["fp32 CNN engine"] = _engine_line(predictors["fp32"].engine)
    held = cnn_inputs(data, predictors["fp32"], args.cnn_studies)
    # Reading costs CPU the CNN could have had: the measured ceiling of the pipeline's
    # efficiency on these cores is t_cnn / (t_cnn + t_read / cores) with reader processes
    # (one thread each), t_cnn / (t_cnn + t_read) when the command reads between batches
    # (with its own threads, as measured here).
    read_threads = 1 if workers else lane_threads
    read_rate, n_read = reading_rate(subset_folder(data, args.cnn_studies, work),
                                     predictors["fp32"], read_threads)
    sec.add("reading + preprocessing alone", read_rate, "slices/s",
            f"{n_read} slices of the folder's first {args.cnn_studies} studies, after the "
            f"header scan, {read_threads} torch thread(s): "
            + ("what each reader process does" if workers else
               "what the command's main thread does while the lanes run the CNN" if lanes > 1
               else "what the command does between the CNN's batches")
            + "; best of 3 passes after one to warm up")
    measured: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in PRECISIONS:
            folder = {"fp32": data, "bf16": bf16_data}.get(name, other_data)
            inputs = held if (name != "bf16" or native_bf16) else held[:2]
            _, before = cnn_alone_rate(laned[name], inputs, threads=lane_threads)
            _, before_one = cnn_alone_rate(predictors[name], inputs, threads=threads)
            # Each end-to-end run is judged against the CNN alone timed just before and
            # just after it, and the run with the median ratio is the one reported: this
            # host's speed drifts by a tenth or more between minutes, and a ratio of
            # neighbouring timings drifts less than one of timings minutes apart.
            runs = []
            for r in range(args.repeats):
                e2e = run_cli(folder, weights, Path(tmp) / f"{name}_{r}.csv", name, workers,
                              lanes=lanes)
                alone_lanes, t_lanes = cnn_alone_rate(laned[name], inputs, before,
                                                      threads=lane_threads)
                alone_one, t_one = cnn_alone_rate(predictors[name], inputs, before_one,
                                                  threads=threads)
                # The goal's denominator is the faster way to run the CNN alone, so that
                # lanes cannot flatter the efficiency by slowing the reference down.
                alone, t_alone = max((alone_lanes, t_lanes), (alone_one, t_one),
                                     key=lambda pair: pair[0])
                runs.append({"e2e": e2e, "alone": alone, "alone_lanes": alone_lanes,
                             "alone_one_lane": alone_one, "t_alone": t_alone,
                             "efficiency": ratio(e2e["rate"], alone)})
                # The passes after this run are the passes before the next one.
                before = Timing(t_lanes.samples[before.n:])
                before_one = Timing(t_one.samples[before_one.n:])
            # A run without a usable ratio (no CNN-alone rate) cannot be the median run.
            by_eff = sorted((m for m in runs if math.isfinite(m["efficiency"])),
                            key=lambda m: m["efficiency"]) or runs
            mid = by_eff[(len(by_eff) - 1) // 2]  # the median run (the lower of two)
            e2e, alone, t_alone = mid["e2e"], mid["alone"], mid["t_alone"]
            alone_lanes, alone_one = mid["alone_lanes"], mid["alone_one_lane"]
            measured[name] = {"e2e": e2e, "alone": alone, "alone_lanes": alone_lanes,
                              "alone_one_lane": alone_one,
                              "efficiencies": [m["efficiency"] for m in runs],
                              "peak_bytes_max": max(m["e2e"]["peak_bytes"] for m in runs)}
            # Kept as it comes: a failure later in the run loses no measured figure.
            (work / "batch_raw.json").write_text(json.dumps(measured, indent=1, default=str))
            n_alone = sum(len(x) for x in inputs)
            where = (f"{args.studies} studies" if folder == data
                     else f"the folder's first {args.bf16_studies} studies (bf16 emulated here)"
                     if folder == bf16_data else
                     f"the folder's first {args.other_studies} studies")
            sec.add(f"{name}: end to end", e2e["rate"], "slices/s",
                    f"{e2e['slices']:,} slices, {where}; pipeline after the header scan "
                    f"(whole command {e2e['wall_s']:.0f} s incl. start-up and scan: "
                    f"{e2e['slices'] / e2e['wall_s']:.1f} slices/s)")
            both = ("" if lanes == 1 else
                    f"; the faster of {lanes} lanes of {lane_threads} thread(s), as the "
                    f"command runs it ({alone_lanes:.0f}), and one lane of {threads} threads "
                    f"({alone_one:.0f})")
            sec.add(f"{name}:   CNN alone", alone, "slices/s",
                    f"CNN passes of predict_stream over {n_alone} slices held in memory, batched as "
                    "predict batches them (per slice through the CNN, the last batch's padding "
                    "included), median of 6 passes "
                    "(3 before and 3 after the end-to-end run, each after one to warm up)"
                    + both, samples=t_alone)
            # Reader processes can spread reading over every core, and with lanes the main
            # thread reads while they run: both take their CPU from the CNN's. With one lane
            # reading runs between the CNN's batches at the rate measured above.
            ceiling = ((1 / alone) / (1 / alone + 1 / (read_rate * threads))
                       if workers or lanes > 1
                       else (1 / alone) / (1 / alone + 1 / read_rate))
            measured[name]["ceiling"] = ceiling
            effs = ", ".join(f"{e:.3f}" for e in measured[name]["efficiencies"])
            sec.add(f"{name}:   pipeline efficiency", ratio(e2e["rate"], alone), "x",
                    f"end to end / CNN alone; the ceiling on {threads} cores, where reading "
                    f"takes its CPU from the CNN: {ceiling:.2f}"
                    + ("" if workers or lanes > 1 else " (reading between batches)")
                    + (f"; the median of {len(runs)} end-to-end runs, each against the CNN "
                       f"alone timed just before and after it ({effs}); the rows of this "
                       "path are that run's" if len(runs) > 1 else ""))
            if e2e["cnn_rate_in_run"]:
                in_run = e2e["cnn_rate_in_run"]
                measured[name]["in_run"] = in_run
                sec.add(f"{name}:   CNN inside the run", in_run, "slices/s",
                        "the command's own timing of its CNN passes (slices / seconds in the "
                        f"forward passes), over the same seconds as the end-to-end rate: "
                        f"{ratio(in_run, alone):.2f}x the CNN alone above")
                sec.add(f"{name}:   pipeline efficiency, same run", e2e["cnn_share"], "x",
                        "share of the pipeline's time spent in the CNN = end to end / CNN "
                        "inside the run; free of the machine's drift between separate timings, "
                        "but blind to a CNN that runs slower inside the pipeline, so shown "
                        "beside the goal's figure, not instead of it")
            sec.add(f"{name}:   time per slice / fp32 floor",
                    ratio(1.0 / e2e["rate"], floor_slice), "x")
            sec.add(f"{name}:   peak memory", measured[name]["peak_bytes_max"] / 2**30, "GiB",
                    "peak resident set of the command plus each reader process's largest "
                    "private resident size (its shared pages are the command's)"
                    + (f"; the largest of the {len(runs)} runs" if len(runs) > 1 else ""))

        # The other choice of reader processes, fp32 on the same folder, in the same run:
        # what `default_workers` decides between on this machine.
        alt = 1 if workers == 0 else 0
        alt_e2e = run_cli(data, weights, Path(tmp) / "fp32_alt.csv", "fp32", alt, lanes=lanes)
        measured["fp32"]["e2e_alt"] = {"workers": alt, **alt_e2e}
        sec.add(f"fp32: end to end with {alt} reader process(es)", alt_e2e["rate"], "slices/s",
                f"the same {alt_e2e['slices']:,} slices, for comparison: "
                f"{ratio(alt_e2e['rate'], measured['fp32']['e2e']['rate']):.2f}x the default "
                f"({workers} reader process(es) on {threads} cores)")

        # The other choice of lanes, fp32 on the same folder in the same run: what lanes buy.
        alt_lanes = 1 if lanes > 1 else default_lanes(max(2, threads))
        lanes_e2e = run_cli(data, weights, Path(tmp) / "fp32_lanes.csv", "fp32", workers,
                            lanes=alt_lanes)
        measured["fp32"]["e2e_lanes_alt"] = {"lanes": alt_lanes, **lanes_e2e}
        sec.add(f"fp32: end to end with {alt_lanes} CNN lane(s)", lanes_e2e["rate"], "slices/s",
                f"the same {lanes_e2e['slices']:,} slices, for comparison: the default "
                f"({lanes} lane(s)) ran {ratio(measured['fp32']['e2e']['rate'], lanes_e2e['rate']):.2f}x "
                "as fast")

        # The same fp32 arithmetic with torch running the CNN instead of ONNX Runtime, on
        # the same folder in the same run: what the engine buys.
        if predictors["fp32"].engine != "torch":
            with torch_threads(lane_threads):
                in_torch = Predictor.from_folder(weights, precision="fp32", engine="torch",
                                                 lanes=lanes)
            torch_alone, t_torch = cnn_alone_rate(in_torch, held, threads=lane_threads)
            torch_e2e = run_cli(data, weights, Path(tmp) / "fp32_torch.csv", "fp32", workers,
                                engine="torch", lanes=lanes)
            measured["fp32"]["torch"] = {"e2e": torch_e2e, "alone": torch_alone}
            default_rate = measured["fp32"]["e2e"]["rate"]
            sec.add("fp32 run by torch: end to end", torch_e2e["rate"], "slices/s",
                    f"the same {torch_e2e['slices']:,} slices with --engine torch, for "
                    f"comparison: the default ({predictors['fp32'].engine}) ran "
                    f"{ratio(default_rate, torch_e2e['rate']):.2f}x as fast")
            sec.add("fp32 run by torch:   CNN alone", torch_alone, "slices/s",
                    f"in the command's {lanes} lane(s), median of 3 passes: the default's CNN "
                    "alone is "
                    f"{ratio(measured['fp32']['alone'], torch_alone):.2f}x this",
                    samples=t_torch)
            sec.add("fp32 run by torch:   time per slice / fp32 floor",
                    ratio(1.0 / torch_e2e["rate"], floor_slice), "x")

    subset = {} if native_bf16 else {"bf16": args.bf16_studies}
    scores = (split_scores(predictors, test_root, subset, args.split_studies or None)
              if test_root is not None else {})
    for name, s in scores.items():
        sec.add(f"{name}: macro F2 on the test split", s["macro_f2"], "",
                f"slice level, {s['n_slices']} slices of {s['n_series']} series, the weights' "
                f"thresholds; |dF2| vs fp32 on the same slices {s['f2_delta']:.4f}; max |dp| "
                f"{s['max_dp']:.3f}")

    # Another machine's speeds, and checks over more slices than this run's, are kept.
    table = merge_table(read_table(weights), PrecisionTable(
        {name: PathCheck(scores[name]["macro_f2"], scores[name]["f2_delta"],
                         scores[name]["max_dp"], {klass: measured[name]["e2e"]["rate"]},
                         int(scores[name]["n_slices"]),
                         recipe=(int8_recipe(flags, torch.backends.quantized.engine)
                                 if name == "int8" else ""))
         for name in PRECISIONS if name in scores},
        test_split=test_root.name if test_root is not None else "",
        n_slices=int(scores["fp32"]["n_slices"]) if "fp32" in scores else 0,
    ))
    chosen = resolve_precision("auto", table, flags, torch.backends.quantized.supported_engines)
    if not args.no_table and scores:
        path = write_table(weights, table)
        sec.notes.append(f"Wrote {path.relative_to(REPO_ROOT)}: `--precision auto` reads it.")
    sec.add("--precision auto here", chosen.precision, "", chosen.reason)
    default = measured[chosen.precision]
    # The goal is end to end / CNN alone, timed just before and after each end-to-end run
    # (the median of --repeats runs). The same-run share (no drift between timings) is
    # shown beside it, not used instead: it cannot see a CNN that runs slower inside the
    # pipeline than alone.
    eff = ratio(default["e2e"]["rate"], default["alone"])
    share = default["e2e"].get("cnn_share")
    alt_x = ratio(measured["fp32"]["e2e_alt"]["rate"], measured["fp32"]["e2e"]["rate"])
    x_floor = ratio(1.0 / default["e2e"]["rate"], floor_slice)
    peak = max(m.get("peak_bytes_max", m["e2e"]["peak_bytes"]) for m in measured.values()) / 2**30
    sec.goal(f"pipeline efficiency ({chosen.precision}, the default here)", eff, ">=",
             GOAL_EFFICIENCY, "x",
             cause=(f"the {workers} reader process(es) share the {threads} cores with the "
                    "CNN's threads (at a lower priority)" if workers else
                    f"on {threads} cores the main thread reads and preprocesses studies while "
                    f"{lanes} lanes run the CNN, on the same cores (with a reader process "
                    f"instead the run went {alt_x:.2f}x as fast, row above)" if lanes > 1 else
                    f"on {threads} cores studies are read and preprocessed between the CNN's "
                    f"batches (with a reader process instead the run went {alt_x:.2f}x as "
                    "fast, row above)")
             + ": reading and preprocessing are not free here, and their CPU alone caps the "
               f"efficiency at {default['ceiling']:.2f} on this machine"
             + (f"; inside the run the CNN took {share:.1%} of the pipeline's time (same-run "
                f"efficiency {share:.3f}), and ran at {ratio(default['in_run'], default['alone']):.2f}x "
                "its separate timing: the rest of the gap is the CNN itself running slower "
                "in the run than in the timings before and after it (this machine's drift, "
                "or the pipeline's effect on the CNN: the two are not told apart here)"
                if share and default.get("in_run") else "")
             + (f"; the goal divides by one lane of {threads} threads, the faster layout "
                f"alone ({default['alone_one_lane']:.0f} slices/s), while the command runs "
                f"{lanes} lanes ({default['alone_lanes']:.0f} alone): against its own "
                f"layout the run reached {ratio(default['e2e']['rate'], default['alone_lanes']):.2f}"
                if lanes > 1 and default.get("alone_one_lane", 0) > default.get("alone_lanes", 0)
                else ""))
    sec.goal(f"time per slice / fp32 compute floor ({chosen.precision})", x_floor, "<=",
             GOAL_FLOOR, "x",
             cause=f"the CNN alone runs at {ratio(1.0 / default['alone'], floor_slice):.2f}x "
                   "the floor in this run; the rest is the pipeline's share")
    sec.goal("peak memory of the process tree (any path)", peak, "<=", GOAL_PEAK_GB, "GiB")
    for name, s in scores.items():
        if name == "fp32":
            continue
        ok = s["f2_delta"] <= F2_BAR and s["max_dp"] <= DP_BAR
        sec.notes.append(
            f"{name}: |dF2| {s['f2_delta']:.4f} (bar {F2_BAR}), max |dp| {s['max_dp']:.3f} "
            f"(bar {DP_BAR}) on {s['n_slices']} slices: "
            + ("within both bars" if ok else "outside the bars, so never the default"))
    sec.params["load average at end"] = f"{os.getloadavg()[0]:.2f}"
    return sec


def _engine_line(engine: str) -> str:
    """What ran the default fp32 CNN here (`Predictor.engine` under ``engine="auto"``)."""
    if engine != "onnxruntime":
        return f"{engine} (ONNX Runtime not installed, or it could not run the model)"
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__} (CPU provider), the default"


def splice_section(old_md: str, rendered: str) -> str:
    """``old_md`` with this section's goal rows and section replaced by ``rendered``'s.

    Only this section changes: the others' text stays as it is in results.md.
    """
    new = rendered.splitlines()
    rows = [ln for ln in new if ln.startswith(f"| {TITLE} |")]
    body = [ln for ln in new[new.index(f"## {TITLE}"):] if not ln.startswith("_From an earlier")]
    if not old_md.strip():
        return rendered.rstrip("\n") + "\n"
    lines = [ln for ln in old_md.splitlines() if not ln.startswith(f"| {TITLE} |")]
    if f"## {TITLE}" in lines:
        i = lines.index(f"## {TITLE}")
        j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
        lines = lines[:i] + lines[j:]
    goal_rows = [k for k, ln in enumerate(lines) if ln.startswith("| ") and " | " in ln
                 and k > 0 and lines[k - 1].startswith("|") and "## " not in ln]
    first_section = next((k for k, ln in enumerate(lines) if ln.startswith("## ")
                          and ln != "## Goals"), len(lines))
    at = max((k for k in goal_rows if k < first_section), default=first_section - 1) + 1
    lines = lines[:at] + rows + lines[at:]
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines + [""] + body).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    configure_torch(available_cores(), quantized_engine="auto")
    before, kids0 = cpu_snapshot(), _children_cpu_s()
    t0 = time.perf_counter()
    sec = run(args)
    sec.seconds = time.perf_counter() - t0
    # Busy cores outside this process and the predict commands it ran (their CPU, and their
    # readers', is counted to this process once they are waited for).
    others = max(0.0, other_load(before, cpu_snapshot())
                 - (_children_cpu_s() - kids0) / sec.seconds)
    sec.params["CPU used by other processes"] = (
        f"{others:.2f} of {available_cores()} cores (besides this benchmark and the predict "
        "commands it ran)")
    if others > 0.2:
        sec.notes.append(
            f"The machine was shared with other work during this run ({others:.2f} cores "
            "busy besides the benchmark): every rate here is lower, and every ratio noisier, "
            "than on a quiet machine.")
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    command = "python -m bench.batch" + (" " + shlex.join(argv) if argv else "")
    d = sec.to_dict()
    d.update(created=created, command=command)
    path = Path(args.out) / "results.json"
    results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {
        "command": command, "created": created, "quick": False,
        "threads": available_cores(), "machine": machine_info(), "sections": {}}
    results["sections"]["batch"] = d  # the other sections stay as their run left them
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    md = out / "results.md"
    old = md.read_text(encoding="utf-8") if md.is_file() else ""
    md.write_text(splice_section(old, render_markdown({**results, "sections": {"batch": d}})),
                  encoding="utf-8")
    print(f"wrote {args.out}/results.md (section: {TITLE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
