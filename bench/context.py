"""What every section shares: the sizes of this run, the model, and the synthetic data on disk.

Data is generated once into the work folder (default ``data/bench``, ignored by git) and
reused by later runs with the same sizes; nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from hohoho_core.models import SequenceModel, SliceClassifier, create_model
from hohoho_core.preprocess import PreprocessConfig
from hohoho_core.weights import (
    CONFIG_FILE,
    TENSORS_FILE,
    ModelConfig,
    default_weights_dir,
    load_weights,
    save_weights,
)

__all__ = [
    "FULL",
    "QUICK",
    "REPO_ROOT",
    "BenchContext",
    "ModelBundle",
    "Sizes",
    "generate_once",
    "with_overrides",
]

log = logging.getLogger("hohoho.bench")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_WEIGHTS = default_weights_dir()


@dataclass(frozen=True)
class Sizes:
    """Every size and repeat count of one run (`FULL` for ``make bench``, `QUICK` for smoke)."""

    quick: bool = False
    # 1. whole study
    study_slices: int = 40
    study_px: int = 512
    model_px: int = 256  # random-init model input when there are no shipped weights
    use_shipped: bool = True
    repeats: int = 5
    naive_repeats: int = 3
    matmul_n: int = 2048
    matmul_repeats: int = 10
    batch_sweep: tuple[int, ...] = (1, 4, 8, 16, 40)
    sweep_repeats: int = 3
    try_compile: bool = True
    # 2. preprocessing
    scan_studies: int = 6
    scan_px: int = 128
    # 3. saliency
    saliency_repeats: tuple[tuple[str, int], ...] = (
        ("gradcam", 5), ("saliency", 3), ("integrated_gradients", 2), ("occlusion", 1),
    )
    # 4. t-SNE: (points, repeats)
    tsne_sizes: tuple[tuple[int, int], ...] = ((1000, 3), (5000, 1), (20000, 1))
    tsne_sklearn_points: int = 1000
    # 5. training
    train_batch: int = 16
    train_steps: int = 20
    train_warmup: int = 3
    # 6. app
    app_studies: int = 3
    app_px: int = 512
    app_slices: tuple[int, int] = (20, 40)
    app_scroll_steps: int = 10
    seed: int = 2019

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Sizes()
QUICK = Sizes(
    quick=True,
    study_slices=8,
    study_px=128,
    model_px=64,
    use_shipped=False,
    repeats=2,
    naive_repeats=1,
    matmul_n=256,
    matmul_repeats=3,
    batch_sweep=(1, 4),
    sweep_repeats=1,
    try_compile=False,
    scan_studies=1,
    scan_px=64,
    saliency_repeats=(("gradcam", 2), ("saliency", 1), ("integrated_gradients", 1),
                      ("occlusion", 1)),
    tsne_sizes=((60, 1), (120, 1)),
    tsne_sklearn_points=60,
    train_batch=2,
    train_steps=2,
    train_warmup=1,
    app_studies=2,
    app_px=64,
    app_slices=(8, 8),
    app_scroll_steps=2,
)


@dataclass
class ModelBundle:
    """The model every section times, and where it lives on disk."""

    cnn: SliceClassifier
    lstm: SequenceModel | None
    config: ModelConfig
    folder: Path
    source: str  # one line for the report
    trained: bool  # shipped weights (not a random init)

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.config.preprocess

    @property
    def size(self) -> int:
        return self.preprocess.size


def _has_weights(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and (folder / TENSORS_FILE).is_file()


def _random_weights(folder: Path, size: int) -> Path:
    """A random-init ResNet-18 + the default stacked BiLSTM at ``size`` px, saved in fp32."""
    if _has_weights(folder):
        return folder
    torch.manual_seed(0)
    cnn = create_model("resnet18", init="random").eval()
    lstm_kw = {"hidden": 128, "layers": 2, "bidirectional": True}
    lstm = SequenceModel(cnn.embed_dim, **lstm_kw).eval()
    config = ModelConfig(
        arch="resnet18",
        embed_dim=cnn.embed_dim,
        preprocess={"mode": "stacked", "size": size, "crop": True},
        lstm=lstm_kw,
        data={"description": "random init for the benchmarks (no shipped weights)"},
    )
    return save_weights(folder, cnn, lstm, config, dtype=torch.float32)


def generate_once(folder: Path, n_studies: int, seed: int, size: int,
                  slices: tuple[int, int], workers: int = 1,
                  randomise: bool | float = False) -> Path:
    """``generate_dataset`` once per setting; a marker file records what is there.

    ``randomise`` as `generate_dataset` takes it; a plain set's marker leaves it out, so
    folders generated before it existed are still reused.
    """
    from hohoho_core.synthetic import generate_dataset

    marker = folder / "bench_generated.json"
    want: dict[str, Any] = {"n_studies": n_studies, "seed": seed, "size": size,
                            "slices": list(slices)}
    if randomise:
        want["randomise"] = randomise
    if marker.is_file():
        meta = json.loads(marker.read_text(encoding="utf-8"))
        if (all(meta.get(k) == v for k, v in want.items())
                and bool(meta.get("randomise", False)) == bool(randomise)):
            return folder
    log.info("generating %d synthetic studies (%d px) in %s", n_studies, size, folder)
    truth = generate_dataset(folder, n_studies, seed, size=size, slices=slices,
                             workers=workers, randomise=randomise)
    want["encodings"] = list(truth.studies["encoding"])
    marker.write_text(json.dumps(want), encoding="utf-8")
    return folder


class BenchContext:
    """Sizes, threads, work folder and lazily built shared resources of one run."""

    def __init__(self, sizes: Sizes, work: Path, threads: int) -> None:
        self.sizes = sizes
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.threads = threads

    @cached_property
    def model(self) -> ModelBundle:
        """Shipped ``weights/`` when present (full runs), else a random ResNet-18 saved here."""
        if self.sizes.use_shipped and _has_weights(SHIPPED_WEIGHTS):
            folder = SHIPPED_WEIGHTS
            cnn, lstm, config = load_weights(folder)
            size = config.preprocess.size
            source = f"shipped weights/ ({config.arch}, {size} px input)"
        else:
            folder = _random_weights(self.work / f"weights_random_{self.sizes.model_px}",
                                     self.sizes.model_px)
            cnn, lstm, config = load_weights(folder)
            source = (f"random-init {config.arch} + BiLSTM at {self.sizes.model_px} px "
                      "(no shipped weights/config.json)")
        return ModelBundle(cnn.eval(), None if lstm is None else lstm.eval(), config,
                           folder, source, trained=folder == SHIPPED_WEIGHTS)

    @cached_property
    def study_dir(self) -> Path:
        """One ``study_slices``-slice study at ``study_px``, stored as plain signed 16-bit.

        The naive baseline reads it with bare pydicom, which knows nothing of the RSNA
        12-bit wrap, so a seed whose study uses another encoding is skipped.
        """
        s = self.sizes
        n = s.study_slices
        for seed in range(s.seed, s.seed + 20):
            folder = generate_once(self.work / f"study_{n}x{s.study_px}_seed{seed}", 1,
                                   seed, s.study_px, (n, n))
            meta = json.loads((folder / "bench_generated.json").read_text(encoding="utf-8"))
            if meta.get("encodings") == ["int16"]:
                return folder / "stage_2_train"
        raise RuntimeError("no seed gave a plain int16 study")

    @cached_property
    def scan_root(self) -> Path:
        """A small RSNA-layout dataset for the header-scan rate."""
        s = self.sizes
        return generate_once(self.work / f"scan_{s.scan_studies}x{s.scan_px}",
                             s.scan_studies, s.seed, s.scan_px,
                             (20, 40) if not s.quick else (8, 8))

    @cached_property
    def demo_root(self) -> Path:
        """Demo studies for the app: ``data/demo`` (``make demo``) in full runs, else made here."""
        s = self.sizes
        shipped_demo = REPO_ROOT / "data" / "demo"
        if not s.quick and (shipped_demo / "stage_2_train.csv").is_file():
            return shipped_demo
        return generate_once(self.work / f"demo_{s.app_studies}x{s.app_px}",
                             s.app_studies, s.seed, s.app_px, s.app_slices)


def with_overrides(sizes: Sizes, **kw: Any) -> Sizes:
    """A copy of ``sizes`` with some fields changed (tests use it for tinier runs)."""
    return replace(sizes, **kw)
