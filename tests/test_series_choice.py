"""Series selection for hospital exports (thin and thick reconstructions of one exam)."""

from __future__ import annotations

import csv
from pathlib import Path

import pydicom
import pytest

from hohoho_core.__main__ import main
from hohoho_core.dicom import scan_source
from hohoho_core.dicom.series import choose_series
from tests.test_predict import make_weights


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("series_weights"))


def _describe(paths: list[Path], text: str, thickness: float) -> None:
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.SeriesDescription = text
        ds.SliceThickness = thickness
        ds.save_as(p)


@pytest.fixture
def exam(tmp_path: Path, write_ct_series) -> tuple[Path, str, str]:
    """One study, two axial series: thick 5 mm and thin 1 mm (with a bone kernel name)."""
    thick = write_ct_series(tmp_path / "exam" / "thick", n_slices=4, spacing=5.0)
    thin = write_ct_series(tmp_path / "exam" / "thin", n_slices=8, spacing=1.0,
                           study_uid=thick.study_uid, seed=1)
    _describe(thick.paths, "HEAD 5mm", 5.0)
    _describe(thin.paths, "HEAD 1mm BONE", 1.0)
    return tmp_path / "exam", thick.series_uid, thin.series_uid


def _series_scored(out: Path) -> list[str]:
    rows = list(csv.DictReader(out.with_name(f"{out.stem}_studies.csv").open()))
    return [r["series_uid"] for r in rows]


def test_choose_series_rules(exam: tuple[Path, str, str]) -> None:
    folder, thick, thin = exam
    with scan_source(folder) as scan:
        series = scan.series
    assert {s.series_uid for s in choose_series(series)} == {thick, thin}
    assert [s.series_uid for s in choose_series(series, rule="thinnest")] == [thin]
    assert [s.series_uid for s in choose_series(series, rule="thickest")] == [thick]
    assert [s.series_uid for s in choose_series(series, description="5 ?mm")] == [thick]
    assert [s.series_uid for s in choose_series(series, description="bone")] == [thin]
    with pytest.raises(ValueError, match="pattern"):
        choose_series(series, description="(")


def test_predict_scores_only_the_chosen_series(
    exam: tuple[Path, str, str], weights_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, thick, thin = exam
    out = tmp_path / "p.csv"
    base = ["predict", str(folder), "--weights", str(weights_dir), "--out", str(out)]
    assert main(base) == 0
    assert sorted(_series_scored(out)) == sorted([thick, thin])
    assert main([*base, "--series", "thickest"]) == 0
    assert _series_scored(out) == [thick]
    assert main([*base, "--series-description", "bone"]) == 0
    assert _series_scored(out) == [thin]
    capsys.readouterr()
    assert main([*base, "--series-description", "sagittal"]) == 2
    assert "no axial series matches" in capsys.readouterr().err
    assert main([*base, "--series-description", "("]) == 2
