"""hohoho_core.checkpoint: training checkpoints round-trip through safetensors + JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from hohoho_core.checkpoint import (
    load_checkpoint,
    load_model_weights,
    read_checkpoint_state,
    save_checkpoint,
    save_model_weights,
)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def _step(net: nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = net(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_model_optimiser_and_extra_modules_round_trip(tmp_path: Path) -> None:
    net, head = _net(0), nn.Linear(2, 2)
    opt = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=1e-3)
    _step(net, opt)
    stem = tmp_path / "checkpoint"
    save_checkpoint(stem, net, opt, {"epoch": 3, "args": {"lr": 1e-3}}, {"head": head})

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.json", "checkpoint.safetensors"]
    assert (tmp_path / "checkpoint.safetensors").read_bytes()[:1] != b"\x80"  # not a pickle
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["state"] == {"epoch": 3, "args": {"lr": 1e-3}}
    assert meta["optimizer"]["param_groups"][0]["lr"] == 1e-3

    net2, head2 = _net(1), nn.Linear(2, 2)
    opt2 = torch.optim.AdamW([*net2.parameters(), *head2.parameters()], lr=1e-3)
    state = load_checkpoint(f"{stem}.safetensors", net2, opt2, {"head": head2})
    assert state["epoch"] == 3
    for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(head.weight, head2.weight)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for pid in s1:
        # Adam's `step` is a 0-d tensor: it must come back 0-d, not shape (1,)
        assert s2[pid]["step"].shape == s1[pid]["step"].shape == ()
        torch.testing.assert_close(s1[pid]["exp_avg"], s2[pid]["exp_avg"])
    # the resumed optimiser takes the same next step as the original
    torch.manual_seed(5)
    _step(net, opt)
    torch.manual_seed(5)
    _step(net2, opt2)
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_state_reads_without_tensors_and_accepts_either_file_name(tmp_path: Path) -> None:
    net = _net(0)
    save_checkpoint(tmp_path / "ck", net, None, {"epoch": 1})
    for name in ("ck", "ck.json", "ck.safetensors"):
        assert read_checkpoint_state(tmp_path / name) == {"epoch": 1}
    assert "optimizer" not in json.loads((tmp_path / "ck.json").read_text())


def test_a_mismatched_model_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ck", _net(0), None, {})
    with pytest.raises(RuntimeError):
        load_checkpoint(tmp_path / "ck", nn.Linear(4, 2))


def test_model_weights_round_trip_with_json_metadata(tmp_path: Path) -> None:
    from safetensors import safe_open

    net = _net(0)
    path = tmp_path / "best.safetensors"
    save_model_weights(path, net, {"epoch": 2, "f2": 0.5})
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["f2"]) == 0.5
    net2 = _net(1)
    load_model_weights(path, net2)
    for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
