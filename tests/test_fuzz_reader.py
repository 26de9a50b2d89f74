"""Fuzz the reader (issue 12): a few hundred seeded mutations of real and synthetic files.

Random header values, wrong VRs, absurd lengths and sizes, truncations and flipped bytes,
each read with `read_header` and `load_study` under a per-case time limit. The reader may
only raise its own errors (`StudyLoadError`, `UnreadableFileError`), must never hang,
and `python -m hohoho_core predict` over a folder of the mutants prints no traceback.
The case count and the time go into the test run's summary (see ``conftest.py``).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from hohoho_core.dicom import StudyLoadError, UnreadableFileError, load_study, read_header
from hohoho_core.synthetic.writer import ct_dataset, write_dataset
from tests.conftest import SUMMARY_LINES, phantom_volume

N_CASES = 300
SEED = 12
CASE_SECONDS = 5.0
#: Header elements whose values, VRs and lengths are mutated: (group, element).
TARGET_TAGS = [
    (0x0002, 0x0010),  # TransferSyntaxUID
    (0x0008, 0x0016),  # SOPClassUID
    (0x0008, 0x0060),  # Modality
    (0x0018, 0x0050),  # SliceThickness
    (0x0020, 0x000D),  # StudyInstanceUID
    (0x0020, 0x000E),  # SeriesInstanceUID
    (0x0020, 0x0013),  # InstanceNumber
    (0x0020, 0x0032),  # ImagePositionPatient
    (0x0020, 0x0037),  # ImageOrientationPatient
    (0x0028, 0x0002),  # SamplesPerPixel
    (0x0028, 0x0004),  # PhotometricInterpretation
    (0x0028, 0x0010),  # Rows
    (0x0028, 0x0011),  # Columns
    (0x0028, 0x0030),  # PixelSpacing
    (0x0028, 0x0100),  # BitsAllocated
    (0x0028, 0x0101),  # BitsStored
    (0x0028, 0x0103),  # PixelRepresentation
    (0x0028, 0x1052),  # RescaleIntercept
    (0x0028, 0x1053),  # RescaleSlope
    (0x7FE0, 0x0010),  # PixelData
]
WRONG_VRS = [b"US", b"SS", b"UL", b"OB", b"OW", b"SQ", b"UN", b"DS", b"IS", b"UT", b"XX", b"\0\0"]
VALUE_FILLS = [b"\xff", b"\x00", b"9", b"-", b"\\", b"n"]
#: Whole-dataset edits with absurd sizes, written by pydicom (valid encodings).
SIZE_EDITS = [
    {"Rows": 65535, "Columns": 65535},
    {"NumberOfFrames": "1000000"},
    {"NumberOfFrames": "2000", "Rows": 512, "Columns": 512},
    {"NumberOfFrames": "0"},
    {"NumberOfFrames": "-5"},
    {"Rows": 0},
    {"Columns": 1, "Rows": 1},
    {"BitsAllocated": 1},
    {"BitsAllocated": 64, "BitsStored": 64},
    {"BitsStored": 40},
    {"SamplesPerPixel": 3},
    {"PixelSpacing": ["nan", "inf"]},
    {"ImagePositionPatient": ["1e308", "-1e308", "nan"]},
    {"ImageOrientationPatient": [0, 0, 0, 0, 0, 0]},
    {"RescaleSlope": "0", "RescaleIntercept": "1e308"},
]


class _CaseTimeout(Exception):
    pass


def _deid_ctbrain() -> Path | None:
    spec = importlib.util.find_spec("deid_data")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "humans" / "ctbrain1.dcm"
    return path if path.is_file() else None


def _seeds(folder: Path) -> dict[str, bytes]:
    seeds = {"CT_small": Path(get_testdata_file("CT_small.dcm")).read_bytes()}
    brain = _deid_ctbrain()
    if brain is not None:
        seeds["ctbrain1"] = brain.read_bytes()
    vol = phantom_volume(3, 32, seed=SEED)
    study, series = generate_uid(), generate_uid()
    for k in range(3):
        ds = ct_dataset(vol[k], study_uid=study, series_uid=series, sop_uid=generate_uid(),
                        position=(0.0, 0.0, 5.0 * k), instance_number=k + 1)
        path = folder / f"synthetic{k}.dcm"
        write_dataset(ds, path)
        seeds[f"synthetic{k}"] = path.read_bytes()
    return seeds


def _element_at(data: bytes, tag: tuple[int, int]) -> int | None:
    """Offset of an explicit-VR little-endian element's tag in ``data`` (first after 132)."""
    pos = data.find(struct.pack("<HH", *tag), 132)
    return None if pos < 0 or pos + 8 > len(data) else pos


def _mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One mutation of ``data``: (what was done, the mutated bytes)."""
    kind = rng.integers(0, 7)
    buf = bytearray(data)
    if kind == 0:
        cut = int(rng.integers(0, len(data)))
        return f"truncated at {cut}", data[:cut]
    if kind == 1:
        n = int(rng.integers(1, 24))
        for pos in rng.integers(0, len(buf), size=n):
            buf[pos] = int(rng.integers(0, 256))
        return f"{n} random bytes", bytes(buf)
    tag = TARGET_TAGS[int(rng.integers(0, len(TARGET_TAGS)))]
    pos = _element_at(data, tag)
    if pos is None:
        return "unchanged", data
    name = f"({tag[0]:04X},{tag[1]:04X})"
    if kind == 2:  # a random value of the same length
        long_vr = bytes(buf[pos + 4 : pos + 6]) in (b"OB", b"OW", b"UN", b"UT", b"SQ")
        start = pos + (12 if long_vr else 8)
        length = (
            struct.unpack("<I", buf[pos + 8 : pos + 12])[0]
            if long_vr
            else struct.unpack("<H", buf[pos + 6 : pos + 8])[0]
        )
        end = min(len(buf), start + min(length, 64))
        fill = VALUE_FILLS[int(rng.integers(0, len(VALUE_FILLS)))]
        buf[start:end] = (fill * (end - start))[: end - start]
        return f"{name} value filled with {fill!r}", bytes(buf)
    if kind == 3:  # a wrong VR
        vr = WRONG_VRS[int(rng.integers(0, len(WRONG_VRS)))]
        buf[pos + 4 : pos + 6] = vr
        return f"{name} VR {vr!r}", bytes(buf)
    if kind == 4:  # an absurd 2-byte length
        value = int(rng.choice([0, 1, 0xFFFF, int(rng.integers(0, 0x10000))]))
        buf[pos + 6 : pos + 8] = struct.pack("<H", value)
        return f"{name} short length {value}", bytes(buf)
    if kind == 5:  # an absurd 4-byte length (or the value's first bytes)
        value = int(rng.choice([0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFE, int(rng.integers(0, 2**32))]))
        buf[pos + 8 : pos + 12] = struct.pack("<I", value)
        return f"{name} long length {value}", bytes(buf)
    return "size edit", data  # kind 6: see _size_edit


def _size_edit(path: Path, data: bytes, rng: np.random.Generator) -> str:
    edit = SIZE_EDITS[int(rng.integers(0, len(SIZE_EDITS)))]
    path.write_bytes(data)
    try:
        ds = pydicom.dcmread(path, force=True)
        for key, value in edit.items():
            setattr(ds, key, value)
        ds.save_as(path)
    except Exception:  # the seed itself may not take this edit: keep it unchanged
        path.write_bytes(data)
        return "size edit not applicable"
    return f"size edit {sorted(edit)}"


def _alarm(signum, frame):  # noqa: ARG001
    raise _CaseTimeout


def _run_case(path: Path) -> str | None:
    """None when the reader behaved, else what went wrong."""
    for call in (lambda: read_header(path), lambda: load_study(path, workers=1)):
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
        try:
            call()
        except (StudyLoadError, UnreadableFileError):
            pass
        except _CaseTimeout:
            return f"took more than {CASE_SECONDS} s"
        except Exception as exc:
            return f"raised {type(exc).__name__}: {str(exc)[:200]}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return None


@pytest.mark.timeout(300)
# pydicom warns about the mutated values it converts; the test is about what is raised.
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX interval timers")
def test_fuzz_reader_raises_only_its_own_errors(tmp_path):
    seeds = _seeds(tmp_path)
    rng = np.random.default_rng(SEED)
    cases = tmp_path / "cases"
    cases.mkdir()
    names = sorted(seeds)
    failures: list[str] = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    t0 = time.perf_counter()
    try:
        for i in range(N_CASES):
            seed_name = names[i % len(names)]
            what, data = _mutate(seeds[seed_name], rng)
            path = cases / f"case{i:03d}_{seed_name}.dcm"
            if what == "size edit":
                what = _size_edit(path, data, rng)
            else:
                path.write_bytes(data)
            problem = _run_case(path)
            if problem is not None:
                failures.append(f"case {i} ({seed_name}, {what}): {problem}")
    finally:
        signal.signal(signal.SIGALRM, previous)
    seconds = time.perf_counter() - t0
    SUMMARY_LINES.append(
        f"fuzz reader: {N_CASES} mutated files from {len(seeds)} seeds, "
        f"{seconds:.1f} s, {len(failures)} failures"
    )
    assert not failures, "\n".join(failures[:20])

    # The CLI over a folder of the mutants (and the untouched synthetic slices): one line
    # per problem at most, never a traceback.
    from tests.test_predict import make_weights

    weights = make_weights(tmp_path / "weights", lstm=False)
    for k in range(3):
        (cases / f"synthetic_ok{k}.dcm").write_bytes(seeds[f"synthetic{k}"])
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "hohoho_core", "predict", str(cases), "--weights", str(weights),
         "--out", str(tmp_path / "preds.csv")],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "preds.csv").is_file()
    SUMMARY_LINES.append(
        f"fuzz reader: predict over {N_CASES + 3} files exited {proc.returncode}, no traceback "
        f"({time.perf_counter() - t0:.1f} s in all)"
    )
