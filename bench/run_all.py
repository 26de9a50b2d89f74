"""Run every benchmark and write bench/results.json and bench/results.md (``make bench``).

    python -m bench.run_all                      # everything, about 5-10 min on 2 cores
    python -m bench.run_all --only saliency      # rerun one section, merged into the results
    python -m bench.run_all --quick              # tiny sizes, a smoke run (written elsewhere)

Sections: study, preprocess, saliency, tsne, train, app (see bench/README.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    Section,
    cpu_snapshot,
    machine_info,
    other_load,
)
from bench.context import FULL, QUICK, BenchContext, Sizes, with_overrides
from bench.report import SECTION_ORDER, write_results
from hohoho_core.runtime import configure_torch
from hohoho_core.system import available_cores

log = logging.getLogger("hohoho.bench")

_ROOT = Path(__file__).resolve().parents[1]

#: Section name -> (module under bench/, title used when the section fails).
SECTIONS: dict[str, tuple[str, str]] = {
    "study": ("bench.whole_study", "1. Whole-study analysis"),
    "preprocess": ("bench.preprocessing", "2. Preprocessing"),
    "saliency": ("bench.saliency", "3. Saliency"),
    "tsne": ("bench.tsne", "4. t-SNE"),
    "train": ("bench.training", "5. Training (stage 1)"),
    "app": ("bench.viewer", "6. The app (AppTest, server side)"),
}
assert tuple(SECTIONS) == SECTION_ORDER


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="HOHOHO benchmarks -> bench/results.{json,md}")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (smoke run); writes under --work unless --out is given")
    p.add_argument("--only", action="append", choices=list(SECTIONS), default=None,
                   metavar="SECTION",
                   help=f"run only this section (repeatable): {', '.join(SECTIONS)}; the "
                        "other sections' stored results are kept")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for results.json/results.md (default: bench/)")
    p.add_argument("--work", type=Path, default=_ROOT / "data" / "bench",
                   help="generated studies and weights (reused between runs)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for every figure (default: all usable cores)")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the torch.compile candidate (its first call compiles for ~1 min)")
    return p


def run_sections(ctx: BenchContext, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Run the named sections in order; a failing section is recorded, not raised."""
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names, start=1):
        module_name, title = SECTIONS[name]
        log.info("[%d/%d] %s", i, len(names), title)
        before = cpu_snapshot()
        t0 = time.perf_counter()
        try:
            sec = importlib.import_module(module_name).run(ctx)
        except Exception as exc:
            log.error("%s failed:\n%s", title, traceback.format_exc())
            first = str(exc).splitlines()[0] if str(exc) else ""
            sec = Section(name, title, error=f"{type(exc).__name__}: {first}"[:400])
        sec.seconds = time.perf_counter() - t0
        others = other_load(before, cpu_snapshot())
        sec.params["CPU used by other processes"] = f"{others:.2f} of {available_cores()} cores"
        if others + ctx.threads > available_cores() + 0.25:
            # More runnable threads than cores. Measured during development: each parallel
            # region then waits for a descheduled thread; 2-thread timings grew 5-15x.
            sec.notes.append(
                f"Other processes kept {others:.2f} of {available_cores()} cores busy during "
                "this section: its timings are inflated by time-sharing; rerun it on a quiet "
                "machine."
            )
            for goal in sec.goals:
                if goal.met is False:
                    goal.cause += f"; other processes used {others:.2f} cores meanwhile"
        log.info("    %s done in %.1f s", title, sec.seconds)
        out[name] = sec.to_dict()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    # Progress lines from the bench only; libraries stay at warnings.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    threads = args.threads or available_cores()
    if threads < 1:
        raise SystemExit("--threads must be at least 1")
    # The entry point owns torch's process-wide state; the study section runs int8.
    configure_torch(threads, quantized_engine="auto")
    sizes: Sizes = QUICK if args.quick else FULL
    if args.no_compile:
        sizes = with_overrides(sizes, try_compile=False)
    work = Path(args.work)
    out_dir = args.out or (work / "quick" if args.quick else _ROOT / "bench")
    names = [n for n in SECTIONS if args.only is None or n in args.only]
    command = "python -m bench.run_all" + (
        " " + shlex.join(argv if argv is not None else sys.argv[1:])
        if (argv if argv is not None else sys.argv[1:]) else "")
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    machine = machine_info()
    ctx = BenchContext(sizes, work, threads)
    sections = run_sections(ctx, names)
    for sec in sections.values():
        sec.update(created=created, command=command)
    results = {
        "command": command,
        "created": created,
        "quick": sizes.quick,
        "threads": threads,
        "machine": machine,
        "sizes": sizes.to_dict(),
        "sections": sections,
    }
    # always merged: --only keeps the other sections, and a full run keeps the sections
    # of the separate benchmarks (bench.pacs, bench.viewer_load, bench.batch)
    write_results(results, out_dir, merge_existing=True)
    log.info("wrote %s and %s", out_dir / "results.json", out_dir / "results.md")
    failed = [n for n, s in sections.items() if s.get("error")]
    if failed:
        log.error("sections that failed: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
