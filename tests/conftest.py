"""Shared test fixtures: small phantom CT volumes and series written as DICOM files.

Everything here is small (64 px, a handful of slices) so tests stay fast on two cores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydicom.uid import generate_uid


@pytest.fixture(autouse=True)
def _torch_threads_restored() -> Iterator[None]:
    """Entry points called in-process (``main([...])``) set torch's process-wide thread count
    (predict: the cores over its CNN lanes); a later test must not inherit it, or its floats
    depend on which tests ran before it."""
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


def phantom_volume(n_slices: int = 6, size: int = 64, seed: int = 0) -> np.ndarray:
    """A head-like HU volume ``[S, size, size]`` (float32, integer values).

    Air outside (-1000), a bone ring (1000), brain inside (30-40) and one small bright
    blob (70) whose place and each slice's mean brain value change with the slice
    index, so a wrong slice order shows up in a comparison.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    vol = np.full((n_slices, size, size), -1000.0, dtype=np.float32)
    for k in range(n_slices):
        sl = vol[k]
        sl[r < 0.9] = 1000.0
        sl[r < 0.8] = 30.0 + (k % 10) + rng.integers(0, 3, size=(r < 0.8).sum())
        cy, cx = size // 2 + (k % 5) - 2, size // 3 + k % 7
        sl[(yy - cy) ** 2 + (xx - cx) ** 2 < (size // 12) ** 2] = 70.0
    return vol


@dataclass
class WrittenSeries:
    """A series written by `write_ct_series`; ``paths[k]`` holds ``hu[k]`` (true order)."""

    paths: list[Path]
    hu: np.ndarray  # float32 [S, H, W], slice 0 lowest along the normal
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    positions: list[tuple[float, float, float]]


def _tilted_orientation(tilt_deg: float) -> tuple[float, ...]:
    """Gantry tilt: the column direction leans by ``tilt_deg`` about the x axis."""
    t = np.deg2rad(tilt_deg)
    return (1.0, 0.0, 0.0, 0.0, float(np.cos(t)), float(-np.sin(t)))


@pytest.fixture
def write_ct_series() -> Callable[..., WrittenSeries]:
    """Factory: write a phantom CT series into a folder (needs `hohoho_core.synthetic.writer`).

    Call as ``write_ct_series(folder, n_slices=6, size=64, spacing=5.0, tilt_deg=0.0,
    names=None, instance_numbers=None, hu=None, seed=0, study_uid=None, series_uid=None,
    origin=(-16.0, -16.0, 0.0), in_plane_shift=None, orientation=None,
    **ct_dataset_kwargs)``; ``orientation`` overrides the one ``tilt_deg`` gives.
    ``names`` and ``instance_numbers`` are given in true slice order; ``in_plane_shift[k]``
    moves slice k within its own plane (mm along the column direction), which changes
    its z coordinate but not its place along the normal.
    """
    from hohoho_core.synthetic.writer import ct_dataset, write_dataset

    def _write(
        folder: Path,
        n_slices: int = 6,
        size: int = 64,
        *,
        spacing: float = 5.0,
        tilt_deg: float = 0.0,
        names: Sequence[str] | None = None,
        instance_numbers: Sequence[int] | None = None,
        hu: np.ndarray | None = None,
        seed: int = 0,
        study_uid: str | None = None,
        series_uid: str | None = None,
        origin: tuple[float, float, float] = (-16.0, -16.0, 0.0),
        in_plane_shift: Sequence[float] | None = None,
        orientation: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> WrittenSeries:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vol = phantom_volume(n_slices, size, seed) if hu is None else np.asarray(hu, np.float32)
        study_uid = study_uid or generate_uid()
        series_uid = series_uid or generate_uid()
        if orientation is None:
            orientation = _tilted_orientation(tilt_deg)
        orientation = tuple(float(v) for v in orientation)
        o = np.asarray(orientation)
        normal = np.cross(o[:3], o[3:])
        paths, sops, positions = [], [], []
        for k in range(vol.shape[0]):
            p = np.asarray(origin, dtype=np.float64) + k * spacing * normal
            if in_plane_shift is not None:
                p = p + in_plane_shift[k] * o[3:]
            pos = (float(p[0]), float(p[1]), float(p[2]))
            sop = generate_uid()
            ds = ct_dataset(
                vol[k],
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=sop,
                position=pos,
                orientation=orientation,
                instance_number=instance_numbers[k] if instance_numbers is not None else k + 1,
                **kwargs,
            )
            name = names[k] if names is not None else f"IM{k + 1:04d}.dcm"
            path = folder / name
            write_dataset(ds, path)
            paths.append(path)
            sops.append(sop)
            positions.append(pos)
        return WrittenSeries(paths, vol, study_uid, series_uid, sops, positions)

    return _write


#: Lines tests record for the end of the run (the fuzz test's case count and seconds).
SUMMARY_LINES: list[str] = []


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """Print what tests recorded in `SUMMARY_LINES` (shown by a default ``make test``)."""
    if SUMMARY_LINES:
        terminalreporter.section("reader fuzz")
        for line in SUMMARY_LINES:
            terminalreporter.write_line(line)


# --------------------------------------------------------------------------- PACS
# A real Orthanc (tests/pacs_fixture.py), one per test session, loaded with three small
# phantom studies over STOW-RS; a second one with basic authentication on.


@pytest.fixture(scope="session")
def pacs_studies(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    from tests.pacs_fixture import synthetic_studies

    return synthetic_studies(tmp_path_factory.mktemp("pacs_data"))


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory, pacs_studies: list[Any]) -> Any:
    from tests.pacs_fixture import load_studies, running_orthanc

    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        load_studies(server, pacs_studies)
        yield server


@pytest.fixture(scope="session")
def orthanc_auth(tmp_path_factory: pytest.TempPathFactory, pacs_studies: list[Any]) -> Any:
    from tests.pacs_fixture import load_studies, running_orthanc

    root = tmp_path_factory.mktemp("orthanc_auth")
    with running_orthanc(root, user="radiologist", password="pw-Z7q!secret") as server:
        load_studies(server, pacs_studies[:1])
        yield server
