"""Tests for hohoho_core.explain (captum wrappers, randomisation check, overlay).

A small stand-in with the `SliceClassifier` interface is trained for a few steps to find a
bright disc ("any" = class 5), so the maps have something to point at; the real ResNet-18
from `hohoho_core.models` is exercised at 64 px for the contract (shapes, no side effects).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from hohoho_core import explain, models

SIZE = 64
ANY = 5
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class StandIn(nn.Module):
    """Same interface as models.SliceClassifier: forward -> (embedding, logits)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1))

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.backbone = nn.Sequential(
            block(3, width),
            nn.MaxPool2d(2),
            block(width, 2 * width),
            nn.MaxPool2d(2),
            block(2 * width, 4 * width),  # the "layer4" of this stand-in
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, 6)

    @property
    def cam_layer(self) -> nn.Module:
        return self.backbone[4]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.backbone((x - self.mean) / self.std)
        return emb, self.head(emb)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[1]


def _disc_batch(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey "brain" ellipse with, on half the images, a bright disc; labels (n, 6)."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    head = (((yy - 32) / 26.0) ** 2 + ((xx - 32) / 22.0) ** 2 < 1).float() * 0.45
    imgs, labels = [], torch.zeros(n, 6)
    for i in range(n):
        img = head + 0.05 * torch.rand(SIZE, SIZE, generator=gen)
        if i % 2 == 0:
            cy, cx = (int(v) for v in torch.randint(18, 46, (2,), generator=gen))
            img = torch.where((yy - cy) ** 2 + (xx - cx) ** 2 < 25, torch.tensor(0.95), img)
            labels[i, ANY] = 1.0
        imgs.append(img.clamp(0, 1).expand(3, SIZE, SIZE))
    return torch.stack(imgs), labels


def _disc_image(cy: int, cx: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    head = (((yy - 32) / 26.0) ** 2 + ((xx - 32) / 22.0) ** 2 < 1).float() * 0.45
    img = torch.where((yy - cy) ** 2 + (xx - cx) ** 2 < 25, torch.tensor(0.95), head)
    return img.expand(1, 3, SIZE, SIZE).clone()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on shared cores: intra-op threads only add synchronisation cost."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained() -> StandIn:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = StandIn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(120):
        x, y = _disc_batch(gen, 16)
        opt.zero_grad()
        loss_fn(model.logits(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return models.create_model("resnet18", init="random").eval()


def test_stand_in_learnt_the_disc(trained: StandIn) -> None:
    with torch.no_grad():
        pos = torch.sigmoid(trained.logits(_disc_image(24, 40)))[0, ANY]
        neg = torch.sigmoid(trained.logits(_disc_image(-50, -50)))[0, ANY]
    assert pos > 0.8 and neg < 0.2


@pytest.mark.parametrize("method", [*explain.METHODS, "ig"])
def test_each_method_returns_a_unit_map(trained: StandIn, method: str) -> None:
    x = _disc_image(24, 40)
    sal = explain.saliency_map(trained, x, ANY, method, occlusion_window=8, ig_steps=16)
    assert sal.shape == (SIZE, SIZE)
    assert sal.dtype == np.float32
    assert np.isfinite(sal).all()
    assert sal.min() >= 0.0
    assert sal.max() == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["gradcam", "occlusion", "integrated_gradients"])
def test_map_points_at_the_disc(trained: StandIn, method: str) -> None:
    cy, cx = 24, 40
    sal = explain.saliency_map(trained, _disc_image(cy, cx), ANY, method, occlusion_window=8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    near = (yy - cy) ** 2 + (xx - cx) ** 2 < 12**2
    # Most of the map's mass lies within 12 px of the disc centre (about 11 % of the area).
    assert sal[near].sum() / sal.sum() > 0.5


def test_integrated_gradients_completeness_from_air(trained: StandIn) -> None:
    x = _disc_image(24, 40)
    attr = explain.attribute(trained, x, ANY, "integrated_gradients", ig_steps=64)
    with torch.no_grad():
        gap = float(trained.logits(x)[0, ANY] - trained.logits(torch.zeros_like(x))[0, ANY])
    assert attr.values.shape == (3, SIZE, SIZE)
    assert attr.convergence_delta is not None
    # Completeness: attributions sum to F(x) - F(air), up to captum's reported delta.
    assert float(attr.values.sum()) == pytest.approx(gap + attr.convergence_delta, abs=1e-3)
    assert abs(attr.convergence_delta) < 0.05 * abs(gap)


def test_default_ig_baseline_is_air(trained: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor] = []

    class Recording(explain.IntegratedGradients):
        def attribute(self, inputs, baselines=None, *args, **kwargs):  # type: ignore[override]
            seen.append(baselines)
            return super().attribute(inputs, baselines, *args, **kwargs)

    monkeypatch.setattr(explain, "IntegratedGradients", Recording)
    x = _disc_image(24, 40)
    explain.saliency_map(trained, x, ANY, "ig", ig_steps=4)
    assert len(seen) == 1
    assert isinstance(seen[0], torch.Tensor)
    assert seen[0].shape == x.shape
    # Zeros in the windowed input space (air), not zeros after ImageNet normalisation.
    assert torch.count_nonzero(seen[0]) == 0

    seen.clear()
    explain.saliency_map(trained, x, ANY, "ig", ig_steps=4, baseline=torch.full((1, 3, 1, 1), 0.5))
    assert torch.equal(seen[0], torch.full_like(x, 0.5))


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@pytest.mark.parametrize("method", explain.METHODS)
def test_no_side_effects_on_model_or_input(trained: StandIn, method: str) -> None:
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    trained.train()  # the caller's mode must survive, even though maps use eval mode
    x = _disc_image(24, 40)
    x_before = x.clone()
    try:
        explain.saliency_map(trained, x, ANY, method, occlusion_window=16, ig_steps=4)
        assert trained.training
    finally:
        trained.eval()
    assert all(p.grad is None for p in trained.parameters())
    assert _hooks(trained) == 0
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in before.items())
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None


def test_eval_mode_is_used(trained: StandIn) -> None:
    # In train mode BatchNorm would use batch statistics of the single slice; the map must
    # not depend on the mode the caller left the model in.
    x = _disc_image(24, 40)
    ref = explain.saliency_map(trained, x, ANY, "saliency")
    trained.train()
    try:
        again = explain.saliency_map(trained, x, ANY, "saliency")
    finally:
        trained.eval()
    np.testing.assert_array_equal(ref, again)


def test_works_under_no_grad_and_in_a_thread(trained: StandIn) -> None:
    x = _disc_image(24, 40)
    ref = explain.saliency_map(trained, x, ANY, "gradcam")
    out: dict[str, np.ndarray] = {}

    def worker() -> None:  # Streamlit runs each script in its own thread
        with torch.no_grad():
            out["sal"] = explain.saliency_map(trained, x, ANY, "gradcam")

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=30)
    np.testing.assert_allclose(out["sal"], ref, atol=1e-6)
    assert torch.is_grad_enabled()


def test_rejects_bad_arguments(trained: StandIn) -> None:
    x = _disc_image(24, 40)
    with pytest.raises(ValueError, match="Unknown saliency method"):
        explain.saliency_map(trained, x, ANY, "guided_backprop")
    with pytest.raises(ValueError, match="target"):
        explain.saliency_map(trained, x, 6, "gradcam")
    with pytest.raises(ValueError, match=r"\[1, C, H, W\]"):
        explain.saliency_map(trained, x[0], ANY, "gradcam")
    with pytest.raises(ValueError, match="baseline"):
        explain.saliency_map(trained, x, ANY, "ig", baseline=torch.zeros(1, 3, 5, 5))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        explain.saliency_map(trained, bad, ANY, "gradcam")


@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_randomisation_check_changes_map_and_spares_model(trained: StandIn, method: str) -> None:
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    rng_before = torch.get_rng_state()
    x = _disc_image(24, 40)
    res = explain.randomisation_check(trained, x, ANY, method, seed=1, layers="cascade")
    assert res.randomised == ("backbone.4", "backbone.5", "backbone.6", "head")
    assert res.original_map.shape == res.random_map.shape == (SIZE, SIZE)
    np.testing.assert_array_equal(res.original_map, explain.saliency_map(trained, x, ANY, method))
    # The method passes: randomised weights give a clearly different map.
    assert res.spearman < 0.9
    assert res.ssim < 0.9
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in before.items())
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(p.grad is None for p in trained.parameters())


def test_randomisation_layers_and_seed(trained: StandIn) -> None:
    x = _disc_image(24, 40)
    head = explain.randomisation_check(trained, x, ANY, "gradcam", layers="head", seed=3)
    assert head.randomised == ("head",)
    assert head.spearman < 0.99
    full = explain.randomisation_check(trained, x, ANY, "saliency", layers="all", seed=3)
    assert full.randomised == ("",)
    again = explain.randomisation_check(trained, x, ANY, "saliency", layers="all", seed=3)
    np.testing.assert_array_equal(full.random_map, again.random_map)
    with pytest.raises(ValueError, match="layers"):
        explain.randomisation_check(trained, x, ANY, "gradcam", layers="middle")  # type: ignore[arg-type]


def test_ssim_by_hand() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((32, 32))
    assert explain.ssim(a, a) == pytest.approx(1.0)
    # Two constant maps: only the luminance term remains, (2 m1 m2 + C1) / (m1^2 + m2^2 + C1).
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    assert explain.ssim(np.full((32, 32), 0.2), np.full((32, 32), 0.6)) == pytest.approx(expected)
    assert explain.ssim(a, 1.0 - a) < 0.0  # anti-correlated structure


def test_overlay_values() -> None:
    gray = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    sal = np.zeros((3, 4), dtype=np.float32)
    sal[0, 0], sal[0, 1] = 1.0, 0.5
    out0 = explain.overlay(gray, sal, opacity=0.0)
    assert out0.shape == (3, 4, 3) and out0.dtype == np.uint8
    expected = np.rint(gray * 255).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(out0[..., c], expected)
    out1 = explain.overlay(gray, sal, opacity=1.0)
    # Jet: 0 -> dark blue (0, 0, 0.5), 0.5 -> (0.5, 1, 0.5), 1 -> dark red (0.5, 0, 0).
    assert tuple(out1[0, 2]) == (0, 0, 128)
    assert tuple(out1[0, 1]) == (128, 255, 128)
    assert tuple(out1[0, 0]) == (128, 0, 0)
    half = explain.overlay(gray, sal, opacity=0.5)
    assert tuple(half[2, 3]) == (128, 128, 191)  # white half-blended with dark blue
    with pytest.raises(ValueError):
        explain.overlay(gray, sal[:2], opacity=0.5)
    with pytest.raises(ValueError):
        explain.overlay(gray, sal, opacity=1.5)


@pytest.mark.parametrize("method", explain.METHODS)
def test_real_resnet18_contract(resnet: nn.Module, method: str) -> None:
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    sal = explain.saliency_map(resnet, x, ANY, method, ig_steps=4, occlusion_window=16)
    assert sal.shape == (SIZE, SIZE) and sal.dtype == np.float32
    assert np.isfinite(sal).all() and 0.0 <= sal.min() and sal.max() <= 1.0
    assert all(p.grad is None for p in resnet.parameters())
    assert _hooks(resnet) == 0


def test_real_resnet18_randomisation_cascade(resnet: nn.Module) -> None:
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    res = explain.randomisation_check(resnet, x, ANY, "gradcam", seed=0)
    assert res.randomised[0] == "backbone.layer4" and res.randomised[-1] == "head"
    assert "backbone.layer3" not in res.randomised
    assert res.spearman < 0.9
    assert all(torch.equal(v, resnet.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_gradcam_on_every_registered_model(name: str) -> None:
    torch.manual_seed(0)
    model = models.create_model(name, init="random").eval()
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    sal = explain.saliency_map(model, x, ANY, "gradcam")
    assert sal.shape == (SIZE, SIZE) and np.isfinite(sal).all()
    assert 0.0 <= sal.min() and sal.max() <= 1.0
    assert _hooks(model) == 0


# --- the randomisation check's verdict ---------------------------------------------------


@pytest.mark.parametrize(
    ("rho", "passed"),
    [(0.1, True), (-0.3, True), (0.499, True), (0.5, False), (0.9, False), (float("nan"), False)],
)
def test_randomisation_verdict_on_hand_made_correlations(rho: float, passed: bool) -> None:
    from hohoho_core.explain import SANITY_PASS_RHO, randomisation_passed

    assert SANITY_PASS_RHO == 0.5  # the bar the app has always shown
    assert randomisation_passed(rho) is passed
    assert randomisation_passed(0.6, max_rho=0.7) is True


def test_randomisation_result_carries_its_verdict() -> None:
    from hohoho_core.explain import RandomisationResult

    blank = np.zeros((4, 4), np.float32)
    changed = RandomisationResult(0.2, 0.3, blank, blank, ("",))
    same = RandomisationResult(0.95, 0.9, blank, blank, ("",))
    constant = RandomisationResult(float("nan"), float("nan"), blank, blank, ("",))
    assert (changed.passed, same.passed, constant.passed) == (True, False, False)
