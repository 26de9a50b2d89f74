"""`hohoho_core.resnet` against torchvision: same keys, same initial weights, same forward,
and inference that never imports torchvision (its import pulls in torch._dynamo)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from hohoho_core import resnet

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_same_keys_init_and_forward_as_torchvision(name: str) -> None:
    torch.manual_seed(123)
    ours = getattr(resnet, name)().eval()
    torch.manual_seed(123)
    theirs = getattr(tvm, name)(weights=None).eval()
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for k in a:  # the same random draws in the same order: bit-equal initial weights
        assert torch.equal(a[k], b[k]), k
    # Other weights than the initial ones give the same output too.
    torch.manual_seed(5)
    state = {k: (v * (1 + 0.2 * torch.rand_like(v)) + 0.05 * torch.rand_like(v)
                 if v.is_floating_point() else v) for k, v in b.items()}
    theirs.load_state_dict(state)
    ours.load_state_dict(state)
    # Batch statistics: at random init, eval-mode statistics (mean 0, variance 1) let
    # ResNet-34's activations overflow in torchvision's model as in ours.
    ours.train()
    theirs.train()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        want = theirs(x)
        assert torch.isfinite(want).all() and want.abs().max() > 0
        torch.testing.assert_close(ours(x), want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_inference_does_not_import_torchvision(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from hohoho_core.predict import Predictor\n"
        f"p = Predictor.from_folder({str(REPO / 'weights')!r}, precision='fp32')\n"
        "print(p.config.arch, 'torchvision' in sys.modules, 'torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=True).stdout.split()
    assert out == ["resnet18", "False", "False"]
