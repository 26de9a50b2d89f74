"""Datasets, samplers, splits and HU augmentation for training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hohoho_core.augment import PRESETS, AugmentConfig, HUAugment, to_model_input
from hohoho_core.cache import StudyCache
from hohoho_core.datasets import (
    EmbeddingSequenceDataset,
    EmbeddingTable,
    SliceDataset,
    WeightedSliceSampler,
    collate_sequences,
    load_embeddings,
    save_embeddings,
    slice_weights,
    split_by_study,
)
from hohoho_core.preprocess import WINDOWS, PreprocessConfig, input_from_resized_hu, window_hu

SIZE = 16


def _study(n: int, offset: float) -> np.ndarray:
    """HU [n, SIZE, SIZE]: slice k holds offset + 10 k in a gradient, so neighbours differ."""
    ramp = np.linspace(-60, 60, SIZE, dtype=np.float32)[None, None, :]
    k = np.arange(n, dtype=np.float32)[:, None, None]
    return np.broadcast_to(offset + 10 * k + ramp, (n, SIZE, SIZE)).copy()


@pytest.fixture()
def cache(tmp_path):
    c = StudyCache(tmp_path / "cache")
    for i, n in enumerate((5, 3, 4)):
        labels = np.zeros((n, 6), np.int8)
        if i == 0:
            labels[1:3, [3, 5]] = 1  # subarachnoid on slices 1-2
        if i == 2:
            labels[3] = -1  # one unknown slice
        ids = [f"ID_{i}{k:08x}" for k in range(n)]
        c.put(f"s{i}", _study(n, 20.0 * i), labels, ids, {"study_uid": f"1.{i}", "crop": True})
    return c


@pytest.mark.parametrize("mode", ["stacked", "gray", "windows"])
def test_slice_dataset_matches_inference_preprocessing(cache, mode) -> None:
    cfg = PreprocessConfig(mode=mode, size=SIZE)
    ds = SliceDataset(cache, ["s0", "s1"], cfg)
    assert len(ds) == 8
    for i in range(len(ds)):
        x, y, meta = ds[i]
        key = ds.keys[meta["study"]]
        full = input_from_resized_hu(cache.get(key).hu, cfg)  # what inference computes
        assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
        np.testing.assert_array_equal(x.numpy(), full[meta["slice"]])
        np.testing.assert_array_equal(y.numpy(), cache.get(key).labels[meta["slice"]])


def test_stacked_edges_repeat_and_neighbours_are_ordered(cache) -> None:
    ds = SliceDataset(cache, ["s0"], PreprocessConfig(mode="stacked", size=SIZE), output="hu")
    first, last, mid = ds.slab(0), ds.slab(4), ds.slab(2)
    # slice k is 10 k HU above slice 0: channel means give the slice numbers used
    k = lambda a: np.round((a.mean(axis=(1, 2)) - 0.0) / 10).astype(int).tolist()  # noqa: E731
    assert k(first) == [0, 0, 1] and k(mid) == [1, 2, 3] and k(last) == [3, 4, 4]


def test_hu_output_plus_to_model_input_equals_input_output(cache) -> None:
    for mode in ("stacked", "gray", "windows"):
        cfg = PreprocessConfig(mode=mode, size=SIZE)
        a = SliceDataset(cache, ["s0", "s2"], cfg, output="input")
        b = SliceDataset(cache, ["s0", "s2"], cfg, output="hu")
        hu = torch.stack([b[i][0] for i in range(len(b))])
        got = to_model_input(hu, cfg)
        want = torch.stack([a[i][0] for i in range(len(a))])
        assert torch.equal(got, want)


def test_unknown_labels_are_dropped_or_kept(cache) -> None:
    cfg = PreprocessConfig(size=SIZE)
    assert len(SliceDataset(cache, ["s2"], cfg)) == 3
    ds = SliceDataset(cache, ["s2"], cfg, labeled_only=False)
    assert len(ds) == 4 and (ds.labels[3] == -1).all()
    assert ds.image_id(3) == "ID_200000003"


def test_dataset_never_touches_dicom(cache, monkeypatch) -> None:
    import pydicom

    def boom(*a, **k):
        raise AssertionError("DICOM decoded during an epoch")

    monkeypatch.setattr(pydicom, "dcmread", boom)
    ds = SliceDataset(cache, cache.keys(), PreprocessConfig(size=SIZE))
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    n = sum(len(x) for x, _, _ in loader)
    assert n == len(ds) == 11


def test_dataset_rejects_wrong_size(cache) -> None:
    with pytest.raises(ValueError, match="size"):
        SliceDataset(cache, ["s0"], PreprocessConfig(size=SIZE * 2))


def test_dataset_keeps_few_studies_open(cache) -> None:
    ds = SliceDataset(cache, cache.keys(), PreprocessConfig(size=SIZE), max_open=1)
    for i in range(len(ds)):
        ds[i]
    assert len(ds._open) == 1


# --- splits -----------------------------------------------------------------------------


def test_split_by_study_is_disjoint_complete_and_deterministic() -> None:
    keys = [f"k{i:03d}" for i in range(100)]
    parts = split_by_study(keys, (0.7, 0.2, 0.1), seed=3)
    assert [len(p) for p in parts] == [70, 20, 10]
    assert sorted(sum(parts, [])) == keys
    assert len(set(parts[0]) & set(parts[1])) == 0
    assert parts == split_by_study(keys, (0.7, 0.2, 0.1), seed=3)
    assert parts != split_by_study(keys, (0.7, 0.2, 0.1), seed=4)


def test_split_keeps_patients_together_and_stratifies() -> None:
    keys = [f"k{i:03d}" for i in range(60)]
    groups = {k: f"p{i // 3}" for i, k in enumerate(keys)}  # 3 studies per patient
    strata = {k: int(i % 6 < 3) for i, k in enumerate(keys)}  # whole patients positive or not
    parts = split_by_study(keys, (0.5, 0.25, 0.25), seed=0, groups=groups, strata=strata)
    where = {groups[k]: j for j, p in enumerate(parts) for k in p}
    for j, p in enumerate(parts):
        assert all(where[groups[k]] == j for k in p)  # never a patient in two splits
    # 10 positive and 10 negative patients, each stratum split 5 / 3 / 2 patients
    pos = [sum(strata[k] for k in p) for p in parts]
    assert pos == [15, 9, 6]
    assert [len(p) for p in parts] == [30, 18, 12]


def test_split_validates_fractions() -> None:
    with pytest.raises(ValueError):
        split_by_study(["a", "b"], (0.5, 0.6))
    with pytest.raises(ValueError):
        split_by_study(["a", "a"], (0.5, 0.5))


# --- sampling ---------------------------------------------------------------------------


def test_slice_weights_balance_positives_and_favour_rare_subtypes() -> None:
    y = np.zeros((100, 6), np.int8)
    y[:20, [4, 5]] = 1  # 20 subdural
    y[20:24, [0, 5]] = 1  # 4 epidural (rare)
    w = slice_weights(y, positive_fraction=0.5, temper=0.5)
    assert w.sum() == pytest.approx(1.0)
    assert w[:24].sum() == pytest.approx(0.5)
    assert w[20] > w[0]  # rare epidural slices drawn more often than common subdural ones
    assert w[20] / w[0] == pytest.approx(math.sqrt(20 / 4))
    assert np.allclose(w[24:], 0.5 / 76)


def test_weighted_sampler_shards_one_draw_across_ranks() -> None:
    y = np.zeros((10, 6), np.int8)
    y[9, [1, 5]] = 1  # one intraparenchymal slice among nine negatives
    w = slice_weights(y, 0.5)
    single = WeightedSliceSampler(w, 40, rank=0, world_size=1, seed=7)
    r0 = WeightedSliceSampler(w, 40, rank=0, world_size=2, seed=7)
    r1 = WeightedSliceSampler(w, 40, rank=1, world_size=2, seed=7)
    all_draws = list(single)
    assert len(r0) == len(r1) == 20
    assert list(r0) == all_draws[0::2] and list(r1) == all_draws[1::2]
    assert 0.25 < all_draws.count(9) / 40 < 0.75  # the positive slice is drawn about half
    r0.set_epoch(1)
    assert list(r0) != all_draws[0::2]


# --- embeddings -------------------------------------------------------------------------


def _table() -> EmbeddingTable:
    rng = np.random.default_rng(0)
    study = np.array(["b", "a", "b", "a", "b"])
    slice_index = np.array([2, 1, 0, 0, 1], np.int32)
    return EmbeddingTable(
        embeddings=rng.normal(size=(5, 4)).astype(np.float32),
        logits=rng.normal(size=(5, 6)).astype(np.float32),
        labels=(rng.random((5, 6)) > 0.5).astype(np.int8),
        study=study,
        image_id=np.array([f"ID_{i}" for i in range(5)]),
        slice_index=slice_index,
    )


def test_embedding_sequences_are_ordered_and_padded(tmp_path) -> None:
    t = _table()
    path = save_embeddings(tmp_path / "emb.npz", t)
    back = load_embeddings(path)
    np.testing.assert_allclose(back.embeddings, t.embeddings, atol=2e-3)  # stored as float16
    assert back.study.tolist() == t.study.tolist()
    ds = EmbeddingSequenceDataset(back)
    assert ds.keys == ["a", "b"]
    assert ds[1]["rows"].tolist() == [2, 4, 0]  # study b in slice order 0, 1, 2
    batch = collate_sequences([ds[0], ds[1]])
    assert batch["emb"].shape == (2, 3, 4)
    assert batch["mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["rows"][0].tolist() == [3, 1, -1]
    assert torch.equal(batch["emb"][0, 2], torch.zeros(4))
    np.testing.assert_allclose(batch["labels"][1, 0].numpy(), t.labels[2])


# --- augmentation -----------------------------------------------------------------------


def _slab(n: int = 2, c: int = 3, size: int = 24) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    hu = torch.full((size, size), -1000.0)
    hu[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.4) ** 2] = 35.0
    hu[size // 2 - 2 : size // 2 + 2, size // 4 : size // 4 + 3] = 75.0  # bleed left of centre
    return hu.repeat(n, c, 1, 1).clone()


def test_identity_augment_returns_input() -> None:
    hu = _slab()
    assert torch.equal(HUAugment(PRESETS["none"])(hu, torch.Generator().manual_seed(0)), hu)


def test_flip_only_is_a_mirror() -> None:
    hu = _slab()
    out = HUAugment(AugmentConfig(hflip=1.0))(hu, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.flip(hu, dims=[3]), atol=1e-3, rtol=0)


def test_rotation_pads_with_air_and_is_shared_by_channels() -> None:
    hu = _slab(n=1, size=32)
    hu[0, :, :, :] = 30.0  # no air at all before
    aug = HUAugment(AugmentConfig(rotation=45.0))
    p = aug.sample(1, torch.Generator().manual_seed(0))
    p.angle[:] = math.radians(45.0)
    out = aug.apply(hu, p)
    assert out[0, 0, 0, 0].item() == pytest.approx(-1000.0, abs=1e-3)  # corners become air
    assert out[0, 0, 16, 16].item() == pytest.approx(30.0, abs=1e-3)
    assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 1], out[0, 2])


def test_window_jitter_equals_another_display_window() -> None:
    hu = torch.linspace(-100, 200, 300).view(1, 1, 1, 300)
    aug = HUAugment(AugmentConfig(centre_jitter=20.0, width_jitter=0.3))
    p = aug.sample(1, torch.Generator().manual_seed(0))
    p.centre_shift[:] = 12.0
    p.width_scale[:] = 1.25
    out = aug.apply(hu, p)
    c, w = WINDOWS["brain"]
    got = window_hu(out.numpy(), c, w)
    want = window_hu(hu.numpy(), c + 12.0, w * 1.25)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_blur_keeps_flat_images_and_noise_has_the_drawn_sigma() -> None:
    flat = torch.full((3, 1, 32, 32), 40.0)
    blur = HUAugment(AugmentConfig(blur=1.0, blur_sigma=(1.0, 2.0)))
    torch.testing.assert_close(blur(flat, torch.Generator().manual_seed(0)), flat)
    aug = HUAugment(AugmentConfig(noise=8.0))
    g = torch.Generator().manual_seed(1)
    p = aug.sample(3, g)
    p.noise_sigma[:] = torch.tensor([0.0, 4.0, 8.0])
    noise = torch.randn(flat.shape, generator=g)
    out = aug.apply(flat, p, noise)
    stds = (out - 40.0).std(dim=(1, 2, 3))
    assert stds[0] == 0 and 3.0 < stds[1] < 5.0 and 6.5 < stds[2] < 9.5


def test_augment_is_deterministic_for_a_generator_and_keeps_shape() -> None:
    hu = _slab(n=4)
    aug = HUAugment(PRESETS["generous"])
    a = aug(hu, torch.Generator().manual_seed(5))
    b = aug(hu, torch.Generator().manual_seed(5))
    c = aug(hu, torch.Generator().manual_seed(6))
    assert a.shape == hu.shape and torch.equal(a, b) and not torch.equal(a, c)
    # HU meaning survives: air stays near -1000, nothing beyond the input's range by much
    assert float(a.min()) > -1300 and float(a.max()) < 200


def test_augment_config_validates_and_round_trips() -> None:
    cfg = PRESETS["generous"]
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        AugmentConfig(hflip=1.5)
    with pytest.raises(ValueError):
        AugmentConfig(crop_scale=(0.5, 1.2))
    with pytest.raises(ValueError):
        AugmentConfig.from_dict({"colour_jitter": 0.5})


def test_dataset_applies_augment_per_item_deterministically(cache) -> None:
    cfg = PreprocessConfig(mode="stacked", size=SIZE)
    aug = HUAugment(PRESETS["generous"])
    ds = SliceDataset(cache, ["s0"], cfg, augment=aug, seed=1)
    a, b = ds[2][0], ds[2][0]
    assert torch.equal(a, b) and float(a.min()) >= 0 and float(a.max()) <= 1
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], a)


def test_augment_by_study_shares_one_transform_per_study(cache) -> None:
    cfg = PreprocessConfig(mode="gray", size=SIZE)
    plain = SliceDataset(cache, ["s0", "s1"], cfg, output="hu")
    flips = HUAugment(AugmentConfig(hflip=0.5))
    decisions = {}
    for seed in range(6):
        ds = SliceDataset(cache, ["s0", "s1"], cfg, output="hu", augment=flips, seed=seed,
                          augment_by="study")
        for i in range(len(ds)):
            x, _, meta = ds[i]
            ref = plain[i][0]
            flipped = torch.allclose(x, torch.flip(ref, dims=[2]), atol=1e-3)
            assert flipped or torch.allclose(x, ref, atol=1e-3)
            decisions.setdefault((seed, meta["study"]), set()).add(flipped)
    assert all(len(v) == 1 for v in decisions.values())  # one decision per study
    assert {next(iter(v)) for v in decisions.values()} == {True, False}


def test_split_gives_every_wanted_split_a_study_when_strata_round_it_away() -> None:
    """10 studies, half with a bleed, 80/10/10: each stratum's half a validation study once
    rounded to none, and a recipe then validated on nothing."""
    keys = [f"s{i}" for i in range(10)]
    strata = {k: i % 2 for i, k in enumerate(keys)}
    for seed in range(5):
        train, val, test = split_by_study(keys, (0.8, 0.1, 0.1), seed=seed, strata=strata)
        assert len(val) >= 1 and len(test) >= 1 and len(train) >= 6
        assert sorted(train + val + test) == sorted(keys)
        assert (train, val, test) == tuple(split_by_study(keys, (0.8, 0.1, 0.1), seed=seed,
                                                          strata=strata))
    # A split asked for nothing stays empty; too few studies leave what rounding gave.
    assert split_by_study(keys, (0.9, 0.0, 0.1), seed=1, strata=strata)[1] == []
    assert sum(map(len, split_by_study(["a", "b"], (0.8, 0.1, 0.1)))) == 2
