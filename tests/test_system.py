"""hohoho_core.system.available_cores: the cores this process may run on, not the machine's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hohoho_core import system
from hohoho_core.system import available_cores


def test_counts_the_affinity_mask_not_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert available_cores() == 3


def test_falls_back_to_cpu_count_without_an_affinity_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert available_cores() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "cannot be determined"
    assert available_cores() == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux affinity")
def test_a_real_one_core_mask_gives_one() -> None:
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from hohoho_core.system import available_cores; print(available_cores())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1"


def test_every_copy_is_this_function() -> None:
    # the library, the training helpers and the bench count cores the same way
    from bench import common as bench_common
    from hohoho_core import embed, rsna
    from hohoho_core.dicom import loader
    from train import common as train_common

    for module in (embed, rsna, loader, bench_common, train_common):
        assert module.available_cores is system.available_cores, module.__name__
