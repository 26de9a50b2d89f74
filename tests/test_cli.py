"""The command line: predict over an RSNA-layout folder, errors, index, audit, torchrun."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hohoho_core.__main__ import main
from hohoho_core.labels import CLASSES
from tests.test_predict import make_weights

REPO = Path(__file__).resolve().parent.parent
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-7731"


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("cli_weights"))


@pytest.fixture(scope="module")
def rsna_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic studies in the RSNA layout (size 128)."""
    from hohoho_core.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("rsna")
    # Few slices per study keep the module fast on two shared cores.
    generate_dataset(root, n_studies=3, seed=7, size=128, slices=(8, 10))
    return root


@pytest.fixture(scope="module")
def rsna_preds(
    rsna_dir: Path, weights_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, int, str]:
    """One single-process ``predict`` over the RSNA folder: (CSV, exit code, stdout)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("preds") / "preds.csv"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["predict", str(rsna_dir), "--weights", str(weights_dir), "--out", str(out)])
    return out, rc, buf.getvalue()


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_predict_rsna_folder_writes_submission_csv(
    rsna_dir: Path, rsna_preds: tuple[Path, int, str]
) -> None:
    out, rc, stdout = rsna_preds
    assert rc == 0
    rows = _read_csv(out)
    assert rows[0] == ["ID", "Label"]
    body = rows[1:]
    stems = sorted(p.stem for p in (rsna_dir / "stage_2_train").glob("*.dcm"))
    assert len(stems) > 3 and len(body) == 6 * len(stems)
    by_image: dict[str, list[str]] = {}
    for row_id, label in body:
        image, cls = row_id.rsplit("_", 1)
        by_image.setdefault(image, []).append(cls)
        assert 0.0 <= float(label) <= 1.0
    assert sorted(by_image) == stems  # IDs are the DICOM file stems, "ID_" not doubled
    assert all(classes == list(CLASSES) for classes in by_image.values())
    studies = list(csv.DictReader(out.with_name("preds_studies.csv").open()))
    assert len(studies) == 3
    assert sum(int(s["n_slices"]) for s in studies) == len(stems)
    assert {f"max_{c}" for c in CLASSES} | {f"positive_{c}" for c in CLASSES} <= set(studies[0])
    # The labels file and the predictions cover the same images.
    labelled = {r[0].rsplit("_", 1)[0] for r in _read_csv(rsna_dir / "stage_2_train.csv")[1:]}
    assert labelled == set(stems)
    assert "3 studies" in stdout


def test_predict_zip_folder_and_file_to_json_with_env_weights(
    tmp_path: Path,
    weights_dir: Path,
    write_ct_series,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a = write_ct_series(tmp_path / "a", 4, seed=1, patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
    b = write_ct_series(tmp_path / "b", 3, seed=2, patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
    monkeypatch.setenv("HOHOHO_WEIGHTS", str(weights_dir))
    archive = tmp_path / "b.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in b.paths:
            zf.write(p, f"series/{p.name}")
    out = tmp_path / "out" / "preds.json"
    single = a.paths[2]
    rc = main(["predict", str(archive), str(tmp_path / "a"), str(single), "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    doc = json.loads(text)
    assert [s["series_uid"] for s in doc["studies"]] == [b.series_uid, a.series_uid, a.series_uid]
    assert [len(s["image_ids"]) for s in doc["studies"]] == [3, 4, 1]
    # Non-RSNA files: the image id is the SOPInstanceUID.
    assert set(doc["studies"][1]["image_ids"]) == set(a.sop_uids)
    assert doc["studies"][2]["image_ids"] == [a.sop_uids[2]]
    assert np.asarray(doc["studies"][0]["prob"]).shape == (3, 6)
    captured = capsys.readouterr()
    for blob in (text, captured.out, captured.err):
        assert PATIENT_NAME not in blob and PATIENT_ID not in blob


def test_unusable_input_exits_2_with_one_line(
    tmp_path: Path, weights_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a DICOM file")
    cases = [
        (["predict", str(tmp_path / "absent")], "no such file"),
        (["predict", str(junk), "--weights", str(weights_dir)], "junk"),
        (["predict", str(junk), "--weights", str(weights_dir), "--out", "p.txt"], ".csv or .json"),
        (["predict", str(junk), "--weights", str(tmp_path / "none")], "weights folder"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("hohoho: error:") and needle in err and "\n" not in err


def test_pickle_in_weights_folder_is_refused(
    tmp_path: Path, rsna_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_weights(tmp_path / "w")
    (folder / "model.pt").write_bytes(b"\x80\x04K\x01.")  # pickle of the int 1
    out = tmp_path / "preds.csv"
    assert main(["predict", str(rsna_dir), "--weights", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pickle" in err and "Traceback" not in err and not out.exists()


def test_cli_process_exit_code_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hohoho_core", "predict", str(tmp_path / "missing.zip")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "missing.zip" in proc.stderr


def test_index_prints_counts(
    rsna_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n_files = len(list((rsna_dir / "stage_2_train").glob("*.dcm")))
    rc = main(["index", str(rsna_dir), "--workers", "1", "--cache-dir", str(tmp_path / "c")])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"slices: {n_files}" in out and "studies: 3" in out
    assert "missing labels (file, no label): 0" in out
    assert main(["index", str(tmp_path / "absent")]) == 2


def test_audit_from_predictions(
    rsna_dir: Path,
    rsna_preds: tuple[Path, int, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    probs = rsna_preds[0]  # the model's predictions stand in for out-of-fold probabilities
    flags = tmp_path / "flags.csv"
    rc = main(["audit", "--data", str(rsna_dir), "--probs", str(probs), "--out", str(flags)])
    assert rc == 0
    rows = list(csv.DictReader(flags.open()))
    n_files = len(list((rsna_dir / "stage_2_train").glob("*.dcm")))
    assert 0 < len(rows) <= n_files * len(CLASSES)
    assert (
        main(
            [
                "audit",
                "--data",
                str(rsna_dir),
                "--probs",
                str(tmp_path / "x.csv"),
                "--out",
                str(flags),
            ]
        )
        == 2
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_torchrun_two_processes_match_one(
    rsna_dir: Path, weights_dir: Path, rsna_preds: tuple[Path, int, str], tmp_path: Path
) -> None:
    single = rsna_preds[0]
    merged = tmp_path / "merged.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("torchrun")),
            "--nproc-per-node=2",
            "--master-addr=127.0.0.1",
            f"--master-port={_free_port()}",
            "-m",
            "hohoho_core",
            "predict",
            str(rsna_dir),
            "--weights",
            str(weights_dir),
            "--out",
            str(merged),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = _read_csv(single), _read_csv(merged)
    assert [r[0] for r in a] == [r[0] for r in b]  # same rows, same order
    np.testing.assert_allclose(
        [float(r[1]) for r in a[1:]], [float(r[1]) for r in b[1:]], rtol=1e-4, atol=1e-6
    )
    assert _read_csv(single.with_name("preds_studies.csv")) == _read_csv(
        tmp_path / "merged_studies.csv"
    )
    assert not list(tmp_path.glob(".merged.csv.part*"))  # part files cleaned up


def test_distributed_helpers_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    from hohoho_core import distributed as D

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = D.init_distributed()
    assert (info.rank, info.world_size, info.distributed) == (0, 1, False)
    assert D.is_main_process() and D.get_world_size() == 1
    D.barrier()  # no-op without a process group
    # A one-process torchrun environment joins a real gloo group.
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    try:
        info = D.init_distributed()
        assert info.distributed and info.device.type == "cpu"
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert D.init_distributed() == info  # a second call does not re-join
        D.barrier()
        assert D.is_main_process()
    finally:
        D.cleanup()
    assert not dist.is_initialized()
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="RANK=3"):
        D.init_distributed()


def test_shard_is_a_disjoint_cover() -> None:
    from hohoho_core.distributed import shard

    items = list(range(10))
    parts = [shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(sum(parts, [])) == items
    with pytest.raises(ValueError):
        shard(items, 3, 3)


def test_predict_int8_precision_is_close_to_fp32(
    rsna_dir: Path, weights_dir: Path, rsna_preds: tuple[Path, int, str], tmp_path: Path
) -> None:
    """--precision int8 runs the quantised CNN: same rows, probabilities near fp32's."""
    import contextlib
    import io

    out = tmp_path / "int8.csv"
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(
            ["predict", str(rsna_dir), "--weights", str(weights_dir), "--out", str(out),
             "--precision", "int8"]
        )
    assert rc == 0
    fp32 = dict(_read_csv(rsna_preds[0])[1:])
    int8 = dict(_read_csv(out)[1:])
    assert fp32.keys() == int8.keys()
    diffs = [abs(float(fp32[k]) - float(int8[k])) for k in fp32]
    assert max(diffs) < 0.1  # quantised, not identical
    assert max(diffs) > 0.0
