"""Command line: ``python -m hohoho_core {predict,index,audit} ...``.

predict  PATH... [--weights DIR] [--out preds.csv|preds.json] [--batch-size N] [--device D]
         [--precision auto|fp32|bf16|int8] [--workers N] [--lanes N] [--resume] [--quiet]
         [--progress-every S] [--sample-submission CSV]
         Studies from folders, zips, single files or an RSNA-layout folder; writes the RSNA
         submission CSV plus ``<stem>_studies.csv`` (or one JSON). Studies are read and
         preprocessed in ``--workers`` processes while the CNN runs (`hohoho_core.batch`),
         the CNN in ``--lanes`` threads on the CPU;
         results go to a log study by study, so Ctrl-C / SIGTERM (exit 130) loses nothing
         and ``--resume`` completes the run. Under ``torchrun`` the studies are shared out by
         rank and rank 0 merges the parts. Files the reader could not use are listed on
         stderr and counted by reason; with ``--sample-submission`` every image of the
         sample must be predicted, else the exit code is 2 and the missing IDs are listed.
predict  --dicomweb [URL] (--study-uid UID... | --patient-id/--patient-name/--date-from/
         --date-to/--accession) [--store-sr]: studies from a PACS (hohoho_core.pacs_cli).
pacs     search [--dicomweb URL] [query] [--show-identifiers]: list CT studies on a PACS.
index    DATA_DIR [--labels CSV] [--workers N] [--cache-dir DIR]: index an RSNA-layout folder.
audit    --data DIR --probs oof.csv --out flags.csv: rank likely label errors.
evaluate --data DIR [--weights DIR] [--out report.json] [--beta 2] [--retune NEW_DIR
         [--sensitivity S]]: score a weights folder on a labelled RSNA-layout folder, per
         class, with the weights' thresholds and with thresholds picked on that data;
         ``--retune`` writes those thresholds into a new weights folder.

Unusable input ends with exit code 2 and one line on stderr (no traceback, no patient
identifiers). Heavy modules are imported inside each subcommand.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hohoho_core.spacing import THIN_MODES
from hohoho_core.weights_dir import WEIGHTS_ENV

if TYPE_CHECKING:  # the CLI imports torch lazily, after parsing its arguments
    from hohoho_core.predict import CnnTiming

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: the partial log is kept for --resume
DEBUG_ENV = "HOHOHO_DEBUG"  # set: an unexpected error shows its traceback


class CliError(Exception):
    """Unusable input: reported as one line, exit code 2."""


def default_weights() -> Path:
    """The default weights folder: `weights_dir.default_weights_dir` (no torch import)."""
    from hohoho_core.weights_dir import default_weights_dir

    return default_weights_dir()


def _part_path(out: Path, rank: int) -> Path:
    return out.with_name(f".{out.name}.part{rank}.json")


def _check_out(out: Path, *also: Path) -> None:
    """Refuse an output that cannot be written, before any work: a folder, a path under a
    regular file, a folder we may not write in. Missing parent folders are created (as the
    writers would), and a probe file is created and removed in the target folder."""
    for path in (out, *also):
        if path.is_dir():
            raise CliError(f"--out {path} is a folder, not a file")
    parent = out.parent
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise CliError(f"--out {out}: {ancestor} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise CliError(f"--out {out}: cannot write in {parent} ({why})") from None


def _load_sources(paths: Sequence[str]) -> list[Path]:
    sources = [Path(p) for p in paths]
    for p in sources:
        if not p.exists():
            raise CliError(f"{p}: no such file or folder")
    return sources


def _cmd_predict(args: argparse.Namespace) -> int:
    if args.dicomweb is not None:  # studies from a PACS: hohoho_core.pacs_cli
        from hohoho_core.pacs_cli import dicomweb_log_path, predict_dicomweb

        try:
            with _stop_on_sigterm():
                return predict_dicomweb(args, CliError, _check_out, default_weights)
        except KeyboardInterrupt:
            log = dicomweb_log_path(Path(args.out))
            kept = (f"finished studies are kept in {log}; run the same command with --resume "
                    "to continue" if log.is_file() and log.stat().st_size else
                    "nothing was predicted")
            print(f"hohoho: interrupted: {kept}", file=sys.stderr)
            return EXIT_INTERRUPTED
    if not args.paths:
        raise CliError("give study PATHs, or --dicomweb URL with --study-uid or a query")
    # Check the arguments before the heavy imports, so mistakes are reported at once.
    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".json"):
        raise CliError(f"--out must end in .csv or .json, got {out.name}")
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.series_description:
        import re

        try:
            re.compile(args.series_description)
        except re.error as err:
            raise CliError(f"--series-description: invalid pattern ({err})") from None
    sources = _load_sources(args.paths)
    # The summary beside a CSV: `predict.studies_path`'s rule (not imported: torch is heavy).
    summary = [out.with_name(f"{out.stem}_studies.csv")] if out.suffix.lower() == ".csv" else []
    _check_out(out, *summary)
    weights = Path(args.weights) if args.weights else default_weights()
    if not weights.is_dir():
        raise CliError(
            f"weights folder {weights} not found (pass --weights DIR or set ${WEIGHTS_ENV})"
        )
    expected = _sample_image_ids(Path(args.sample_submission)) if args.sample_submission else None
    if args.workers is not None and args.workers < 0:
        raise CliError(f"--workers must be >= 0, got {args.workers}")
    if args.lanes is not None and args.lanes < 1:
        raise CliError(f"--lanes must be >= 1, got {args.lanes}")

    from hohoho_core import distributed as D
    from hohoho_core.batch import Progress, SkipTally, default_lanes, default_workers
    from hohoho_core.predict import (
        CnnTiming,
        Predictor,
        resolve_folder_precision,
        write_predictions,
    )
    from hohoho_core.resultlog import ResultLog, rank_log_path
    from hohoho_core.runtime import configure_torch
    from hohoho_core.system import available_cores
    from hohoho_core.weights import WeightsError

    info = D.init_distributed()
    try:
        device = args.device or info.device
        try:
            resolution = resolve_folder_precision(weights, args.precision, device)
        except WeightsError as err:
            raise CliError(f"weights {weights}: {err}") from None
        if args.engine == "onnxruntime" and (resolution.precision != "fp32"
                                             or not str(device).startswith("cpu")):
            raise CliError(f"--engine onnxruntime runs the fp32 CNN on the CPU only; here "
                           f"the CNN would run {resolution.precision} on {device} "
                           f"({resolution.describe()}): add --precision fp32 --device cpu")
        # Processes on one machine share its cores.
        local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        cores = max(1, available_cores() // local_world)
        workers = default_workers(cores) if args.workers is None else args.workers
        device_type = str(device).split(":")[0]
        lanes = default_lanes(cores, device_type) if args.lanes is None else args.lanes
        if lanes > 1 and device_type != "cpu":
            raise CliError(f"--lanes {lanes}: lanes run the CNN on the CPU only, not on "
                           f"{device}")
        # The CLI is the entry point: it sets torch's process-wide state, once. Same
        # algorithms every call on a GPU, so the same input gives the same bits. Each lane
        # gets its share of the cores (an ONNX Runtime session takes torch's count).
        configure_torch(
            max(1, cores // lanes),
            deterministic=True,
            quantized_engine="auto" if resolution.precision == "int8" else None,
        )
        try:
            predictor = Predictor.from_folder(
                weights,
                device=device,
                batch_size=args.batch_size,
                precision=resolution.precision,
                engine=args.engine,
                lanes=lanes,
            )
        except WeightsError as err:
            raise CliError(f"weights {weights}: {err}") from None
        except ValueError as err:  # --engine onnxruntime, not installed or failed export
            raise CliError(f"--engine {args.engine}: {err}") from None
        if args.thin_slabs is not None:
            try:
                predictor.thin_slabs = args.thin_slabs
            except ValueError as err:  # sliding with weights that stack neighbours
                raise CliError(f"--thin-slabs: {err}") from None
        is_main = info.rank == 0
        if is_main:
            readers = (f"{workers} reader process(es)" if workers else
                       "reading in this process" + ("" if args.workers == 0 else
                                                    f" (no reader process on {cores} cores)"))
            in_lanes = f" in {lanes} lanes" if lanes > 1 else ""
            print(f"precision: {resolution.describe()}; CNN run by {predictor.engine}"
                  f"{in_lanes}; {readers}")

        # Results go to disk study by study (hohoho_core.resultlog): a stopped run keeps
        # every finished study, and --resume goes on from there.
        results = ResultLog(rank_log_path(out, info.rank, info.world_size))
        if results.exists() and not args.resume:
            raise CliError(
                f"{results.path} holds the results of an interrupted run: pass --resume to "
                "continue it, or delete that file to start again"
            )
        if not args.resume:
            results.remove()
        results.repair()
        done = results.done()
        tally = SkipTally()  # over every study of this rank
        timing = CnnTiming()
        progress = Progress(0, done_before=len(done), enabled=is_main and not args.quiet,
                            interval=args.progress_every, cnn=timing)
        try:
            with _stop_on_sigterm():
                n_new = _predict_sources(sources, args, predictor, results, done, info,
                                         workers, tally, progress, timing)
        except KeyboardInterrupt:
            # Every finished study is in the log (fsync per study); the pipeline's workers
            # were joined when its iterator closed.
            print(f"hohoho: interrupted: {progress.studies} studies predicted in this run are "
                  f"kept in {results.path}; run the same command with --resume to continue",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        progress.finish()
        skipped = tally.files

        if info.distributed:
            part = _part_path(out, info.rank)
            part.parent.mkdir(parents=True, exist_ok=True)
            part.write_text(json.dumps({"skipped": tally.to_dict()}), encoding="utf-8")
        D.barrier()
        logs = [ResultLog(rank_log_path(out, r, info.world_size)) for r in range(info.world_size)]
        if is_main:
            if info.distributed:
                for r in range(info.world_size):
                    p = _part_path(out, r)
                    if r != info.rank:
                        tally.update(json.loads(p.read_text(encoding="utf-8"))["skipped"])
                    p.unlink()
            # The final file comes from the logs alone, so it is the same whether the run
            # was interrupted or not.
            records = [rec for lg in logs for rec in lg.records()]
            if args.resume and done:
                print(f"resumed: {len(done)} studies were done, {n_new} predicted now",
                      file=sys.stderr)
            records.sort(key=lambda r: r["order"])
            for r in records:
                r.pop("order", None)
            written = write_predictions(records, out)
            for lg in logs:
                lg.remove()
            n_images = sum(len(r["image_ids"]) for r in records)
            print(
                f"{len(records)} studies, {n_images} images -> "
                + ", ".join(str(p) for p in written)
            )
            from hohoho_core.spacing import notes_line

            line = notes_line(records)
            if line is not None:  # one line for the run; each series' note is in the output
                print(line, file=sys.stderr)
            if skipped:
                print(_listing(f"{len(skipped)} files not used", sorted(
                    f"{name} ({why})" for name, why in skipped.items())), file=sys.stderr)
            if skipped or tally.series:
                print(tally.summary(), file=sys.stderr)
            if expected is not None:
                done = {i for r in records for i in r["image_ids"]}
                missing = [i for i in expected if i not in done]
                extra = len(done - set(expected))
                if extra:
                    print(f"hohoho: note: {extra} predicted images are not in the sample "
                          "submission", file=sys.stderr)
                if missing:
                    # The file stays written (the work is kept); the exit code says it is
                    # not a complete submission.
                    print("hohoho: error: " + _listing(
                        f"{len(missing)} of {len(expected)} images of the sample submission "
                        "have no prediction", missing), file=sys.stderr)
                    D.barrier()
                    return EXIT_USAGE
                print(f"all {len(expected)} images of the sample submission predicted")
        D.barrier()
    finally:
        D.cleanup()
    return 0


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt here, so a terminated run stops the way Ctrl-C does
    (workers joined, the log left whole) instead of dying mid-study."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclasses.dataclass
class _Numbered:
    """A prepared series and its number in the input order (restores it at the merge)."""

    study_uid: str
    series_uid: str
    image_ids: list[str]
    x: Any
    skipped: list[tuple[str, str]]
    order: int
    slice_spacing: float | None = None  # mm, checked against the model's training range
    groups: Any = None  # slab index per slice when read as slabs (`Predictor.slabs_for`)
    slice_ids: list[str] | None = None  # the slices' own ids then


class _SourceItems:
    """This rank's prepared series of every source, one source after the other, as one
    iterable, so that the CNN's batches span sources too (`predict.Predictor.predict_stream`).

    A source that cannot be used ends the iteration and is kept in ``error`` (raised by the
    caller once the studies already prepared are written), never raised mid-stream."""

    def __init__(self, sources: Sequence[Path], args: argparse.Namespace, predictor: Any,
                 done: set[str], info: Any, workers: int, tally: Any, progress: Any) -> None:
        self.sources, self.args, self.predictor = sources, args, predictor
        self.done, self.info, self.workers = done, info, workers
        self.tally, self.progress = tally, progress
        self.error: CliError | None = None

    def __iter__(self) -> Iterator[_Numbered]:
        from hohoho_core.dicom import StudyLoadError

        order = [0]  # series numbered so far, over every source
        for src in self.sources:
            try:
                yield from self._one(src, order)
            except CliError as err:
                self.error = err
            except StudyLoadError as err:
                self.error = CliError(f"{src}: {err}")
            if self.error is not None:
                return

    def _one(self, src: Path, order: list[int]) -> Iterator[_Numbered]:
        from hohoho_core.batch import prepared_studies
        from hohoho_core.dicom import scan_source
        from hohoho_core.dicom.series import choose_series
        from hohoho_core.resultlog import study_key

        args, info, tally = self.args, self.info, self.tally
        with scan_source(src) as scan:
            # Every rank numbers the series the same way and takes every world_size-th;
            # the number restores the input order at the merge.
            owned: dict[str, int] = {}
            chosen = choose_series(scan.series, description=args.series_description,
                                   rule=args.series)
            loadable = scan.loadable_series()
            if not chosen and loadable:
                raise CliError(
                    f"{src}: no axial series matches --series-description "
                    f"{args.series_description!r} (descriptions found: "
                    + ", ".join(sorted({repr(s.description) for s in scan.series}))[:300]
                    + ")"
                )
            for s in chosen:
                if order[0] % info.world_size == info.rank:
                    owned[study_key(s.study_uid, s.series_uid)] = order[0]
                order[0] += 1
            for sk in scan.report.skipped:
                if _worth_listing(sk.source, sk.reason.value):
                    tally.add(sk.source, sk.reason.value)
            keys = [study_key(s.study_uid, s.series_uid) for s in loadable]
            jobs = [(s.study_uid, s.series_uid) for s, k in zip(loadable, keys, strict=True)
                    if k in owned and k not in self.done]
            self.progress.add_total(sum(k in owned for k in keys))
            loaded = 0
            if jobs:
                items = prepared_studies(scan, jobs, self.predictor.preprocess_config,
                                         workers=self.workers,
                                         volume=self.predictor.model_volume)
                try:
                    for item in items:
                        loaded += item.x is not None
                        yield _Numbered(item.study_uid, item.series_uid, item.image_ids,
                                        item.x, item.skipped, owned[item.key],
                                        item.slice_spacing, item.groups, item.slice_ids)
                finally:
                    items.close()  # stops and joins the reader processes
            if loaded == 0 and len(jobs) == len(loadable):
                if not jobs:
                    list(scan.iter_studies())  # raises the reader's own "no usable" error
                else:
                    raise CliError(f"{src}: none of its {len(jobs)} series has a usable "
                                   f"slice ({tally.summary()})")


def _predict_sources(sources: Sequence[Path], args: argparse.Namespace, predictor: Any,
                     results: Any, done: set[str], info: Any, workers: int, tally: Any,
                     progress: Any, timing: CnnTiming | None = None) -> int:
    """Predict this rank's series of every source into ``results``; returns how many."""
    from hohoho_core.predict import prediction_record

    n_new = 0
    items = _SourceItems(sources, args, predictor, done, info, workers, tally, progress)
    source = iter(items)
    # One stream over every source: the CNN's batches span studies and sources, and a
    # study is written as soon as its last slice has run.
    stream = predictor.predict_stream(source, timing=timing)
    try:
        for item, pred in stream:
            for name, why in item.skipped:
                if _worth_listing(name, why):
                    tally.add(name, why)
            if pred is None:
                tally.series += 1
                progress.update(0)
                continue
            if item.groups is not None:  # read as slabs: every slice gets its slab's
                pred = predictor.expand_slabs(pred, item.groups, item.slice_ids,
                                              float(item.slice_spacing))
            rec = prediction_record(pred)
            rec["order"] = item.order
            results.append(rec)
            n_new += 1
            progress.update(len(pred.image_ids))
    finally:
        # On Ctrl-C or an error: the reader processes are stopped and joined here.
        stream.close()
        source.close()  # type: ignore[attr-defined]
    if items.error is not None:
        raise items.error
    return n_new


#: Files named like images: one of them that is not DICOM is worth a line; a labels CSV
#: or a README beside the images is not.
_IMAGE_SUFFIXES = frozenset({"", ".dcm", ".dicom", ".ima"})


def _worth_listing(source: str, reason: str) -> bool:
    return reason != "not DICOM" or Path(source).suffix.lower() in _IMAGE_SUFFIXES


def _listing(head: str, items: Sequence[str], show: int = 10) -> str:
    """``head: a, b, c (and N more)`` on one line."""
    more = f" (and {len(items) - show} more)" if len(items) > show else ""
    return f"{head}: {', '.join(items[:show])}{more}"


def _sample_image_ids(path: Path) -> list[str]:
    """Image IDs (``ID_<hex>``) of a Kaggle sample submission, in file order."""
    if not path.is_file():
        raise CliError(f"--sample-submission {path}: no such file")
    from hohoho_core.rsna_csv import RsnaCsvError, read_rsna_csv

    try:
        table = read_rsna_csv(path, kind="probabilities")
    except RsnaCsvError as err:
        raise CliError(f"--sample-submission {path}: {err}") from None
    if table.empty:
        raise CliError(f"--sample-submission {path}: no rows")
    return [str(i) for i in table.index]


def _cmd_index(args: argparse.Namespace) -> int:
    from hohoho_core.labels import CLASSES
    from hohoho_core.rsna import build_index, dicom_folder

    root = Path(args.data_dir)
    if not root.is_dir():
        raise CliError(f"{root}: no such folder")
    if args.workers is not None and args.workers < 1:
        raise CliError(f"--workers must be >= 1, got {args.workers}")
    try:
        index = build_index(
            root,
            labels_csv=args.labels,
            cache_dir=args.cache_dir,
            workers=args.workers,
            progress=sys.stderr.isatty(),
        )
    except (FileNotFoundError, ValueError) as err:
        raise CliError(f"{root}: {err}") from None
    table = index.table
    if table.empty:  # files, but none usable: say so, do not report an empty success
        raise CliError(
            f"{root}: no usable slices in {dicom_folder(root)} "
            f"({len(index.unreadable)} unreadable, {len(index.skipped)} skipped)"
        )
    print(f"slices: {len(table)}")
    print(f"studies: {table['study_uid'].nunique()}")
    from hohoho_core.rsna import default_index_cache_dir

    cache = Path(args.cache_dir) if args.cache_dir else default_index_cache_dir()
    print(f"header index cached under: {cache} (--cache-dir to choose)")
    print(f"series: {table['series_uid'].nunique()}")
    print(f"unreadable files: {len(getattr(index, 'unreadable', []))}")
    print(f"missing files (labelled, no file): {len(index.missing_files)}")
    print(f"missing labels (file, no label): {len(index.missing_labels)}")
    present = [c for c in CLASSES if c in table.columns]
    labelled = bool(present) and bool((table[present[-1]] >= 0).any())
    if not labelled:
        # Not an error (a test folder has no labels), but training and evaluate need them.
        print("labels: none (no labels CSV found or given): the folder can be predicted, "
              "not trained or evaluated on")
    if present and labelled:
        # Label columns hold 1, 0, or -1 for unlabelled.
        counts = ", ".join(f"{c} {int((table[c] == 1).sum())}" for c in present)
        print(f"positive slices: {counts}")
    return 0


def _audit_ranker(spec: str) -> Any:
    """``--ranker``: "shipped" (the weights folder's), "none" (hand-weighted) or a JSON path."""
    from hohoho_core.audit_ranker import AuditRanker

    if spec in ("shipped", "none"):
        return None if spec == "none" else "shipped"
    path = Path(spec)
    if not path.is_file():
        raise CliError(f"--ranker {path}: no such file")
    return AuditRanker.load(path)


def _cmd_audit(args: argparse.Namespace) -> int:
    from hohoho_core.atomic import atomic_open
    from hohoho_core.audit import audit_from_files
    from hohoho_core.csvsafe import safe_frame

    data, probs, out = Path(args.data), Path(args.probs), Path(args.out)
    if not data.is_dir():
        raise CliError(f"{data}: no such folder")
    if not probs.is_file():
        raise CliError(f"{probs}: no such file")
    if args.top is not None and args.top < 1:
        raise CliError(f"--top must be >= 1, got {args.top}")
    _check_out(out)
    try:
        ranker = _audit_ranker(args.ranker)
        flags = audit_from_files(data, probs, labels_csv=args.labels, top=args.top,
                                 ranker=ranker, image_evidence=not args.no_images)
    except (FileNotFoundError, ValueError) as err:
        raise CliError(f"audit: {err}") from None
    # Text cells (UIDs, paths) from the files: none may open as a spreadsheet formula.
    with atomic_open(out, "w", newline="", encoding="utf-8") as fh:
        safe_frame(flags).to_csv(fh, index=False, lineterminator="\n")
    print(f"{len(flags)} rows -> {out}")
    return 0


def _evaluation_table(reports: dict[str, dict[str, Any]]) -> list[str]:
    from hohoho_core.labels import CLASSES

    def f(x: Any) -> str:
        return "   -  " if x is None else f"{x:6.3f}"

    lines = []
    for stage, rep in reports.items():
        lines.append(f"{stage}: slice F-beta at the weights' thresholds / at thresholds "
                     "picked here, AUC, ECE")
        for c in CLASSES:
            lines.append(
                f"  {c:<17}{f(rep['slice']['per_class'][c])} {f(rep['tuned']['slice']['per_class'][c])}"
                f" {f(rep['auc'][c])} {f(rep['ece'][c])}"
            )
        lines.append(
            f"  {'macro':<17}{f(rep['slice']['macro'])} {f(rep['tuned']['slice']['macro'])}"
            f" {f(rep['auc_macro'])} {f(rep['ece_macro'])}"
        )
        study = rep.get("study") or {}
        if study:
            lines.append(f"  study-level macro F-beta at the weights' thresholds: "
                         f"{f(study.get('macro')).strip()}")
    return lines


def _cmd_evaluate(args: argparse.Namespace) -> int:
    data = Path(args.data)
    if not data.is_dir():
        raise CliError(f"{data}: no such folder")
    if args.beta <= 0:
        raise CliError(f"--beta must be > 0, got {args.beta}")
    if args.sensitivity is not None:
        if args.retune is None:
            raise CliError("--sensitivity picks retuned thresholds: give --retune NEW_DIR")
        if not 0.0 < args.sensitivity <= 1.0:
            raise CliError(f"--sensitivity must be in (0, 1], got {args.sensitivity}")
    weights = Path(args.weights) if args.weights else default_weights()
    if not weights.is_dir():
        raise CliError(
            f"weights folder {weights} not found (pass --weights DIR or set ${WEIGHTS_ENV})"
        )
    retune = Path(args.retune) if args.retune else None
    if retune is not None and retune.exists() and (
        retune.resolve() == weights.resolve() or not retune.is_dir() or any(retune.iterdir())
    ):
        raise CliError(f"--retune {retune} exists and is not an empty folder: choose a new one")
    from hohoho_core.predict import THIN_SLABS

    if retune is not None and args.thin_slabs not in (None, THIN_SLABS):
        # thresholds tuned on outputs of one reading would ship in a folder read another way
        raise CliError(f"--retune with --thin-slabs {args.thin_slabs}: the thresholds would "
                       "be tuned on outputs the retuned folder does not make; retune without "
                       "--thin-slabs")
    out = Path(args.out) if args.out else None
    if out is not None:
        _check_out(out)

    import numpy as np

    from hohoho_core.atomic import atomic_write_text
    from hohoho_core.evaluate import evaluate_index, score
    from hohoho_core.predict import Predictor, resolve_folder_precision
    from hohoho_core.retune import retune_thresholds, write_retuned
    from hohoho_core.rsna import build_index
    from hohoho_core.runtime import configure_torch
    from hohoho_core.strictjson import finite_json
    from hohoho_core.system import available_cores
    from hohoho_core.weights import WeightsError

    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = args.device or "cpu"
    try:
        resolution = resolve_folder_precision(weights, args.precision, device)
    except WeightsError as err:
        raise CliError(f"weights {weights}: {err}") from None
    configure_torch(available_cores(), deterministic=True,
                    quantized_engine="auto" if resolution.precision == "int8" else None)
    try:
        # The precision as asked, so the note says "auto: ..." when auto chose.
        predictor = Predictor.from_folder(weights, device=device, batch_size=args.batch_size,
                                          precision=args.precision, engine=args.engine)
    except WeightsError as err:
        raise CliError(f"weights {weights}: {err}") from None
    except ValueError as err:  # --engine onnxruntime with bf16/int8/GPU, int8 on a GPU
        raise CliError(f"--engine {args.engine}: {err}" if args.engine != "auto"
                       else f"--precision {args.precision}: {err}") from None
    if args.thin_slabs is not None:
        try:
            predictor.thin_slabs = args.thin_slabs
        except ValueError as err:  # sliding with weights that stack neighbours
            raise CliError(f"--thin-slabs: {err}") from None
    # Scores belong to the arithmetic that made them: say which ran.
    print(f"precision: {predictor.path_note}")
    try:
        index = build_index(data, labels_csv=args.labels, workers=1,
                            progress=sys.stderr.isatty())
    except (FileNotFoundError, ValueError) as err:
        raise CliError(f"{data}: {err}") from None
    table = index.table
    if table.empty or "any" not in table.columns or not (table["any"] >= 0).any():
        raise CliError(f"{data}: no labelled slices to evaluate on")
    try:
        pred, reports = evaluate_index(predictor, data, table, study_auc=True, tune=True)
    except ValueError as err:
        raise CliError(f"{data}: {err}") from None
    # evaluate_index tunes F2; with another beta the whole report uses that beta.
    if args.beta != 2.0:
        cfg = predictor.config
        cnn_thr = np.asarray(cfg.cnn_thresholds or cfg.thresholds, dtype=np.float64)
        reports = {"cnn": score(pred.labels, pred.cnn_prob, cnn_thr, pred.study_ids,
                                beta=args.beta, study_auc=True, tune=True)}
        if predictor.lstm is not None:
            reports["cnn_lstm"] = score(pred.labels, pred.prob, predictor.thresholds,
                                        pred.study_ids, beta=args.beta, study_auc=True,
                                        tune=True)
    result: dict[str, Any] = {
        "weights": str(weights), "data": str(data), "beta": args.beta,
        "precision": resolution.precision, "engine": predictor.engine,
        "studies": int(len(set(pred.study_ids.tolist()))), "slices": int(len(pred)),
        "unreadable_files": len(index.unreadable), "skipped_slices": len(index.skipped),
        "thin_slabs": predictor.thin_slabs,
        "reports": reports,
    }
    # Series the model was not trained for (a thin series): their figures are in the
    # scores, and said once here, as predict says them.
    from hohoho_core.spacing import notes_line

    series = list(dict.fromkeys(pred.study_ids.tolist()))
    noted = notes_line([{"notes": pred.notes.get(k, [])} for k in series])
    result["noted_series"] = len(pred.notes)
    if noted is not None:
        print(noted, file=sys.stderr)
    for line in _evaluation_table(reports):
        print(line)
    print(f"{result['studies']} studies, {result['slices']} slices "
          f"({result['unreadable_files']} unreadable files, {result['skipped_slices']} "
          "skipped slices)")
    if retune is not None:
        cfg = predictor.config
        rule = ({"rule": "sensitivity", "target": args.sensitivity}
                if args.sensitivity is not None else {"rule": "fbeta", "beta": args.beta})
        final_thr = retune_thresholds(pred.labels, pred.prob, np.asarray(cfg.thresholds),
                                      beta=args.beta, sensitivity=args.sensitivity)
        cnn_thr = None
        if cfg.cnn_thresholds is not None or predictor.lstm is not None:
            base = np.asarray(cfg.cnn_thresholds or cfg.thresholds, dtype=np.float64)
            cnn_thr = retune_thresholds(pred.labels, pred.cnn_prob, base, beta=args.beta,
                                        sensitivity=args.sensitivity)
        note = {**rule, "data": data.name, "precision": resolution.precision,
                "studies": result["studies"],
                "slices": result["slices"], "from_weights": weights.name}
        try:
            write_retuned(weights, retune, final_thr, cnn_thr, note)
        except FileExistsError as err:
            raise CliError(str(err)) from None
        result["retuned"] = {"folder": str(retune), "thresholds": final_thr,
                             "cnn_thresholds": cnn_thr, **rule}
        print(f"retuned thresholds ({rule['rule']}) -> {retune}")
    if out is not None:
        atomic_write_text(out, json.dumps(finite_json(result), indent=2, allow_nan=False) + "\n")
        print(f"report -> {out}")
    return 0


_THIN_SLABS_HELP = (
    "how to read a series whose slices are much closer together than the model was trained "
    "on (below its trained range / 1.5): off, slice by slice; blocks, as slabs as thick as "
    "the middle of the trained range (4.5 mm for the demo model), each slice given its "
    "slab's calls; sliding, each slice as a reformat that thick centred on it, the sequence "
    "model over interleaved phases at trained steps (default: hohoho_core.predict.THIN_SLABS)")


def get_args_parser() -> argparse.ArgumentParser:
    from hohoho_core.pacs_cli import add_pacs_parser, add_predict_arguments

    parser = argparse.ArgumentParser(
        prog="python -m hohoho_core",
        description="HOHOHO: intracranial hemorrhage detection on head CT (research demo, "
        "not for clinical use).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="predict studies; write RSNA-format CSV or JSON")
    p.add_argument("paths", nargs="*", help="study folders, zips, .dcm files or RSNA folders")
    p.add_argument(
        "--weights",
        default=None,
        help=f"weights folder (default: ${WEIGHTS_ENV} or the repository's weights/)",
    )
    p.add_argument("--out", default="preds.csv", help="preds.csv or preds.json")
    p.add_argument("--batch-size", type=int, default=16, help="slices per CNN batch")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: per rank)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "int8"),
        default="auto",
        help="CNN arithmetic. auto (default): the fastest path the weights' precision.json "
        "measured within 0.005 macro F2 and 0.02 probability of fp32 on this CPU class, "
        "else fp32 (see bench/README.md); bf16 is fast only with avx512_bf16/AMX; int8 is "
        "a statically quantised CNN. The path that ran is printed",
    )
    from hohoho_core.precision import ENGINES  # light: no torch

    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="what runs the fp32 CNN on the CPU. auto (default): ONNX Runtime where it is "
        "installed (the same fp32 arithmetic, faster kernels), else torch. bf16, int8 and "
        "GPUs run in torch. The engine that ran is printed",
    )
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes reading and preprocessing studies while the CNN runs "
                   "(default: none on 2 cores or fewer, else one per four cores, at least "
                   "1); 0: one study after another in this process")
    p.add_argument("--lanes", type=int, default=None, metavar="N",
                   help="CNN batches run at once on the CPU, each in its own thread with "
                   "cores / N threads (default: 2 on a CPU with 2 cores or more, else 1): "
                   "the next studies are read while the CNN runs")
    p.add_argument("--quiet", action="store_true",
                   help="no progress lines (errors and the final summary still print)")
    p.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between progress lines on stderr")
    p.add_argument("--thin-slabs", choices=THIN_MODES, default=None, help=_THIN_SLABS_HELP)
    p.add_argument("--series", choices=("all", "thinnest", "thickest"), default="all",
                   help="per study: every axial series, or only the thinnest / thickest one "
                   "(an exam exported with thin and thick reconstructions)")
    p.add_argument("--series-description", default=None, metavar="REGEX",
                   help="only series whose SeriesDescription matches (case-insensitive)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run into the same --out: studies already "
                   "written to its partial log are skipped")
    p.add_argument("--sample-submission", default=None, metavar="CSV",
                   help="Kaggle sample submission: exit 2 listing its images without a "
                   "prediction (unreadable or absent files)")
    add_predict_arguments(p)
    p.set_defaults(func=_cmd_predict)

    add_pacs_parser(sub, CliError)

    p = sub.add_parser("index", help="index an RSNA-layout folder and print counts")
    p.add_argument("data_dir")
    p.add_argument("--labels", default=None, help="labels CSV (default: stage_2_train.csv)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("audit", help="flag likely label errors from out-of-fold probabilities")
    p.add_argument("--data", required=True, help="RSNA-layout folder")
    p.add_argument("--probs", required=True, help="out-of-fold probabilities, RSNA CSV format")
    p.add_argument("--out", required=True, help="flags CSV to write")
    p.add_argument("--labels", default=None, help="labels CSV (default: the folder's)")
    p.add_argument("--top", type=int, default=None, help="keep the N highest-ranked rows")
    p.add_argument("--ranker", default="shipped",
                   help="learned ranker: 'shipped' (weights/audit_ranker.json), 'none' "
                        "(hand-weighted score) or a ranker JSON")
    p.add_argument("--no-images", action="store_true",
                   help="skip reading slices near run edges for the blood evidence")
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser(
        "evaluate",
        help="score weights on a labelled RSNA-layout folder; optionally retune thresholds",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", required=True, help="labelled RSNA-layout folder")
    p.add_argument("--labels", default=None, help="labels CSV (default: the folder's)")
    p.add_argument("--weights", default=None,
                   help=f"weights folder (default: ${WEIGHTS_ENV} or the repository's weights/)")
    p.add_argument("--out", default=None, help="write the full report as JSON here")
    p.add_argument("--beta", type=float, default=2.0, help="F-beta's beta (2: F2)")
    p.add_argument("--retune", default=None, metavar="NEW_DIR",
                   help="write a copy of the weights with thresholds picked on this data")
    p.add_argument("--sensitivity", type=float, default=None,
                   help="with --retune: per class, the highest threshold whose slice "
                   "recall reaches this target (instead of maximising F-beta)")
    p.add_argument("--batch-size", type=int, default=16, help="slices per CNN batch")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--precision", choices=("fp32", "bf16", "int8", "auto"), default="fp32",
                   help="CNN arithmetic to score: fp32, the reference, unless asked; bf16 "
                   "or int8 to check a faster path on your own labelled data; auto: what "
                   "predict's default would run here")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="what runs the fp32 CNN on the CPU (as for predict)")
    p.add_argument("--thin-slabs", choices=THIN_MODES, default=None, help=_THIN_SLABS_HELP)
    p.set_defaults(func=_cmd_evaluate)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code.

    Every failure is one line on stderr and exit code `EXIT_USAGE`, never a traceback:
    `CliError` and the library's own errors (weights, study loading, CSV, I/O) with their
    message; anything else with its type only (its text could quote a file's contents), and
    the traceback only when ``HOHOHO_DEBUG`` is set.
    """
    args = get_args_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as err:
        message = str(err)
    except OSError as err:  # the disk, not the input: name the file, not the bytes
        where = f" {err.filename}" if err.filename else ""
        message = f"cannot access{where}: {err.strerror or type(err).__name__}"
    except MemoryError:
        message = "out of memory (the input is too large for this machine)"
    except Exception as err:
        from hohoho_core.dicom import StudyLoadError
        from hohoho_core.rsna_csv import RsnaCsvError
        from hohoho_core.weights import WeightsError

        if os.environ.get(DEBUG_ENV):
            raise
        if isinstance(err, WeightsError | StudyLoadError | RsnaCsvError):
            message = str(err)  # the library's messages carry no patient identifiers
        else:
            message = f"unexpected {type(err).__name__} (set {DEBUG_ENV}=1 for the traceback)"
    print(f"hohoho: error: {_one_line(message)}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
