"""The batch pipeline: same bytes as the serial path, a real bound, progress, precision auto."""

from __future__ import annotations

import functools
import io
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from hohoho_core.__main__ import main
from hohoho_core.batch import (
    READER_NICENESS,
    Progress,
    SkipTally,
    default_lanes,
    default_workers,
    prepared_studies,
)
from hohoho_core.dicom import scan_source
from hohoho_core.precision import (
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
from hohoho_core.preprocess import PreprocessConfig, make_input
from hohoho_core.runtime import cpu_flags
from tests.test_predict import make_weights

REPO = Path(__file__).resolve().parents[1]
AVX2 = frozenset({"sse4_2", "avx2", "fma"})
AMX = AVX2 | {"avx512f", "avx512_bf16", "amx_bf16", "amx_int8"}
ENGINES = ("x86", "fbgemm")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Weights, and a 5-study RSNA folder with a broken file and an unloadable series."""
    from hohoho_core.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("batch")
    weights = make_weights(root / "weights", size=32)
    data = root / "rsna"
    generate_dataset(data, n_studies=5, seed=7, size=64, slices=(8, 9))
    files = sorted(data.rglob("*.dcm"))
    # A truncated copy: the reader skips it as unreadable.
    (files[0].parent / "ID_broken.dcm").write_bytes(files[0].read_bytes()[:300])
    # A series of its own whose only file holds RLE data that does not decode: the header
    # scan finds the series, but no slice of it loads.
    ds = pydicom.dcmread(files[1])
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.999"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.999.1"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.999.1.1"
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(files[1].parent / "ID_badrle.dcm", enforce_file_format=False)
    return weights, data


def _run(weights: Path, data: Path, out: Path, *extra: str) -> tuple[int, str]:
    import contextlib

    err, out_text = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out_text):
        rc = main(["predict", str(data), "--weights", str(weights), "--out", str(out), *extra])
    return rc, out_text.getvalue() + err.getvalue()


def test_pipelined_output_is_the_serial_output(folder: tuple[Path, Path], tmp_path: Path) -> None:
    weights, data = folder
    serial, piped = tmp_path / "serial.csv", tmp_path / "piped.csv"
    rc0, err0 = _run(weights, data, serial, "--workers", "0")
    rc2, err2 = _run(weights, data, piped, "--workers", "2")
    assert rc0 == 0 and rc2 == 0, err0 + err2
    assert serial.read_bytes() == piped.read_bytes()
    assert (tmp_path / "serial_studies.csv").read_bytes() == \
        (tmp_path / "piped_studies.csv").read_bytes()
    n_rows = len(serial.read_text().splitlines()) - 1
    assert n_rows > 0 and n_rows % 6 == 0
    # The broken file is reported, counted by reason, the same way on both paths.
    summary = [ln for ln in err2.splitlines() if ln.startswith("skipped:")]
    assert summary == [ln for ln in err0.splitlines() if ln.startswith("skipped:")]
    assert "ID_broken.dcm" in err2 and "unreadable" in summary[0]
    assert "1 series with no usable slice" in summary[0]
    assert "precision: fp32 (auto: these weights have no measured precision table)" in err2
    assert "2 reader process(es)" in err2
    # The last progress line: 5 series (one unloadable), every slice, a rate.
    last = [ln for ln in err2.splitlines() if ln.startswith("predict: ")][-1]
    assert last.startswith("predict: 6/6 studies, ") and "slices/s, done in" in last
    assert re.search(r", CNN \d+\.\d% of the time, [\d.]+ slices/s$", last), last
    rc, quiet = _run(weights, data, tmp_path / "quiet.csv", "--quiet")
    assert rc == 0 and "predict: " not in quiet and "precision: fp32" in quiet


def _record(log: Path, tag: str, hu: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    with log.open("a") as fh:  # one line per study a worker finished preparing
        fh.write(f"{tag}\n")
    return make_input(hu, cfg)


def test_the_queue_bounds_how_far_workers_run_ahead(
    folder: tuple[Path, Path], tmp_path: Path
) -> None:
    _, data = folder
    cfg = PreprocessConfig(mode="stacked", size=32)
    log = tmp_path / "produced.txt"
    log.touch()
    workers, prefetch = 2, 1
    with scan_source(data) as scan:
        jobs = [(s.study_uid, s.series_uid) for s in scan.loadable_series()]
        assert len(jobs) == 6
        items = prepared_studies(scan, jobs, cfg, workers=workers, prefetch=prefetch,
                                 prepare=functools.partial(_record, log, "p", cfg=cfg))
        ahead = []
        got = []
        for n, item in enumerate(items, start=1):
            got.append(item)
            time.sleep(0.6)  # a slow consumer: the workers have time to run ahead
            ahead.append(len(log.read_text().splitlines()) - n)
    assert [i.index for i in got] == list(range(6))
    assert sum(i.x is None for i in got) == 1  # the series whose RLE data does not decode
    # Prepared but not yet consumed: never more than the bound, and the bound is reached.
    assert max(ahead) <= workers * prefetch
    assert max(ahead) >= 1


def test_serial_and_pipelined_items_match(folder: tuple[Path, Path]) -> None:
    _, data = folder
    cfg = PreprocessConfig(mode="stacked", size=32)
    with scan_source(data) as scan:
        every = [(s.study_uid, s.series_uid) for s in scan.loadable_series()]
        jobs = every[1:]  # a resumed run: the first one is done
        a = list(prepared_studies(scan, jobs, cfg, workers=0))
        b = list(prepared_studies(scan, jobs, cfg, workers=2))
        with pytest.raises(ValueError, match="loadable_series"):
            next(prepared_studies(scan, every[::-1], cfg, workers=2))
    assert [(i.key, i.image_ids, i.skipped) for i in a] == [(i.key, i.image_ids, i.skipped)
                                                            for i in b]
    assert [i.key for i in a] == [f"{s}/{r}" for s, r in jobs]
    for x, y in zip(a, b, strict=True):
        assert (x.x is None and y.x is None) or np.array_equal(x.x, y.x)


def test_progress_line_has_rate_count_and_time_left() -> None:
    now = [0.0]
    out = io.StringIO()
    p = Progress(10, done_before=2, stream=out, interval=5.0, clock=lambda: now[0])
    now[0] = 2.0
    p.update(40)  # 2 s since the last line: not printed yet
    assert out.getvalue() == ""
    now[0] = 8.0
    p.update(40)
    line = out.getvalue().strip()
    # 4/10 studies, 80 slices in 8 s; 6 left at 4 s each.
    assert line == "predict: 4/10 studies, 80 slices, 10.0 slices/s, about 24s left"
    # With the run's CNN timing: the share of the same seconds spent in the CNN, its rate.
    timing = CnnTiming(seconds=6.0, slices=80)
    p.cnn = timing
    assert p.line().endswith("about 24s left, CNN 75.0% of the time, 13.3 slices/s")
    quiet = io.StringIO()
    q = Progress(1, stream=quiet, interval=0.0, enabled=False)
    q.update(3)
    q.finish()
    assert quiet.getvalue() == ""


def test_skip_summary_counts_by_reason_without_identifiers() -> None:
    t = SkipTally()
    t.add("a.dcm", "unreadable")
    t.add("b.dcm", "not DICOM")
    t.add("c.dcm", "not DICOM")
    t.add("c.dcm", "unreadable")  # first reason kept
    t.series = 1
    assert t.summary() == ("skipped: 3 files (2 not DICOM, 1 unreadable); "
                           "1 series with no usable slice")
    u = SkipTally()
    u.update(t.to_dict())
    assert u.summary() == t.summary()
    assert SkipTally().summary() == "skipped: nothing"


def test_default_workers() -> None:
    assert [default_workers(c) for c in (1, 2, 3, 4, 8, 16, 64)] == [0, 0, 1, 1, 2, 4, 8]


def test_default_lanes() -> None:
    assert [default_lanes(c) for c in (1, 2, 3, 16)] == [1, 2, 2, 2]
    assert default_lanes(16, "cuda") == 1


def _table(bf16_ok: bool = True, int8_ok: bool = False) -> PrecisionTable:
    return PrecisionTable({
        "fp32": PathCheck(0.80, 0.0, 0.0, {"avx2": 100.0, "amx": 300.0}),
        "bf16": PathCheck(0.80, 0.001 if bf16_ok else 0.01, 0.01, {"avx2": 20.0, "amx": 900.0}),
        "int8": PathCheck(0.81, 0.001 if int8_ok else 0.0067, 0.019 if int8_ok else 0.2,
                          {"avx2": 250.0}, recipe="torch-default"),
    })


def test_precision_auto_resolves_from_the_measured_table() -> None:
    assert cpu_class(AVX2) == "avx2" and cpu_class(AMX) == "amx"
    # This machine's class: bf16 is not native (and was measured slower), int8 misses the bars.
    r = resolve_precision("auto", _table(), AVX2, ENGINES)
    assert r.precision == "fp32"
    assert "bf16 not native on avx2" in r.reason and "int8 misses" in r.reason
    # AMX: bf16 is native, within the bars and measured 3x faster.
    assert resolve_precision("auto", _table(), AMX, ENGINES).precision == "bf16"
    assert resolve_precision("auto", _table(bf16_ok=False), AMX, ENGINES).precision == "fp32"
    # int8 within the bars and faster on avx2: chosen there; unmeasured on AMX: not chosen.
    assert resolve_precision("auto", _table(int8_ok=True), AVX2, ENGINES).precision == "int8"
    assert resolve_precision("auto", _table(False, True), AMX, ENGINES).precision == "fp32"
    assert resolve_precision("auto", _table(int8_ok=True), AVX2, ()).precision == "fp32"
    # int8 checked with torch's default recipe proves nothing for the VNNI one (and back).
    vnni = resolve_precision("auto", _table(int8_ok=True), {*AVX2, "avx512_vnni"}, ENGINES)
    assert vnni.precision == "fp32" and "another recipe (torch-default)" in vnni.reason
    unknown = replace(_table(int8_ok=True).paths["int8"], recipe="")
    table = PrecisionTable({**_table(int8_ok=True).paths, "int8": unknown})
    assert resolve_precision("auto", table, AVX2, ENGINES).precision == "fp32"
    assert int8_recipe({*AVX2, "avx512_vnni"}, "x86") == "vnni-minmax8"
    assert int8_recipe({*AVX2, "avx512_vnni"}, "qnnpack") == "torch-default"
    assert int8_recipe({*AVX2, "avx_vnni"}, "x86") == "torch-default"
    # No table, an unmeasured CPU class, a GPU: fp32. An explicit path is kept.
    assert resolve_precision("auto", None, AMX, ENGINES).precision == "fp32"
    assert resolve_precision("auto", _table(), {"avx512f"}, ENGINES).precision == "fp32"
    assert resolve_precision("auto", _table(), AMX, ENGINES, "cuda").precision == "fp32"
    assert resolve_precision("bf16", None, AVX2, ()).describe() == "bf16 (requested)"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", None, AVX2, ())


def test_a_weaker_check_does_not_replace_a_stronger_one() -> None:
    """A bench run on a CPU that emulates bf16 checks it on a few studies: the table keeps
    the whole split's check and takes the new speed; a check over as many slices, or with
    another int8 recipe, replaces the old one; other classes' speeds and paths stay."""
    old = PrecisionTable({
        "fp32": PathCheck(0.80, 0.0, 0.0, {"amx": 300.0}, 598),
        "bf16": PathCheck(0.799, 0.0007, 0.012, {"amx": 900.0}, 598),
        "int8": PathCheck(0.78, 0.019, 0.044, {"amx": 600.0}, 598, recipe="vnni-minmax8"),
    }, test_split="split")
    new = PrecisionTable({
        "fp32": PathCheck(0.81, 0.0, 0.0, {"avx2": 63.0}, 598),
        "bf16": PathCheck(0.46, 0.0026, 0.010, {"avx2": 6.9}, 157),
        "int8": PathCheck(0.77, 0.022, 0.078, {"avx2": 85.0}, 598, recipe="torch-default"),
    }, test_split="split", n_slices=598)
    merged = merge_table(old, new)
    assert merged.test_split == "split" and merged.n_slices == 598
    fp32, bf16, int8 = (merged.paths[k] for k in ("fp32", "bf16", "int8"))
    assert fp32.macro_f2 == 0.81 and fp32.slices_per_s == {"amx": 300.0, "avx2": 63.0}
    assert (bf16.macro_f2, bf16.max_dp, bf16.n_slices) == (0.799, 0.012, 598)
    assert bf16.slices_per_s == {"amx": 900.0, "avx2": 6.9}
    assert int8.recipe == "torch-default" and int8.max_dp == 0.078
    assert int8.slices_per_s == {"amx": 600.0, "avx2": 85.0}
    # A path this run did not score stays as it was; no old table: the new one as it is.
    assert merge_table(old, replace(new, paths={"fp32": new.paths["fp32"]})).paths["bf16"] \
        == old.paths["bf16"]
    assert merge_table(None, new) == new
    # A smaller check that fails the bars contradicts the old one; new weights (another
    # split) start a new table, keeping only other classes' speeds.
    failing = replace(new.paths["bf16"], max_dp=0.05)
    contradicted = merge_table(old, replace(new, paths={**new.paths, "bf16": failing}))
    assert contradicted.paths["bf16"].max_dp == 0.05 and not contradicted.paths["bf16"].accepted
    other = merge_table(old, replace(new, test_split="another split",
                                     paths={"bf16": new.paths["bf16"]}))
    assert set(other.paths) == {"bf16"} and other.paths["bf16"].n_slices == 157
    assert other.paths["bf16"].slices_per_s == {"amx": 900.0, "avx2": 6.9}


def test_precision_table_round_trip_and_from_folder(tmp_path: Path) -> None:
    weights = make_weights(tmp_path / "w", size=32)
    assert read_table(weights) is None
    table = _table(int8_ok=True)
    write_table(weights, table)
    back = read_table(weights)
    assert back is not None and back.paths == table.paths
    doc = json.loads((weights / "precision.json").read_text())
    assert doc["paths"]["int8"]["accepted"] is True and doc["paths"]["bf16"]["accepted"]
    want = resolve_precision("auto", table, cpu_flags(), ENGINES).precision
    p = Predictor.from_folder(weights)
    assert p.precision == want and p.precision_note.startswith(f"{want} (auto: ")
    (weights / "precision.json").write_text("{not json")
    from hohoho_core.weights import WeightsError

    with pytest.raises(WeightsError, match="precision table"):
        Predictor.from_folder(weights)


def test_cpu_flags_parses_cpuinfo() -> None:
    text = "processor : 0\nflags\t\t: fpu sse avx2 amx_bf16\n\nprocessor : 1\nflags : fpu\n"
    assert cpu_flags(text) == {"fpu", "sse", "avx2", "amx_bf16"}
    assert cpu_flags("no flags here") == frozenset()


def test_bf16_path_runs_and_stays_close(tmp_path: Path) -> None:
    weights = make_weights(tmp_path / "w", size=32)
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    _, l32 = Predictor.from_folder(weights, precision="fp32").predict_input(x)
    p16 = Predictor.from_folder(weights, precision="bf16")
    _, l16 = p16.predict_input(x)
    assert l16.dtype == np.float32 and p16.precision_note == "bf16 (requested)"
    # bf16 keeps 8 bits of mantissa: close, but not bit-equal.
    assert not np.array_equal(l16, l32)
    np.testing.assert_allclose(l16, l32, atol=0.1 * max(1.0, float(np.abs(l32).max())))


def test_bf16_runs_scripted_with_eager_autocast_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the CPU the bf16 CNN is a frozen TorchScript module (it runs without Python's
    GIL, so the pipeline's reading thread does not stall it) with the arithmetic of eager
    autocast; where tracing fails the predictor keeps eager autocast and says so."""
    weights = make_weights(tmp_path / "w", size=32)
    x = np.random.default_rng(1).random((5, 3, 32, 32), dtype=np.float32)
    scripted = Predictor.from_folder(weights, precision="bf16")
    assert scripted.engine == "torch (TorchScript)"
    assert isinstance(scripted._infer_cnn, torch.jit.ScriptModule)
    assert "CNN run by torch (TorchScript)" in scripted.path_note

    def no_trace(*args: object, **kwargs: object) -> None:
        raise RuntimeError("tracing refused")

    monkeypatch.setattr(torch.jit, "trace", no_trace)
    eager = Predictor.from_folder(weights, precision="bf16")
    assert eager.engine == "torch" and not isinstance(eager._infer_cnn, torch.jit.ScriptModule)
    e_s, l_s = scripted.predict_input(x)
    e_e, l_e = eager.predict_input(x)
    assert l_s.dtype == np.float32 and e_s.shape == e_e.shape and l_s.shape == l_e.shape
    # The same bf16 arithmetic (bit-equal on the AVX2 EPYC); a fused kernel elsewhere may
    # round differently, by far less than bf16's own distance from fp32 (about 0.02 here).
    scale = max(1.0, float(np.abs(l_e).max()))
    np.testing.assert_allclose(l_s, l_e, atol=0.005 * scale)
    np.testing.assert_allclose(e_s, e_e, atol=0.005 * max(1.0, float(np.abs(e_e).max())))
    # A slice's answer does not depend on the batch it ran in.
    np.testing.assert_allclose(scripted.predict_input(x[:1])[1], l_s[:1], atol=0.005 * scale)


def _record_niceness(path: Path, hu: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    with path.open("a") as fh:  # the process that prepared the study, and its niceness
        fh.write(f"{os.getpid()} {os.nice(0)}\n")
    return make_input(hu, cfg)


def test_readers_run_at_a_lower_priority_than_the_cnn(
    folder: tuple[Path, Path], tmp_path: Path
) -> None:
    """The reader processes yield the cores to the CNN's threads (issue 16: a reader at the
    same priority stalled a CNN thread, and the other waited for it at every layer)."""
    _, data = folder
    cfg = PreprocessConfig(mode="stacked", size=32)
    log = tmp_path / "nice.txt"
    log.touch()
    with scan_source(data) as scan:
        jobs = [(s.study_uid, s.series_uid) for s in scan.loadable_series()][:3]
        items = list(prepared_studies(scan, jobs, cfg, workers=1,
                                      prepare=functools.partial(_record_niceness, log, cfg=cfg)))
    assert [i.index for i in items] == [0, 1, 2]
    seen = {tuple(map(int, line.split())) for line in log.read_text().splitlines()}
    assert {pid for pid, _ in seen}.isdisjoint({os.getpid()})  # ran in the reader process
    mine = os.nice(0)
    assert mine < 19, "the test needs room below the lowest priority"
    assert {nice for _, nice in seen} == {min(19, mine + READER_NICENESS)}


@dataclass
class _Item:
    study_uid: str
    series_uid: str
    image_ids: list[str]
    x: np.ndarray | None


def _stream_items(n_slices: Sequence[int | None], size: int = 32) -> list[_Item]:
    rng = np.random.default_rng(5)
    return [
        _Item(f"1.{i}", f"1.{i}.1", [f"ID_{i}_{j}" for j in range(n or 0)],
              None if n is None else rng.random((n, 3, size, size), dtype=np.float32))
        for i, n in enumerate(n_slices)
    ]


def test_stream_spans_studies_and_keeps_their_order(tmp_path: Path) -> None:
    """Batches span studies, yet each study's prediction is the per-study one, in the
    input order, with a series that had no usable slice in its place."""
    predictor = Predictor.from_folder(make_weights(tmp_path / "w", size=32), batch_size=8)
    items = _stream_items([11, 3, None, 20, 6, 1])
    timing = CnnTiming()
    out = list(predictor.predict_stream(items, timing=timing))
    assert [item for item, _ in out] == items
    assert timing.slices == 41 and timing.seconds > 0  # real slices, not the padding
    assert out[2][1] is None
    for item, pred in out:
        if item.x is None:
            continue
        alone = predictor.predict_prepared(item.x, item.study_uid, item.series_uid,
                                           item.image_ids)
        assert pred is not None and pred.image_ids == item.image_ids
        assert pred.prob.shape == (len(item.x), len(predictor.classes))
        np.testing.assert_allclose(pred.prob, alone.prob, atol=1e-5)
        np.testing.assert_allclose(pred.embeddings, alone.embeddings, atol=1e-5)
        assert np.array_equal(pred.labels, alone.labels)


def test_stream_output_does_not_depend_on_the_studies_before(tmp_path: Path) -> None:
    """What --resume relies on: leaving out the studies already done shifts every batch
    boundary, and the remaining studies' outputs stay bit-identical (every batch, the last
    one padded, has the same size). The shipped model at its own input size: its kernels
    for the smallest batches round differently from those for full ones (unlike a tiny
    model's; the test fails with the padding removed), and the tails below end in batches
    of 4, 7, 2, 3 and 1 slices."""
    predictor = Predictor.from_folder(REPO / "weights", precision="fp32", batch_size=8)
    items = _stream_items([10, 5, 13, 7, 2, 9], size=predictor.preprocess_config.size)
    whole = {i.study_uid: p for i, p in predictor.predict_stream(items)}
    for done in range(1, len(items)):
        rest = {i.study_uid: p for i, p in predictor.predict_stream(items[done:])}
        for uid, pred in rest.items():
            assert pred is not None
            assert np.array_equal(pred.prob, whole[uid].prob), (done, uid)
            assert np.array_equal(pred.embeddings, whole[uid].embeddings), (done, uid)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch at one intra-op thread (each lane's on two cores), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("precision", "engine"),
                         [("fp32", "torch"), ("fp32", "onnxruntime"), ("bf16", "auto")])
def test_lanes_give_the_one_lane_bits_in_order(one_thread: None, precision: str,
                                               engine: str) -> None:
    """Two lanes run two batches at once; each batch's output is what one lane gives it
    at the same thread count, so the studies come out bit-identical and in their order
    (what --resume needs), with a series without usable slices in its place. The
    shipped model at its own size, in both engines of the fp32 CNN and in bf16 (whose
    autocast is per thread, so a lane must set it itself)."""
    one = Predictor.from_folder(REPO / "weights", precision=precision, batch_size=4,
                                engine=engine)
    two = Predictor.from_folder(REPO / "weights", precision=precision, batch_size=4,
                                engine=engine, lanes=2)
    assert two.lanes == 2 and two.engine == one.engine
    assert one.engine == ("torch (TorchScript)" if precision == "bf16" else engine)
    assert "in 2 lanes" in two.path_note and "lanes" not in one.path_note
    items = _stream_items([9, 3, None, 6, 1, 5], size=one.preprocess_config.size)
    want = list(one.predict_stream(items))
    timing = CnnTiming()
    t0 = time.perf_counter()
    got = list(two.predict_stream(items, timing=timing))
    wall = time.perf_counter() - t0
    assert [item for item, _ in got] == items
    for (_, a), (_, b) in zip(want, got, strict=True):
        if a is None:
            assert b is None
            continue
        assert b is not None
        assert np.array_equal(a.prob, b.prob) and np.array_equal(a.embeddings, b.embeddings)
    # Overlapping lanes are counted once: the CNN's seconds fit in the stream's wall time.
    assert timing.slices == 24 and 0 < timing.seconds <= wall


def test_lanes_stop_cleanly_and_raise_a_lane_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing a stream part-way leaves no lane thread running; an error inside a lane
    reaches the caller."""
    import threading

    from hohoho_core import predict as predict_mod

    predictor = Predictor.from_folder(make_weights(tmp_path / "w", size=32), batch_size=2,
                                      lanes=2)
    items = _stream_items([3, 4, 5, 2, 6])
    stream = predictor.predict_stream(items)
    first_item, first = next(stream)
    assert first_item is items[0] and first is not None
    stream.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("hohoho-cnn")]

    def broken(self: Predictor, model: object, chunk: object) -> object:
        raise RuntimeError("lane failed")

    monkeypatch.setattr(predict_mod.Predictor, "_forward", broken)
    with pytest.raises(RuntimeError, match="lane failed"):
        list(predictor.predict_stream(items))
    assert not [t for t in threading.enumerate() if t.name.startswith("hohoho-cnn")]


def test_lanes_are_checked(tmp_path: Path) -> None:
    weights = make_weights(tmp_path / "w", size=32)
    with pytest.raises(ValueError, match="lanes must be >= 1"):
        Predictor.from_folder(weights, lanes=0)
    with pytest.raises(ValueError, match="CPU only"):
        Predictor.from_folder(weights, device="cuda", lanes=2)
    rc = main(["predict", str(tmp_path), "--weights", str(weights), "--out",
               str(tmp_path / "p.csv"), "--lanes", "0"])
    assert rc == 2


def test_stream_rejects_bad_input(tmp_path: Path) -> None:
    predictor = Predictor.from_folder(make_weights(tmp_path / "w", size=32), batch_size=4)
    bad = _Item("1", "1.1", ["a", "b"], np.zeros((3, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="2 image ids for 3 slices"):
        list(predictor.predict_stream([bad]))
    wrong = _Item("1", "1.1", ["a"], np.zeros((1, 5, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"expected input \[S, 3, H, W\]"):
        list(predictor.predict_stream([wrong]))


def test_batches_span_the_paths_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`predict A B` runs one stream over both folders: two 8-slice studies share one
    batch of 16 instead of one padded batch each."""
    from hohoho_core import predict as predict_mod
    from hohoho_core.synthetic import generate_dataset

    weights = make_weights(tmp_path / "w", size=32)
    for name, seed in (("a", 31), ("b", 32)):
        generate_dataset(tmp_path / name, n_studies=1, seed=seed, size=64, slices=(8, 8))
    sizes: list[int] = []
    forward = predict_mod.Predictor._forward

    def spy(self: Predictor, model: object, chunk: object) -> object:
        sizes.append(len(chunk))  # type: ignore[arg-type]
        return forward(self, model, chunk)  # type: ignore[arg-type]

    monkeypatch.setattr(predict_mod.Predictor, "_forward", spy)
    out = tmp_path / "p.csv"
    rc = main(["predict", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", str(weights),
               "--out", str(out), "--batch-size", "16", "--workers", "0", "--quiet"])
    assert rc == 0
    assert sizes == [16]
    assert len(pd.read_csv(out)) == 16 * 6  # every slice of both studies, six classes
