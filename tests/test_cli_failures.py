"""The CLI's failure modes (issue 12, point 6): each is exit code 2 and one line on stderr,
found before any work is done; broken weights configs are a `WeightsError`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hohoho_core import predict as predict_mod
from hohoho_core.__main__ import main
from hohoho_core.weights import CONFIG_FILE, ModelConfig, WeightsError
from tests.test_predict import make_weights

REPO = Path(__file__).resolve().parent.parent


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hohoho: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("failure_weights"), size=32)


def _no_predictor(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(predict_mod.Predictor, "from_folder", classmethod(refuse))


@pytest.mark.parametrize("case", ["folder", "under_a_file", "summary_is_a_folder", "sys"])
def test_unwritable_out_is_refused_before_any_work(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "a.dcm"
    src.write_bytes(b"x")
    weights = tmp_path / "weights"
    weights.mkdir()
    if case == "folder":
        out = tmp_path / "preds.csv"
        out.mkdir()
    elif case == "under_a_file":
        (tmp_path / "plain").write_text("a regular file")
        out = tmp_path / "plain" / "sub" / "preds.csv"
    elif case == "summary_is_a_folder":
        out = tmp_path / "preds.csv"
        (tmp_path / "preds_studies.csv").mkdir()
    else:
        out = Path("/sys/hohoho_cli_test.csv")  # sysfs: no regular files can be created
        if not Path("/sys").is_dir():
            pytest.skip("no /sys here")
    _no_predictor(monkeypatch)
    rc = main(["predict", str(src), "--weights", str(weights), "--out", str(out)])
    line = _one_error_line(capsys)
    assert rc == 2
    assert "--out" in line
    assert not out.is_file()


def test_index_of_an_empty_folder_exits_2_naming_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes").mkdir()
    rc = main(["index", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
    line = _one_error_line(capsys)
    assert rc == 2
    assert str(tmp_path / "stage_2_train") in line
    assert str(tmp_path / "stage_1_train_images") in line
    assert "sub-folders" in line


def test_audit_over_images_in_an_unexpected_place_says_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Images two levels down: no layout folder, no single sub-folder of .dcm files.
    deep = tmp_path / "data" / "scans" / "ct1"
    deep.mkdir(parents=True)
    (deep / "ID_1.dcm").write_bytes(b"x")
    probs = tmp_path / "probs.csv"
    probs.write_text("ID,Label\n")
    out = tmp_path / "flags.csv"
    rc = main(["audit", "--data", str(tmp_path / "data"), "--probs", str(probs), "--out", str(out)])
    line = _one_error_line(capsys)
    assert rc == 2
    assert "stage_2_train" in line and "stage_1_train_images" in line
    assert not out.exists()


BAD_CONFIGS = {
    "thresholds_number": ({"thresholds": 5}, "thresholds"),
    "classes_number": ({"classes": 5}, "classes"),
    "thresholds_strings": ({"thresholds": ["0.5"] * 6}, "thresholds"),
    "embed_dim_negative": ({"embed_dim": -512}, "embed_dim"),
    "embed_dim_string": ({"embed_dim": "512"}, "embed_dim"),
    "lstm_hidden_negative": ({"lstm": {"hidden": -8}}, "hidden"),
    "lstm_dropout_string": ({"lstm": {"dropout": "0.1"}}, "dropout"),
    "lstm_bidirectional_string": ({"lstm": {"bidirectional": "yes"}}, "bidirectional"),
    "training_list": ({"training": [1, 2]}, "training"),
}


def _config_dict(weights_dir: Path, change: dict) -> dict:
    raw = json.loads((weights_dir / CONFIG_FILE).read_text())
    for key, value in change.items():
        if key == "lstm":
            raw["lstm"] = {**raw["lstm"], **value}
        else:
            raw[key] = value
    return raw


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS) + ["lstm_hidden_huge"])
def test_config_with_wrong_types_or_sizes_is_a_weights_error(name: str, weights_dir: Path) -> None:
    change, word = BAD_CONFIGS.get(name, ({"lstm": {"hidden": 10**9}}, "hidden"))
    with pytest.raises(WeightsError, match=word):
        ModelConfig.from_dict(_config_dict(weights_dir, change))


def test_config_that_is_not_an_object_is_a_weights_error() -> None:
    with pytest.raises(WeightsError, match="JSON object"):
        ModelConfig.from_dict([["arch", "resnet18"]])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_cli_turns_a_broken_weights_config_into_one_line(
    name: str, weights_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "weights"
    broken.mkdir()
    for f in weights_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    change, word = BAD_CONFIGS[name]
    (broken / CONFIG_FILE).write_text(json.dumps(_config_dict(weights_dir, change)))
    src = tmp_path / "a.dcm"
    src.write_bytes(b"x")
    rc = main(["predict", str(src), "--weights", str(broken), "--out", str(tmp_path / "p.csv")])
    line = _one_error_line(capsys)
    assert rc == 2
    assert word in line


def test_unexpected_errors_are_one_line_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hohoho_core.rsna as rsna

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyError("Doe^Jane")  # an internal bug whose text could be file contents

    monkeypatch.setattr(rsna, "build_index", boom)
    monkeypatch.delenv("HOHOHO_DEBUG", raising=False)
    rc = main(["index", str(tmp_path)])
    line = _one_error_line(capsys)
    assert rc == 2
    assert "KeyError" in line and "Doe^Jane" not in line


def test_write_failure_after_predicting_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A disk that fails at the end (after the checks passed) is still one line, exit 2."""
    import hohoho_core.dicom as dicom
    from hohoho_core.study import LoadReport

    class NoStudies:
        """A scan that finds nothing (the write at the end is what fails here)."""

        series: list = []
        report = LoadReport()

        def loadable_series(self) -> list:
            return []

        def iter_studies(self, **_: object) -> list:
            return []

        def __enter__(self) -> NoStudies:
            return self

        def __exit__(self, *_: object) -> None:
            return None

    def full_disk(records: object, out: object) -> None:
        raise OSError(28, "No space left on device", str(out))

    monkeypatch.setattr(dicom, "scan_source", lambda src: NoStudies())
    monkeypatch.setattr(predict_mod, "write_predictions", full_disk)
    class NoModel:  # there is nothing to predict: the stream passes the (no) items through
        engine = "torch"

        def predict_stream(self, items: Any, timing: object = None) -> Any:
            return ((item, None) for item in items)

    monkeypatch.setattr(predict_mod.Predictor, "from_folder",
                        classmethod(lambda *a, **k: NoModel()))
    src = tmp_path / "a.dcm"
    src.write_bytes(b"x")
    weights = tmp_path / "w"
    weights.mkdir()
    rc = main(["predict", str(src), "--weights", str(weights), "--out", str(tmp_path / "p.csv")])
    line = _one_error_line(capsys)
    assert rc == 2
    assert "No space left on device" in line


def test_cli_process_index_of_empty_folder(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}
    proc = subprocess.run(
        [sys.executable, "-m", "hohoho_core", "index", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "stage_1_train_images" in proc.stderr
