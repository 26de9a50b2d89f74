"""The fp32 slice CNN run by ONNX Runtime on the CPU: same arithmetic, faster kernels.

The batch-norm-folded twin (`predict.inference_twin`) is exported to ONNX in memory when a
`Predictor` is built and run by ONNX Runtime's CPU provider. The answers are fp32 as in
torch, differing by float rounding only (about 1e-6 on the logits); what changes is the
kernels: ONNX Runtime fuses each convolution with its bias, ReLU and residual add and runs
it in a blocked channel layout. On the 2-core AVX-512 Xeon the ResNet-18 at 160 px ran
1.01-1.37x as fast as in torch in timings alternated in one process, and 1.01-1.23x end
to end over a 200-study folder (bench/README.md). Its output for a slice does not depend
on the other slices of the batch, and the same input gives the same bits every run with
the same thread count.

Nothing here is required: without ``onnxruntime`` (or ``onnx``, which torch's exporter
needs), or for a model the exporter cannot take, `onnx_cnn` returns None and the caller
keeps torch.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxCnn", "onnx_available", "onnx_cnn"]

log = logging.getLogger(__name__)


# Sessions already built in this process, by the exact bytes of the model's weights: a
# second `Predictor` of the same weights (a CLI run after the app's, a test's fixtures)
# skips the export (0.3-0.7 s), paying a hash of the weights (about 0.08 s for ResNet-18).
_CACHE: OrderedDict[tuple[str, int, int, int], OnnxCnn] = OrderedDict()
_CACHE_SIZE = 2
_CACHE_LOCK = threading.Lock()


def onnx_available() -> bool:
    """True when both the exporter's ``onnx`` and ``onnxruntime`` import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except Exception:  # absent, or a broken install (an ABI mismatch raises other errors)
        return False
    return True


class OnnxCnn:
    """A callable like the twin: ``x [N, C, H, W]`` float32 -> ``(embedding, logits)``.

    Holds one ONNX Runtime session; ``run`` is safe from several threads (the app's
    sessions share a predictor).
    """

    def __init__(self, model_bytes: bytes, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle workers must not spin: between batches the same cores read the next studies.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(model_bytes, options,
                                             providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        emb, logits = self._session.run(None, {"x": arr})
        return torch.from_numpy(emb), torch.from_numpy(logits)


def onnx_cnn(twin: nn.Module, channels: int, size: int, threads: int) -> OnnxCnn | None:
    """``twin`` exported and loaded into ONNX Runtime, or None where that cannot be done.

    ``channels`` and ``size`` shape the example input of the export; batch, height and
    width stay dynamic. ``threads``: ONNX Runtime's intra-op threads (the caller passes
    torch's, which the entry point set). CPU models only.
    """
    if not onnx_available():
        return None
    param = next(twin.parameters(), None)
    if param is not None and param.device.type != "cpu":
        return None
    key = (_fingerprint(twin), channels, size, max(1, threads))
    with _CACHE_LOCK:
        engine = _CACHE.get(key)
    if engine is None:
        # Outside the lock: two threads building the same weights both export, and the
        # later one is kept; rare (the app builds a model once) and harmless.
        engine = _export(twin, channels, size, threads)
        if engine is None:
            return None
    # One check that the session means what the twin means; a wrong graph must never run.
    probe = torch.linspace(0, 1, 2 * channels * size * size).reshape(2, channels, size, size)
    with torch.inference_mode():
        want = twin(probe)
    try:
        got = engine(probe)
    except Exception as exc:  # a session that loads but cannot run: torch runs the model
        log.info("ONNX Runtime not used (%s: %s): the CNN runs in torch",
                 type(exc).__name__, exc)
        return None
    if not all(_close(a, b) for a, b in zip(got, want, strict=True)):
        log.warning("ONNX export of the CNN disagrees with torch: the CNN runs in torch")
        return None
    with _CACHE_LOCK:
        _CACHE[key] = engine
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return engine


def _fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer (non-persistent ones too, such as the input
    normalisation): names, shapes, dtypes and bytes."""
    h = hashlib.blake2b(digest_size=20)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        arr = np.ascontiguousarray(t.detach().cpu().float().numpy())
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype};".encode())
        h.update(arr.data)
    return h.hexdigest()


def _export(twin: nn.Module, channels: int, size: int, threads: int) -> OnnxCnn | None:
    """``twin`` exported in memory and loaded into a session, or None where that fails."""
    example = torch.zeros(1, channels, size, size)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            # The TorchScript exporter announces its deprecation in favour of the dynamo
            # one, which needs onnxscript; it exports this graph exactly.
            warnings.filterwarnings("ignore", message="You are using the legacy TorchScript",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", module=r"torch\.(onnx|jit)")
            torch.onnx.export(
                twin.eval(), (example,), buf, input_names=["x"], output_names=["emb", "logits"],
                dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "emb": {0: "n"},
                              "logits": {0: "n"}},
                opset_version=17, dynamo=False)
        return OnnxCnn(buf.getvalue(), threads)
    except Exception as exc:  # any export or load failure: torch still runs the model
        log.info("ONNX Runtime not used (%s: %s): the CNN runs in torch",
                 type(exc).__name__, exc)
        return None


def _close(a: Any, b: torch.Tensor) -> bool:
    b = b.float()
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4))
