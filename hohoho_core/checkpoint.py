"""Training checkpoints: safetensors + JSON, never pickle.

A checkpoint is two files beside each other:

- ``<stem>.safetensors``: ``model.*`` (the model's state dict), ``<name>.*`` for each extra
  module, and ``optim.<param id>.<name>`` for the optimiser's tensors (0-d tensors stored as
  shape ``(1,)``, flagged in the JSON, because safetensors keeps no 0-d shape reliably).
- ``<stem>.json``: ``{"state": {...epoch, args, metrics...}, "saved": ISO time,
  "optimizer": {"param_groups": [...], "scalars": {...}}}``.

The tensors file is written first and each file atomically, so a JSON always points at
complete tensors and a killed run leaves the previous checkpoint readable. Released model
weights (what the app loads) are a different format: see ``weights.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hohoho_core.atomic import atomic_path, atomic_write_text

__all__ = [
    "load_checkpoint",
    "load_model_weights",
    "load_tensors",
    "read_checkpoint_state",
    "save_checkpoint",
    "save_model_weights",
    "save_tensors",
    "unwrap",
]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself).

    Checkpoints store the bare module's keys, so a run saved under torchrun resumes in a
    single process and the other way round.
    """
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (moved to CPU, contiguous) to a safetensors file, atomically."""
    from safetensors.torch import save_file

    clean = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata or {}))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU."""
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{name}"] = v.reshape(-1) if v.ndim == 0 else v
                if v.ndim == 0:
                    scalars[f"{pid}.{name}.__scalar__"] = True
            else:
                scalars[f"{pid}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    scalars = meta["scalars"]
    for k, v in tensors.items():
        if not k.startswith("optim."):
            continue
        _, pid, name = k.split(".", 2)
        if scalars.get(f"{pid}.{name}.__scalar__"):
            v = v.reshape(())
        state.setdefault(int(pid), {})[name] = v
    for k, v in scalars.items():
        if k.endswith(".__scalar__"):
            continue
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _stem(stem: str | Path) -> Path:
    """Accept the stem or either file's name."""
    return Path(str(stem).removesuffix(".json").removesuffix(".safetensors"))


def save_checkpoint(
    stem: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: Mapping[str, Any],
    extra_modules: Mapping[str, nn.Module] | None = None,
) -> None:
    """Write ``stem.safetensors`` (``model.*``, ``<name>.*``, ``optim.*``) + ``stem.json``.

    The JSON holds ``state`` (epoch, args, metrics ...) and the optimiser's hyper-parameters;
    the tensors file is written first so a JSON always points at complete tensors.
    """
    tensors = {f"model.{k}": v for k, v in unwrap(model).state_dict().items()}
    for name, mod in (extra_modules or {}).items():
        tensors.update({f"{name}.{k}": v for k, v in unwrap(mod).state_dict().items()})
    meta: dict[str, Any] = {"state": dict(state), "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if optimizer is not None:
        opt_t, opt_meta = _optimizer_parts(optimizer)
        tensors.update(opt_t)
        meta["optimizer"] = opt_meta
    save_tensors(Path(f"{stem}.safetensors"), tensors, {"kind": "hohoho-checkpoint"})
    atomic_write_text(Path(f"{stem}.json"), json.dumps(meta, indent=2, default=str) + "\n")


def read_checkpoint_state(stem: str | Path) -> dict[str, Any]:
    """The ``state`` dict of a checkpoint (epoch, args, metrics) without loading tensors."""
    return json.loads(Path(f"{_stem(stem)}.json").read_text(encoding="utf-8"))["state"]


def load_checkpoint(
    stem: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    extra_modules: Mapping[str, nn.Module] | None = None,
) -> dict[str, Any]:
    """Restore what ``save_checkpoint`` wrote; returns the saved ``state`` dict."""
    stem = _stem(stem)
    meta = json.loads(Path(f"{stem}.json").read_text(encoding="utf-8"))
    tensors = load_tensors(Path(f"{stem}.safetensors"))

    def sub(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    unwrap(model).load_state_dict(sub("model."), strict=True)
    for name, mod in (extra_modules or {}).items():
        unwrap(mod).load_state_dict(sub(f"{name}."), strict=True)
    if optimizer is not None and "optimizer" in meta:
        optimizer.load_state_dict(_optimizer_state(tensors, meta["optimizer"]))
    return meta["state"]


def save_model_weights(path: str | Path, model: nn.Module, metadata: Mapping[str, Any]) -> None:
    """Model tensors only (``model.*``), e.g. the best epoch's CNN; metadata JSON-encoded."""
    tensors = {f"model.{k}": v for k, v in unwrap(model).state_dict().items()}
    save_tensors(path, tensors, {k: json.dumps(v) for k, v in metadata.items()})


def load_model_weights(path: str | Path, model: nn.Module) -> None:
    """Load what ``save_model_weights`` wrote into ``model`` (strict)."""
    tensors = load_tensors(path)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    unwrap(model).load_state_dict(state, strict=True)
