"""The names `hohoho_core.__all__` promises all resolve to real objects."""

import subprocess
import sys

import hohoho_core


def test_every_public_name_resolves() -> None:
    for name in hohoho_core.__all__:
        assert getattr(hohoho_core, name) is not None, name


def test_import_is_light() -> None:
    # Reading DICOM from a script must not pay for torch.
    code = "import sys, hohoho_core; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
