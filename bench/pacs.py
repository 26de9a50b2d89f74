"""7. PACS: DICOMweb search and retrieval of one 40-slice study from Orthanc on loopback.

    python -m bench.pacs            # runs this section and merges it into bench/results.*

Starts the tests' Orthanc (`tests.pacs_fixture.running_orthanc`: its own configuration
and storage, free loopback port), stores one synthetic 40-slice 512 x 512 study over
STOW-RS, then times, as medians after a warm-up: a QIDO-RS study search, the WADO-RS
retrieval of every instance (`hohoho_core.pacs.retrieve_study`) and retrieval plus the
ordinary reader (`scan_pacs_study` + `load`), and once the structured report's build
and STOW-RS store. Client and server share the machine's cores.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Section, cpu_snapshot, machine_info, other_load, time_call
from bench.context import FULL, REPO_ROOT, BenchContext
from hohoho_core.system import available_cores

__all__ = ["run"]

TITLE = "7. PACS (DICOMweb, Orthanc on loopback)"
SLICES = 40
PX = 512
REPEATS = 5


def _orthanc_version() -> str:
    try:
        out = subprocess.run(["/usr/sbin/Orthanc", "--version"], capture_output=True,
                             text=True, timeout=20).stdout.splitlines()
        return out[0].split()[-1] if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def run(ctx: BenchContext) -> Section:
    import pydicom

    from hohoho_core.pacs import (
        DicomwebServer,
        StudyQuery,
        retrieve_study,
        scan_pacs_study,
        search_studies,
        store_instances,
    )
    from hohoho_core.predict import Predictor
    from hohoho_core.sr import build_sr, evidence_headers, model_identity
    from hohoho_core.synthetic import generate_dataset
    from tests.pacs_fixture import running_orthanc

    sec = Section("pacs", TITLE)
    data = ctx.work / f"pacs_{SLICES}x{PX}"
    if not (data / "stage_2_train.csv").is_file():
        generate_dataset(data, 1, ctx.sizes.seed, size=PX, slices=(SLICES, SLICES))
    datasets = [pydicom.dcmread(p) for p in sorted((data / "stage_2_train").glob("*.dcm"))]
    for ds in datasets:
        ds.PatientID, ds.AccessionNumber = "BENCH001", "BENCHACC1"
    uid = str(datasets[0].StudyInstanceUID)
    nbytes = sum(p.stat().st_size for p in (data / "stage_2_train").glob("*.dcm"))
    sec.params.update({
        "server": f"Orthanc {_orthanc_version()} + DICOMweb plugin, 127.0.0.1, own "
                  "temporary storage, same machine as the client",
        "study": f"{len(datasets)} slices of {PX}x{PX} px, synthetic, {nbytes / 2**20:.1f} MiB "
                 "of DICOM files",
        "client": "hohoho_core.pacs (dicomweb-client 0.61.2, requests)",
    })
    with tempfile.TemporaryDirectory(prefix="hohoho_bench_pacs_") as tmp, \
            running_orthanc(Path(tmp)) as orthanc:
        server = DicomwebServer(orthanc.dicomweb_url)
        t0 = time.perf_counter()
        store_instances(server, datasets)
        sec.add("store the study (STOW-RS)", time.perf_counter() - t0, "s",
                "one request, 40 instances; once")
        search = time_call(lambda: search_studies(server, StudyQuery(patient_id="BENCH001")),
                           repeats=REPEATS, warmup=1)
        sec.add("search (QIDO-RS, patient ID)", search.median, "s",
                f"median of {search.n}, 1 study found", search)
        fetch = time_call(lambda: retrieve_study(server, uid), repeats=REPEATS, warmup=1)
        sec.add("retrieve the study (WADO-RS)", fetch.median, "s",
                f"QIDO count + every instance as Part-10 bytes; median of {fetch.n}; "
                f"{nbytes / 2**20 / fetch.median:.0f} MiB/s", fetch)

        def retrieve_and_read() -> None:
            with scan_pacs_study(server, uid) as scan:
                scan.load()

        full = time_call(retrieve_and_read, repeats=REPEATS, warmup=1)
        sec.add("retrieve + read into a Study", full.median, "s",
                f"the upload reader (headers, bounds, order, HU volume); median of {full.n}",
                full)
        predictor = Predictor.from_folder(REPO_ROOT / "weights", device="cpu")
        uploads = retrieve_study(server, uid)
        with scan_pacs_study(server, uid) as scan:
            study = scan.load()
        pred = predictor.predict(study)
        t0 = time.perf_counter()
        sr = build_sr(pred, study, evidence_headers(uploads),
                      model_identity(predictor.config, REPO_ROOT / "weights"))
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        store_instances(server, [sr])
        sec.add("structured report: build / store (STOW-RS)",
                f"{built:.3f} / {time.perf_counter() - t0:.3f}", "s", "once each")
    return sec


def main() -> int:
    """Run this section and merge it into bench/results.json and results.md."""
    from bench.report import merge, render_markdown

    out_dir = REPO_ROOT / "bench"
    old = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    before = cpu_snapshot()
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    sec = run(BenchContext(FULL, REPO_ROOT / "data" / "bench", available_cores()))
    sec.seconds = time.perf_counter() - t0
    others = other_load(before, cpu_snapshot())
    sec.params["CPU used by other processes"] = f"{others:.2f} of {available_cores()} cores"
    sec.params["load average (1 min) at start"] = f"{load:.2f}"
    info = machine_info()
    shared = others >= 0.25 * available_cores()  # a quarter of the cores busy elsewhere
    sec.params["machine"] = (f"{info.get('cores', available_cores())} cores of "
                             f"{info.get('cpu', '?')}, no GPU"
                             + ("; shared with other jobs while measured" if shared else ""))
    if shared:
        sec.notes.append("The machine was shared with other processes during this run (see "
                         "the load above): these timings are inflated by time-sharing.")
    record = sec.to_dict()
    record.update(created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                  command="python -m bench.pacs")
    # results.json: this section merged in. results.md: only this section's block is
    # replaced or appended, so the other sections' text stays as it is.
    merged = merge(old, {**{k: v for k, v in old.items() if k != "sections"},
                         "sections": {"pacs": record}})
    (out_dir / "results.json").write_text(json.dumps(merged, indent=1, default=str) + "\n",
                                          encoding="utf-8")
    alone = render_markdown({**merged, "sections": {"pacs": record}})
    block = alone[alone.index(f"## {TITLE}"):].rstrip() + "\n"
    block = block.replace("_From an earlier run: ", "_Measured on its own (not by bench.run_all): ")
    md = (out_dir / "results.md").read_text(encoding="utf-8")
    start = md.find(f"## {TITLE}")
    if start >= 0:
        end = md.find("\n## ", start + 1)
        md = md[:start] + block + ("\n" + md[end + 1:] if end >= 0 else "")
    else:
        md = md.rstrip() + "\n\n" + block
    (out_dir / "results.md").write_text(md, encoding="utf-8")
    print(f"wrote {out_dir / 'results.md'}: section {TITLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
