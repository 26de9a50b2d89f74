"""A real PACS for the tests: Orthanc with its DICOMweb plugin on a free loopback port.

`running_orthanc` writes a JSON configuration into a temporary folder (free HTTP and
DICOM ports, storage and index folders there, remote access off, optional basic
authentication), starts ``Orthanc``, waits until ``/system`` answers, and stops it
afterwards (terminate, wait, kill). `synthetic_studies` makes small phantom studies with
distinct patient IDs, dates and accession numbers, and `load_studies` sends them over
STOW-RS. A missing Orthanc is an error, not a skip: ``make test`` installs it (``make pacs``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import requests

ORTHANC = os.environ.get("HOHOHO_ORTHANC", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
MISSING = (
    "Orthanc with its DICOMweb plugin is needed for the PACS tests: run `make pacs` "
    "(Debian packages orthanc and orthanc-dicomweb)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    """A running Orthanc: its DICOMweb root and, with authentication on, its user."""

    port: int
    root: Path
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.user, self.password) if self.user and self.password else None


def check_installed() -> None:
    """Fail (not skip) with the install command when Orthanc or the plugin is missing."""
    if not (shutil.which(ORTHANC) or Path(ORTHANC).is_file()) or not Path(DICOMWEB_PLUGIN).exists():
        raise RuntimeError(MISSING)


@contextlib.contextmanager
def running_orthanc(root: Path, user: str | None = None, password: str | None = None,
                    timeout_s: float = 60.0) -> Iterator[Orthanc]:
    """Start Orthanc in ``root`` (config, storage, index, log); stop it on exit."""
    check_installed()
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "HOHOHO test PACS",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "HttpPort": port,
        "DicomPort": free_port(),  # 1.10 cannot switch the DICOM server off; a free port
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(user),
        "RegisteredUsers": {user: password} if user else {},
        "HttpDescribeErrors": False,
        "StorageCompression": False,
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 8,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }
    cfg = root / "orthanc.json"
    cfg.write_text(json.dumps(config), encoding="utf-8")
    with open(root / "orthanc.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                cwd=root)
    server = Orthanc(port=port, root=root, user=user, password=password)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                tail = (root / "orthanc.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Orthanc exited with code {proc.returncode}:\n{tail}")
            try:
                r = requests.get(f"http://127.0.0.1:{port}/system", auth=server.auth,
                                 timeout=2)
                if r.status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not answer /system within {timeout_s:g} s")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass(frozen=True)
class SyntheticPacsStudy:
    """One phantom study as sent to the PACS (headers hold these values)."""

    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str  # YYYYMMDD
    accession: str
    datasets: Sequence[pydicom.Dataset] = field(repr=False)


def synthetic_studies(folder: Path, n_studies: int = 3, seed: int = 7, size: int = 64,
                      slices: tuple[int, int] = (10, 12)) -> list[SyntheticPacsStudy]:
    """Phantom studies (`hohoho_core.synthetic`) given distinct patients, dates and
    accession numbers: study k is patient ``PAT00k``, ``DOE^PATIENT{k}``, 2019-01-(10+k)."""
    from hohoho_core.synthetic import generate_dataset

    generate_dataset(folder, n_studies, seed, size=size, slices=slices)
    by_study: dict[str, list[pydicom.Dataset]] = {}
    for path in sorted((folder / "stage_2_train").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    out = []
    for k, (uid, datasets) in enumerate(sorted(by_study.items())):
        pid, name = f"PAT{k:03d}", f"DOE^PATIENT{k}"
        date, acc = f"201901{10 + k:02d}", f"ACC{k:04d}"
        for ds in datasets:
            ds.PatientID, ds.PatientName, ds.StudyDate, ds.AccessionNumber = pid, name, date, acc
        out.append(SyntheticPacsStudy(uid, pid, name, date, acc, datasets))
    return out


def load_studies(server: Orthanc, studies: Sequence[SyntheticPacsStudy]) -> None:
    """Send every study over STOW-RS (dicomweb-client directly, not the code under test)."""
    from dicomweb_client import DICOMwebClient

    session = requests.Session()
    if server.auth:
        session.auth = server.auth
    client = DICOMwebClient(server.dicomweb_url, session=session)
    for s in studies:
        client.store_instances(list(s.datasets), study_instance_uid=s.study_uid)
