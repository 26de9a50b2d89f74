"""The CLI's PACS commands: ``pacs search`` and ``predict --dicomweb``.

Kept apart from ``__main__`` (which only adds these arguments and calls in): argparse
and printing live here, the DICOMweb work in `hohoho_core.pacs`. Patient identifiers
are never printed unless ``--show-identifiers`` asks, and never logged. Every failure is
raised as the caller's error class, so ``__main__`` prints it as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "add_pacs_parser",
    "add_predict_arguments",
    "dicomweb_log_path",
    "predict_dicomweb",
    "search_command",
]

_STUDY_DONE = "study_done"  # the partial log's marker: every chosen series of it is logged

_URL_HELP = "DICOMweb root, e.g. http://localhost:8042/dicom-web (default: $HOHOHO_DICOMWEB_URL)"


def _add_query_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patient-id", default=None, help="exact patient ID")
    p.add_argument("--patient-name", default=None,
                   help="patient name prefix, DICOM style (DOE^J)")
    p.add_argument("--date-from", default=None, metavar="YYYY-MM-DD", help="first study date")
    p.add_argument("--date-to", default=None, metavar="YYYY-MM-DD", help="last study date")
    p.add_argument("--accession", default=None, help="exact accession number")
    p.add_argument("--limit", type=int, default=None,
                   help="at most this many studies (default: 200)")


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    """``predict``'s PACS options (studies from a DICOMweb server instead of PATHs)."""
    g = p.add_argument_group("studies from a PACS (DICOMweb)")
    g.add_argument("--dicomweb", nargs="?", const="", default=None, metavar="URL",
                   help=_URL_HELP + "; then give --study-uid or a query instead of PATHs")
    g.add_argument("--study-uid", action="append", default=None, metavar="UID",
                   help="a study to predict (repeatable)")
    _add_query_arguments(g)  # type: ignore[arg-type]
    g.add_argument("--store-sr", action="store_true",
                   help="store each study's analysis back as a DICOM structured report "
                   "(STOW-RS)")
    g.add_argument("--store-saliency", action="store_true",
                   help="also store a Grad-CAM overlay of each positive subtype's peak slice "
                   "as a DICOM Secondary Capture image")


def add_pacs_parser(sub: Any, error: type[Exception]) -> None:
    """The ``pacs`` command: ``pacs search [query]``."""
    p = sub.add_parser("pacs", help="search a PACS over DICOMweb")
    psub = p.add_subparsers(dest="pacs_command", required=True)
    s = psub.add_parser("search", help="list CT studies matching a query (QIDO-RS)")
    s.add_argument("--dicomweb", default="", metavar="URL", help=_URL_HELP)
    _add_query_arguments(s)
    s.add_argument("--modality", default="CT", help="ModalitiesInStudy (default CT)")
    s.add_argument("--show-identifiers", action="store_true",
                   help="also print patient ID, name and accession number (off by default)")
    s.set_defaults(func=lambda args: search_command(args, error))


def _server(args: argparse.Namespace, error: type[Exception]) -> Any:
    from hohoho_core.pacs import PacsError, server_from_env

    try:
        server = server_from_env(url=args.dicomweb or None)
    except PacsError as err:
        raise error(str(err)) from None
    if server is None:
        raise error("no DICOMweb server: pass --dicomweb URL or set HOHOHO_DICOMWEB_URL")
    return server


def _query(args: argparse.Namespace, **extra: Any) -> Any:
    from hohoho_core.pacs import DEFAULT_SEARCH_LIMIT, StudyQuery

    return StudyQuery(patient_id=args.patient_id, patient_name=args.patient_name,
                      date_from=args.date_from, date_to=args.date_to,
                      accession=args.accession,
                      limit=args.limit if args.limit is not None else DEFAULT_SEARCH_LIMIT,
                      **extra)


def search_command(args: argparse.Namespace, error: type[Exception]) -> int:
    """``pacs search``: one line per study, newest first."""
    from hohoho_core.pacs import PacsError, search_studies

    server = _server(args, error)
    try:
        found = search_studies(server, _query(args, modality=args.modality or None))
    except PacsError as err:
        raise error(str(err)) from None
    print(f"{len(found)} studies on {server.display_url}")
    for m in found:
        row = m.row(show_identifiers=args.show_identifiers)
        print("  " + " | ".join(f"{k}: {'' if v is None else v}" for k, v in row.items()))
    return 0


def dicomweb_log_path(out: Path) -> Path:
    """``predict --dicomweb``'s partial log: its own name, not ``predict PATH``'s, so the
    two modes never read each other's records."""
    return out.with_name(f".{out.name}.dicomweb.partial.jsonl")


def _probe(server: Any, uids: Sequence[str], error: type[Exception]) -> None:
    """Ask the server about the first well-formed UID of ``uids``; raise ``error`` only when
    the server cannot be reached at all. Any other answer (the study missing, an HTTP
    error) is left to that study's own retrieval, which reports it and goes on."""
    from hohoho_core.pacs import PacsError, StudyQuery, search_studies

    for uid in uids:
        probe = StudyQuery(study_uid=uid, modality=None, limit=1)
        try:
            probe.filters()
        except PacsError:
            continue  # a malformed UID fails on its own later; the others go on
        try:
            search_studies(server, probe)
        except PacsError as err:
            if "cannot reach" in str(err):
                raise error(str(err)) from None
        return


def _load_predictor(args: argparse.Namespace, weights: Path, error: type[Exception]) -> Any:
    """The `predict.Predictor` of ``weights`` as the arguments ask; torch is imported here,
    once the server has answered (importing it takes seconds)."""
    from hohoho_core.predict import Predictor
    from hohoho_core.runtime import configure_torch
    from hohoho_core.system import available_cores
    from hohoho_core.weights import WeightsError

    configure_torch(available_cores(), deterministic=True,
                    quantized_engine="auto" if args.precision == "int8" else None)
    try:
        predictor = Predictor.from_folder(weights, device=args.device or "cpu",
                                          batch_size=args.batch_size, precision=args.precision,
                                          engine=args.engine)
    except WeightsError as err:
        raise error(f"weights {weights}: {err}") from None
    except ValueError as err:  # --engine onnxruntime where it cannot run
        raise error(f"--engine {args.engine}: {err}") from None
    if getattr(args, "thin_slabs", None) is not None:
        try:
            predictor.thin_slabs = args.thin_slabs
        except ValueError as err:  # sliding with weights that stack neighbours
            raise error(f"--thin-slabs: {err}") from None
    return predictor


def predict_dicomweb(
    args: argparse.Namespace,
    error: type[Exception],
    check_out: Callable[..., None],
    default_weights: Callable[[], Path],
) -> int:
    """``predict --dicomweb``: each study (given or found) retrieved, read like an upload,
    predicted; results written like ``predict PATH``'s; with ``--store-sr`` a structured
    report per study goes back to the server, with ``--store-saliency`` saliency overlays
    as Secondary Capture images.

    Nothing predicted is lost: each series' record goes to the partial log as it finishes
    (`hohoho_core.resultlog`, as for ``predict PATH``), then a marker once the whole study
    is done. After Ctrl-C, SIGTERM or a failed study the log stays, and ``--resume`` skips
    the studies marked done without retrieving them again, and the series already logged
    of a study cut short (whose reports were stored: at most the series in flight when the
    run stopped has its reports stored again). A failure still writes the output of what
    was predicted before the error says how far it got.
    """
    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".json"):
        raise error(f"--out must end in .csv or .json, got {out.name}")
    if args.paths:
        raise error("give either study PATHs or --dicomweb, not both")
    if args.batch_size < 1:
        raise error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.sample_submission:
        raise error("--sample-submission works with study PATHs, not with --dicomweb")
    if args.series_description:
        import re

        try:
            re.compile(args.series_description)
        except re.error as err:
            raise error(f"--series-description: invalid pattern ({err})") from None
    query_given = any(getattr(args, k) for k in
                      ("patient_id", "patient_name", "date_from", "date_to", "accession"))
    if not args.study_uid and not query_given:
        raise error("--dicomweb needs --study-uid UID or a query (--patient-id, "
                    "--date-from/--date-to, --accession, --patient-name)")
    summary = [out.with_name(f"{out.stem}_studies.csv")] if out.suffix.lower() == ".csv" else []
    check_out(out, *summary)
    weights = Path(args.weights) if args.weights else default_weights()
    if not weights.is_dir():
        raise error(f"weights folder {weights} not found (pass --weights DIR or set "
                    "$HOHOHO_WEIGHTS)")
    server = _server(args, error)

    from hohoho_core.dicom import StudyLoadError, scan_source
    from hohoho_core.dicom.series import choose_series
    from hohoho_core.pacs import (
        DEFAULT_MAX_STUDY_BYTES,
        PacsError,
        retrieve_ahead,
        search_studies,
        store_instances,
    )
    from hohoho_core.resultlog import ResultLog, study_key

    try:
        uids = list(dict.fromkeys(args.study_uid or []))  # a repeated UID once
        if query_given:
            uids += [m.study_uid for m in search_studies(server, _query(args))
                     if m.study_uid not in uids]
    except PacsError as err:
        raise error(str(err)) from None
    if not uids:
        raise error(f"no CT study on {server.display_url} matches the query")
    results = ResultLog(dicomweb_log_path(out))
    if results.exists() and not args.resume:
        raise error(f"{results.path} holds the results of an interrupted run: pass --resume "
                    "to continue it, or delete that file to start again")
    if not args.resume:
        results.remove()
    results.repair()
    logged = list(results.records())
    done = {study_key(r["study_uid"], r["series_uid"]) for r in logged}
    complete = {r["study_uid"] for r in logged if r.get(_STUDY_DONE)}
    if not query_given and not logged:
        # Nothing predicted yet and the server not asked yet: one cheap request before
        # the model is built, so a server that is down or a wrong URL is reported at once,
        # not after seconds of loading weights. (With results logged, the run goes on and
        # a failure still writes them, as before.)
        _probe(server, [u for u in uids if u not in complete], error)
    # --resume: the studies the interrupted run predicted (and stored) are not retrieved.
    todo = [(n, uid) for n, uid in enumerate(uids, 1) if uid not in complete]
    # The first study is retrieved while torch and the model load, each next one while the
    # one before is read, predicted and stored.
    fetched = retrieve_ahead(server, [uid for _, uid in todo])
    try:  # until the loop's own try below, nothing may leave the retrieval running
        predictor = _load_predictor(args, weights, error)
        from hohoho_core.predict import prediction_record, write_predictions
        from hohoho_core.sr import build_sr, evidence_headers, model_identity
        from hohoho_core.sr_capture import saliency_captures

        print(f"precision: {predictor.path_note}")
        model = model_identity(predictor.config, weights)
    except BaseException:
        fetched.close()
        raise

    def _predict_one(uid: str, uploads: list[Any]) -> int:
        """Predict and log one retrieved study (its series not logged yet); objects stored."""
        n_stored = n_series = 0
        with scan_source(uploads, max_upload_bytes=DEFAULT_MAX_STUDY_BYTES,
                         max_total_upload_bytes=DEFAULT_MAX_STUDY_BYTES) as scan:
            chosen = {(s.study_uid, s.series_uid) for s in choose_series(
                scan.series, description=args.series_description, rule=args.series)}
            if not chosen:
                raise StudyLoadError("no axial CT series to predict", scan.report)
            keep = args.store_sr or args.store_saliency
            headers = evidence_headers(uploads) if keep else {}
            for study in scan.iter_studies(skip=lambda a, b: (a, b) not in chosen
                                           or study_key(a, b) in done):
                pred = predictor.predict(study)
                objects = [build_sr(pred, study, headers, model)] if args.store_sr else []
                if args.store_saliency:
                    objects += saliency_captures(pred, study, headers, predictor)
                if objects:
                    n_stored += store_instances(server, objects)
                # Logged after its objects are stored: a stop in between stores them
                # again on --resume, rather than never.
                results.append(prediction_record(pred))
                n_series += 1
            if not n_series and not any(study_key(a, b) in done for a, b in chosen):
                # Every chosen series failed to load (the others count as skipped, so
                # the reader does not raise): not done, --resume tries it again.
                raise StudyLoadError("no chosen series could be loaded", scan.report)
        results.append({"study_uid": uid, "series_uid": "", _STUDY_DONE: True})
        return n_stored

    failures: list[str] = []
    stored = predicted = 0
    try:
        for (n, uid), (_, got) in zip(todo, fetched, strict=True):
            try:
                if isinstance(got, PacsError):
                    raise got
                stored += _predict_one(uid, got)
                predicted += 1
                print(f"[{n}/{len(uids)}] study {uid}: predicted", file=sys.stderr)
            except StudyLoadError as err:
                failures.append(f"study {uid}: {err}")
            except PacsError as err:
                failures.append(str(err))
                if len(uids) == 1 or "cannot reach" in str(err):
                    break  # the server is gone: do not try every other study
    finally:
        fetched.close()

    # In the query's order, whichever run logged them.
    position = {uid: i for i, uid in enumerate(uids)}
    records = sorted((r for r in results.records() if not r.get(_STUDY_DONE)),
                     key=lambda r: position.get(r["study_uid"], len(uids)))
    if args.resume and complete:
        print(f"resumed: {len(complete & set(uids))} studies were done, {predicted} "
              "predicted now", file=sys.stderr)
    written = write_predictions(records, out) if records else []
    if not failures:
        results.remove()
    if records:
        from hohoho_core.spacing import notes_line

        n_images = sum(len(r["image_ids"]) for r in records)
        print(f"{len(records)} studies, {n_images} images -> "
              + ", ".join(str(p) for p in written))
        line = notes_line(records)
        if line is not None:
            print(line, file=sys.stderr)
    if stored:
        print(f"{stored} DICOM objects (structured reports, saliency images) stored on "
              f"{server.display_url}")
    if failures:
        kept = f" ({len(records)} studies predicted were written)" if records else ""
        more = f" (and {len(failures) - 1} more failures)" if len(failures) > 1 else ""
        raise error(f"{failures[0]}{more}{kept}; --resume retries the failed studies")
    return 0
