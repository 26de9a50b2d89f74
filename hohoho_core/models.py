"""Models: a small registry of slice CNNs (stage 1) and the sequence LSTM (stage 2).

Stage 1 (`SliceClassifier`): a ResNet or DenseNet backbone (ResNet-18/34 from
`hohoho_core.resnet`, the others from torchvision, imported only when built) up to global
pooling gives a per-slice
embedding ``[N, D]`` (512 for ResNet-18), a linear head gives six logits (five subtypes and
"any", columns ``labels.CLASSES``). Input is windowed CT in [0, 1], ``[N, 3, H, W]``; the
model applies ImageNet mean/std itself, so an all-zero input is "all air".

Stage 2 (`SequenceModel`): a stacked bidirectional LSTM over a study's ordered embeddings
(optionally with the stage-1 logits and the neighbour differences), one output per slice;
optionally residual: the CNN's logits (per-class scale and bias) plus the LSTM's correction.
"""

from __future__ import annotations

import re
import urllib.error
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hohoho_core import resnet
from hohoho_core.labels import CLASSES
from hohoho_core.losses import masked_bce

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_NAMES",
    "LstmConfig",
    "PretrainedWeightsUnavailable",
    "SequenceModel",
    "SliceClassifier",
    "create_model",
    "load_simclr_backbone",
    "masked_bce",
    "register",
    "save_backbone",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights are neither in the torch hub cache nor downloadable."""


@dataclass(frozen=True)
class _Built:
    """What a backbone builder returns."""

    backbone: nn.Module  # [N, 3, H, W] -> [N, D]
    embed_dim: int
    cam_layer_name: str  # attribute path inside ``backbone`` for Grad-CAM


_Builder = Callable[[bool], _Built]
_REGISTRY: dict[str, _Builder] = {}
#: torchvision weight names for ImageNet initialisation, per registered name (resolved by
#: ``torchvision.models.get_weight`` only when asked: importing torchvision is slow).
_IMAGENET: dict[str, str | None] = {}


def register(name: str, imagenet: str | None = None) -> Callable[[_Builder], _Builder]:
    """Register a backbone builder ``fn(imagenet: bool) -> _Built`` under ``name``;
    ``imagenet``: torchvision's weights name, e.g. ``"ResNet18_Weights.IMAGENET1K_V1"``."""

    def deco(fn: _Builder) -> _Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        _IMAGENET[name] = imagenet
        return fn

    return deco


def _imagenet_state(weights_name: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state dict, from the torch hub cache or a download.

    Raises `PretrainedWeightsUnavailable` offline, naming the file to fetch.
    """
    import torchvision.models as tvm

    weights_enum = tvm.get_weight(weights_name)
    url: str = weights_enum.url
    file_name = url.rsplit("/", 1)[-1]
    try:
        # weights_only=True: the restricted unpickler, never arbitrary code.
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
        hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights {file_name} are not in the torch hub cache ({hub_dir}) and "
            f"could not be downloaded ({type(err).__name__}). Download them once with "
            f'internet access, e.g. `python -c "import torchvision; '
            f"torchvision.models.get_weight('{weights_enum}').get_state_dict()\"`, or copy "
            f"{file_name} from {url} into $TORCH_HOME/hub/checkpoints/ (TORCH_HOME defaults "
            f"to ~/.cache/torch); or use init='random' or a SimCLR .safetensors checkpoint."
        ) from None


def _resnet_parts(net: nn.Module) -> _Built:
    # Same child names as torchvision, so ImageNet keys map one to one.
    backbone = nn.Sequential(
        OrderedDict(
            conv1=net.conv1,
            bn1=net.bn1,
            relu=net.relu,
            maxpool=net.maxpool,
            layer1=net.layer1,
            layer2=net.layer2,
            layer3=net.layer3,
            layer4=net.layer4,
            avgpool=net.avgpool,
            flatten=nn.Flatten(1),
        )
    )
    return _Built(backbone, net.fc.in_features, "layer4")


def _load_imagenet(net: nn.Module, name: str, remap: Callable[[str], str] | None = None) -> None:
    weights = _IMAGENET[name]
    if weights is None:
        raise ValueError(f"no ImageNet weights are known for {name!r}")
    state = _imagenet_state(weights)
    if remap is not None:
        state = {remap(k): v for k, v in state.items()}
    net.load_state_dict(state, strict=True)


@register("resnet18", "ResNet18_Weights.IMAGENET1K_V1")
def _resnet18(imagenet: bool) -> _Built:
    net = resnet.resnet18()
    if imagenet:
        _load_imagenet(net, "resnet18")
    return _resnet_parts(net)


@register("resnet34", "ResNet34_Weights.IMAGENET1K_V1")
def _resnet34(imagenet: bool) -> _Built:
    net = resnet.resnet34()
    if imagenet:
        _load_imagenet(net, "resnet34")
    return _resnet_parts(net)


@register("resnet50", "ResNet50_Weights.IMAGENET1K_V2")
def _resnet50(imagenet: bool) -> _Built:
    import torchvision.models as tvm

    net = tvm.resnet50(weights=None)
    if imagenet:
        _load_imagenet(net, "resnet50")
    return _resnet_parts(net)


# torchvision's DenseNet files use old keys like "denselayer1.norm.1.weight".
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _densenet_key(key: str) -> str:
    m = _DENSENET_OLD_KEY.match(key)
    return m.group(1) + m.group(2) if m else key


@register("densenet121", "DenseNet121_Weights.IMAGENET1K_V1")
def _densenet121(imagenet: bool) -> _Built:
    import torchvision.models as tvm

    net = tvm.densenet121(weights=None)
    if imagenet:
        _load_imagenet(net, "densenet121", _densenet_key)
    backbone = nn.Sequential(
        OrderedDict(
            features=net.features,  # ends with norm5: [N, 1024, h, w]
            relu=nn.ReLU(inplace=False),  # not in-place: Grad-CAM hooks the features output
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
        )
    )
    return _Built(backbone, net.classifier.in_features, "features")


#: Registered backbone names; ResNet-18 is the default (the poster's model).
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


class SliceClassifier(nn.Module):
    """Per-slice multi-label classifier.

    Attributes:
        arch: registered backbone name.
        backbone: ``[N, 3, H, W] -> [N, D]`` (up to and including global pooling).
        head: ``Linear(D, num_classes)``.
        embed_dim: ``D``.
        cam_layer: last convolutional block, for captum's ``LayerGradCam``.
    """

    def __init__(
        self, arch: str, built: _Built, num_classes: int = len(CLASSES), in_channels: int = 3
    ) -> None:
        super().__init__()
        if in_channels < 1 or in_channels % 3:
            raise ValueError(f"in_channels must be a positive multiple of 3, got {in_channels}")
        self.arch = arch
        self.in_channels = in_channels
        self.backbone = built.backbone
        if in_channels != 3:
            _widen_first_conv(self.backbone, in_channels)
        self.embed_dim = built.embed_dim
        self.num_classes = num_classes
        self.head = nn.Linear(built.embed_dim, num_classes)
        self._cam_layer_name = built.cam_layer_name
        # Fixed, not learned and not saved: part of the architecture.
        # Each group of three channels (one window's i-1, i, i+1) is normalised like RGB.
        reps = in_channels // 3
        mean = torch.tensor(IMAGENET_MEAN).repeat(reps).view(1, in_channels, 1, 1)
        std = torch.tensor(IMAGENET_STD).repeat(reps).view(1, in_channels, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @property
    def cam_layer(self) -> nn.Module:
        return self.backbone.get_submodule(self._cam_layer_name)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, C, H, W]`` in [0, 1] (``C = in_channels``) -> embedding ``[N, D]``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input [N, {self.in_channels}, H, W], got {tuple(x.shape)}"
            )
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [N, 3, H, W]`` in [0, 1] -> ``(embedding [N, D], logits [N, num_classes])``."""
        emb = self.embed(x)
        return emb, self.head(emb)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, 3, H, W]`` -> logits ``[N, num_classes]`` (the call captum needs)."""
        return self.forward(x)[1]


def _widen_first_conv(backbone: nn.Module, in_channels: int) -> None:
    """Give the backbone's first convolution ``in_channels`` inputs (3 per window group).

    Each group of three input channels gets the RGB kernel divided by the number of groups,
    so an ImageNet initialisation keeps its response scale and a nine-channel input whose
    three groups were equal would give the three-channel model's output.
    """
    old = backbone.get_submodule("conv1")
    if not isinstance(old, nn.Conv2d) or old.in_channels != 3:
        raise ValueError("only backbones whose first layer 'conv1' is a 3-channel Conv2d widen")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    bias=old.bias is not None)
    groups = in_channels // 3
    with torch.no_grad():
        new.weight.copy_(old.weight.repeat(1, groups, 1, 1) / groups)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    backbone.conv1 = new


def load_simclr_backbone(model: SliceClassifier, path: str | Path) -> None:
    """Load ``backbone.*`` tensors from a SimCLR ``.safetensors`` checkpoint, strictly.

    The file's metadata must name the same ``arch``; keys outside ``backbone.*`` (the
    projection head) are ignored; missing or unexpected backbone keys are an error.
    """
    from safetensors import safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"SimCLR checkpoint must be a .safetensors file, got {path.name}")
    if not path.is_file():
        raise FileNotFoundError(f"SimCLR checkpoint not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        arch = meta.get("arch")
        if arch != model.arch:
            raise ValueError(
                f"SimCLR checkpoint {path.name} is for arch {arch!r}, model is {model.arch!r}"
            )
        state = {
            k[len("backbone.") :]: f.get_tensor(k) for k in f.keys() if k.startswith("backbone.")
        }
    expected = model.backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"SimCLR checkpoint {path.name} does not match {model.arch}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ValueError(
                f"SimCLR checkpoint {path.name}: {k} has shape {tuple(v.shape)}, "
                f"expected {tuple(expected[k].shape)}"
            )
        state[k] = v.to(expected[k].dtype)
    model.backbone.load_state_dict(state, strict=True)


def save_backbone(model: SliceClassifier, path: str | Path) -> None:
    """Write ``model.backbone`` as ``backbone.*`` tensors with ``{"arch": ...}`` metadata."""
    from safetensors.torch import save_file

    state = {
        f"backbone.{k}": v.detach().cpu().contiguous()
        for k, v in model.backbone.state_dict().items()
    }
    save_file(state, str(path), metadata={"arch": model.arch})


def create_model(
    name: str = "resnet18",
    init: str | Path = "random",
    num_classes: int = len(CLASSES),
    in_channels: int = 3,
) -> SliceClassifier:
    """Build a registered slice classifier.

    Args:
        name: one of `MODEL_NAMES`.
        init: "random", "imagenet" (torchvision's weights, from the hub cache or a download)
            or a path to a SimCLR ``.safetensors`` checkpoint with ``backbone.*`` keys.
        num_classes: outputs of the head (6: five subtypes and "any").
        in_channels: input channels, ``PreprocessConfig.channels`` (3, or 9 for
            "stacked_windows": the first convolution is widened, see `_widen_first_conv`).

    Raises:
        ValueError: unknown name or init; PretrainedWeightsUnavailable: ImageNet offline.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    simclr: Path | None = None
    if isinstance(init, Path) or init not in ("random", "imagenet"):
        simclr = Path(init)
        if simclr.suffix != ".safetensors":
            raise ValueError(
                f"init must be 'random', 'imagenet' or a .safetensors SimCLR checkpoint, got {init!r}"
            )
    model = SliceClassifier(name, _REGISTRY[name](init == "imagenet"), num_classes, in_channels)
    if simclr is not None:
        load_simclr_backbone(model, simclr)
    return model


@dataclass(frozen=True)
class LstmConfig:
    """`SequenceModel` settings as saved in a weights config (``in_dim`` comes from the CNN).

    ``to_dict``/``from_dict`` read and write the ``"lstm"`` object of ``config.json``;
    missing keys take these defaults (the model's own), unknown keys are a ValueError.
    """

    hidden: int = 128
    layers: int = 2
    bidirectional: bool = True
    dropout: float = 0.1
    use_logits: bool = False
    use_diffs: bool = False
    residual: bool = False
    use_embeddings: bool = True

    #: Keys written only when they differ from these defaults, so configs of models that
    #: do not use them keep the layout they had before the keys existed.
    _OPTIONAL = {"residual": False, "use_embeddings": True}

    def __post_init__(self) -> None:
        for name in ("hidden", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"lstm {name} must be an integer >= 1, got {value!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"lstm dropout must be in [0, 1), got {self.dropout}")
        _check_inputs(self.use_logits, self.use_diffs, self.residual, self.use_embeddings)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, keys in field order (optional keys only when not default)."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__
                if f not in self._OPTIONAL or getattr(self, f) != self._OPTIONAL[f]}

    @classmethod
    def from_dict(cls, d: Any) -> LstmConfig:
        """Inverse of ``to_dict``; an `LstmConfig` passes through unchanged."""
        if isinstance(d, LstmConfig):
            return d
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            allowed = ", ".join(sorted(known))
            raise ValueError(f"unknown lstm config keys {unknown}; allowed: {allowed}")
        return cls(**dict(d))

    def build(self, in_dim: int, num_classes: int = len(CLASSES)) -> SequenceModel:
        """The `SequenceModel` these settings describe over ``in_dim``-wide embeddings."""
        return SequenceModel(in_dim, num_classes=num_classes, **self.to_dict())


def _check_inputs(use_logits: bool, use_diffs: bool, residual: bool,
                  use_embeddings: bool) -> None:
    if residual and not use_logits:
        raise ValueError("a residual sequence model corrects the stage-1 logits: "
                         "it needs use_logits=True")
    if use_diffs and not use_embeddings:
        raise ValueError("use_diffs are embedding differences: it needs use_embeddings=True")
    if not (use_embeddings or use_logits):
        raise ValueError("the sequence model needs use_embeddings or use_logits")


class SequenceModel(nn.Module):
    """Stacked (bi)LSTM over a study's slice embeddings: one six-logit output per slice.

    Per-slice input features: the embedding ``D`` (unless ``use_embeddings=False``),
    optionally the stage-1 logits (``num_classes``) and the neighbour differences
    ``emb - emb_prev`` and ``emb - emb_next`` (``2 D``, zero at a study's first and last
    slice). Padded studies go through ``pack_padded_sequence``, so padding never influences
    real slices.

    ``residual=True`` (needs ``use_logits``): the output is ``scale * cnn_logit + bias`` per
    class plus the LSTM head's correction. The head starts at zero and the scale at one, so
    an untrained model returns the CNN's logits exactly, and a correction the training
    penalises (`parts`) stays small where the sequence carries little evidence: on slices
    unlike the training data the model falls back towards the CNN instead of extrapolating.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int = 128,
        layers: int = 2,
        bidirectional: bool = True,
        dropout: float = 0.1,
        use_logits: bool = False,
        use_diffs: bool = False,
        num_classes: int = len(CLASSES),
        residual: bool = False,
        use_embeddings: bool = True,
    ) -> None:
        super().__init__()
        if in_dim < 1 or hidden < 1 or layers < 1:
            raise ValueError("in_dim, hidden and layers must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        _check_inputs(use_logits, use_diffs, residual, use_embeddings)
        self.in_dim = in_dim
        self.use_logits = use_logits
        self.use_diffs = use_diffs
        self.residual = residual
        self.use_embeddings = use_embeddings
        self.num_classes = num_classes
        feat = ((in_dim * (3 if use_diffs else 1) if use_embeddings else 0)
                + (num_classes if use_logits else 0))
        self.feature_dim = feat
        # LayerNorm: CNN embeddings have arbitrary scale; the LSTM gates saturate otherwise.
        self.norm = nn.LayerNorm(feat)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            feat,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)
        if residual:
            # Zero correction and identity map of the CNN logits at the start.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
            self.logit_scale = nn.Parameter(torch.ones(num_classes))
            self.logit_bias = nn.Parameter(torch.zeros(num_classes))

    @staticmethod
    def lengths_from_mask(mask: torch.Tensor) -> torch.Tensor:
        """``mask [B, S]`` bool (True for real slices, a prefix) -> lengths ``[B]`` int64 (CPU)."""
        if mask.ndim != 2:
            raise ValueError(f"mask must be [B, S], got {tuple(mask.shape)}")
        mask = mask.to(torch.bool)
        lengths = mask.sum(dim=1)
        prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
        if not torch.equal(prefix, mask):
            raise ValueError("mask must mark real slices as a prefix of each row (padding last)")
        if bool((lengths == 0).any()):
            raise ValueError("every study needs at least one slice")
        return lengths.cpu()

    def features(
        self, emb: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-slice LSTM input ``[B, S, feature_dim]`` (zeros at padded slices)."""
        m = mask.to(device=emb.device, dtype=torch.bool)
        parts = [emb] if self.use_embeddings else []
        if self.use_diffs:
            zeros = torch.zeros_like(emb[:, :1])
            prev = torch.cat([zeros, emb[:, :-1]], dim=1)
            nxt = torch.cat([emb[:, 1:], zeros], dim=1)
            edge = torch.zeros_like(m[:, :1])
            has_prev = torch.cat([edge, m[:, :-1]], dim=1) & m
            has_next = torch.cat([m[:, 1:], edge], dim=1) & m
            parts.append(torch.where(has_prev[..., None], emb - prev, 0.0))
            parts.append(torch.where(has_next[..., None], emb - nxt, 0.0))
        if self.use_logits:
            if logits is None:
                raise ValueError("this SequenceModel was built with use_logits=True: pass logits")
            if logits.shape[:2] != emb.shape[:2] or logits.shape[-1] != self.num_classes:
                raise ValueError(
                    f"logits {tuple(logits.shape)} do not match emb {tuple(emb.shape)}"
                )
            parts.append(logits.to(emb.dtype))
        x = torch.cat(parts, dim=-1)
        return torch.where(m[..., None], x, 0.0)

    def parts(
        self, emb: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(base, sequence)``, both ``[B, S, K]`` and 0 at padded slices; their sum (or
        ``sequence`` alone when ``base`` is None) is `forward`'s output.

        ``base`` is the residual model's per-class affine map of the stage-1 logits (None
        for a plain model); ``sequence`` is the LSTM head's output, for a residual model the
        correction the training penalises.
        """
        if emb.ndim != 3 or emb.shape[-1] != self.in_dim:
            raise ValueError(f"emb must be [B, S, {self.in_dim}], got {tuple(emb.shape)}")
        if mask.shape != emb.shape[:2]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match emb {tuple(emb.shape)}")
        lengths = self.lengths_from_mask(mask)
        x = self.drop(self.norm(self.features(emb, mask, logits)))
        if bool((lengths == emb.shape[1]).all()):
            # No padding (every study at inference): packing changes nothing but the cost
            # (on the CPU the same bits, tested; packed is ~30 % slower for a 30-slice study).
            out, _ = self.lstm(x)
        else:
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=emb.shape[1])
        m = mask.to(device=out.device, dtype=torch.bool)[..., None]
        seq = torch.where(m, self.head(out), 0.0)
        if not self.residual:
            return None, seq
        assert logits is not None  # features() refused a missing one
        base = logits.to(seq.dtype) * self.logit_scale + self.logit_bias
        return torch.where(m, base, 0.0), seq

    def forward(
        self, emb: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``emb [B, S, D]``, ``mask [B, S]`` bool, ``logits [B, S, K]`` or None -> ``[B, S, K]``.

        Outputs at padded slices are 0 and must be ignored (see `masked_bce`).
        """
        base, seq = self.parts(emb, mask, logits)
        return seq if base is None else base + seq
