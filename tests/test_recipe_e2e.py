"""The RSNA recipe of train/README.md, run end to end on tiny synthetic data (issue 15).

Steps 2 to 6 run exactly as the README writes them (its shell variables pointed at a
temporary RSNA-layout folder), with two kinds of change only, both listed here: torchrun
starts 2 CPU processes instead of 4 GPUs, and each command gets scale-only flags appended
(argparse keeps the last value), so that a run takes seconds. A flag renamed in a script,
a step that no longer feeds the next one, or a submission check that stops working fails
this test, not a researcher's GPU run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hohoho_core.labels import CLASSES
from tests.test_recipe_docs import _blocks

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

#: Scale-only overrides, appended to the README's command of each module.
SCALE: dict[str, list[str]] = {
    "train.train_cnn": ["--size", "32", "--epochs", "1", "--batch-size", "4", "--workers", "0",
                        "--prep-workers", "1", "--threads", "1"],
    "train.extract_embeddings": ["--batch-size", "8", "--threads", "1"],
    "train.train_lstm": ["--epochs", "2", "--hidden", "16", "--threads", "1"],
}


def _steps() -> dict[str, str]:
    """The RSNA section's numbered steps: ``{"2": text, "3": text, ...}``."""
    text = (REPO / "train" / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Training on the RSNA 2019 data"):text.index("## Your own DICOM")]
    parts = re.split(r"^### (\d+)\. ", section, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _lines(step: str, env: dict[str, str]) -> list[str]:
    """Command lines of a step's bash blocks, continuations joined, VAR="..." assignments
    recorded in ``env`` (so later steps see them), comments dropped."""
    out = []
    for block in _blocks(step):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            m = re.fullmatch(r'([A-Z_]+)="(.*)"', line)
            if m:
                env[m.group(1)] = re.sub(r"\$(\w+)", lambda v: env[v.group(1)], m.group(2))
                continue
            out.append(line)
    return out


def _run(line: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    line = re.sub(r"\$(\w+)", lambda v: env[v.group(1)], line)
    line = line.replace("--nproc_per_node 4", "--nproc_per_node 2")  # 2 CPU processes
    module = re.search(r"-m (\S+)", line)
    extra = SCALE.get(module.group(1), []) if module else []
    cmd = line.split() + extra
    cmd[0] = cmd[0].replace(".venv/bin/", f"{VENV_BIN}/")
    proc_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, cwd=cwd, env=proc_env, capture_output=True, text=True,
                          timeout=400)


def _ok(res: subprocess.CompletedProcess) -> str:
    if res.returncode != 0:
        pytest.fail(f"{' '.join(res.args)}\nexit {res.returncode}\n{res.stdout[-3000:]}\n"
                    f"{res.stderr[-5000:]}", pytrace=False)
    return res.stdout + res.stderr


@pytest.mark.slow
def test_the_documented_rsna_recipe_runs_end_to_end(tmp_path: Path) -> None:
    from hohoho_core.synthetic import generate_dataset

    data, holdout = tmp_path / "rsna", tmp_path / "holdout"
    generate_dataset(data, 20, seed=41, size=64, slices=(8, 9), positive_fraction=0.6)
    generate_dataset(holdout, 3, seed=42, size=64, slices=(8, 9), positive_fraction=0.6)
    # Kaggle's test layout: unlabelled files beside the sample submission.
    test_dir = data / "stage_2_test"
    test_dir.mkdir()
    images = []
    for dcm in sorted((holdout / "stage_2_train").glob("*.dcm")):
        shutil.copy(dcm, test_dir / dcm.name)
        images.append(dcm.stem)
    sample = pd.DataFrame({"ID": [f"{i}_{c}" for i in images for c in CLASSES], "Label": 0.5})
    sample.to_csv(data / "stage_2_sample_submission.csv", index=False)

    env = {"DATA": str(data), "CACHE": str(tmp_path / "cache"), "RUN": str(tmp_path / "run")}
    steps = _steps()
    assert {"2", "3", "4", "5", "6"} <= set(steps)
    work = tmp_path / "work"  # the README's relative paths (weights-rsna, ...) land here
    work.mkdir()

    # 2. prepare once
    (prepare,) = _lines(steps["2"], env)
    _ok(_run(prepare, env, work))
    assert (Path(env["RUN"]) / "cnn" / "splits.json").is_file()

    # 3. stage 1: the N-GPU line of the one recipe, under torchrun with 2 CPU processes
    stage1 = [ln for ln in _lines(steps["3"], env) if "torchrun --standalone" in ln]
    assert len(stage1) == 1 and "$CNN_FLAGS" in stage1[0]
    out = _ok(_run(stage1[0], env, work))
    assert "cpu x2" in out
    assert (Path(env["RUN"]) / "cnn" / "best_cnn.safetensors").is_file()

    # 4. embeddings (torchrun, 2 processes) and 5. stage 2 -> weights folder
    for step in ("4", "5"):
        for line in _lines(steps[step], env):  # step 5 ends with predicting a study
            _ok(_run(line.replace("/path/to/study", str(holdout)), env, work))
    assert (work / "preds.csv").is_file()
    weights = work / "weights-rsna"
    config = json.loads((weights / "config.json").read_text())
    assert config["classes"] == list(CLASSES) and config["lstm"]  # CNN + LSTM, as recipe'd
    assert config["preprocess"]["size"] == 32 and config["preprocess"]["mode"] == "stacked"
    assert len(config["thresholds"]) == len(CLASSES)

    # 6. evaluate on held-out labelled data, predict the test folder in submission mode
    lines = [ln.replace("/data/holdout", str(holdout)) for ln in _lines(steps["6"], env)]
    evaluate = [ln for ln in lines if "hohoho_core evaluate" in ln]
    submit = [ln for ln in lines if "--sample-submission" in ln]
    assert len(evaluate) == 1 and len(submit) == 1
    _ok(_run(evaluate[0], env, work))
    report = json.loads((work / "holdout_report.json").read_text())
    assert "slice" in json.dumps(report) and "any" in json.dumps(report)
    _ok(_run(submit[0], env, work))
    submission = pd.read_csv(work / "submission.csv", dtype={"ID": str})
    assert set(submission["ID"]) == set(sample["ID"])
    assert submission["Label"].between(0, 1).all()
    # (a missing or unreadable image failing the check: tests/test_evaluate_cli.py)

