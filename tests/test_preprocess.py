"""Tests for hohoho_core.preprocess: windows, stacking, head box, resize, configs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from hohoho_core.preprocess import (
    MODES,
    WINDOWS,
    PreprocessConfig,
    crop_and_resize_hu,
    crop_to_box,
    head_bbox,
    input_from_resized_hu,
    make_input,
    open_square,
    resize_stack,
    stack_neighbours,
    window_hu,
)

AIR = -1000.0


def disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def phantom(s: int = 5, n: int = 96, cy: float = 40, cx: float = 48, r: float = 24) -> np.ndarray:
    """Air background, a disc 'head' whose HU differ per slice (10*i), and a headrest."""
    hu = np.full((s, n, n), AIR, np.float32)
    m = disc((n, n), cy, cx, r)
    hu[:, m] = (10.0 * np.arange(s, dtype=np.float32))[:, None]
    hu[:, n - 10 : n - 4, 10 : n - 10] = 300.0  # headrest: separate blob below the head
    return hu


# --- window_hu ------------------------------------------------------------------------


def test_window_brain_by_hand() -> None:
    hu = np.array([-1000.0, 0.0, 20.0, 40.0, 60.0, 80.0, 81.0, 3000.0])
    out = window_hu(hu, 40, 80)
    # brain 40/80 maps [0, 80] -> [0, 1]
    np.testing.assert_allclose(out, [0, 0, 0.25, 0.5, 0.75, 1, 1, 1], atol=1e-7)
    assert out.dtype == np.float32


@pytest.mark.parametrize("name", list(WINDOWS))
def test_window_edges_every_preset(name: str) -> None:
    c, w = WINDOWS[name]
    hu = np.array([c - w / 2 - 1, c - w / 2, c, c + w / 2, c + w / 2 + 1], np.float32)
    np.testing.assert_allclose(window_hu(hu, c, w), [0, 0, 0.5, 1, 1], atol=1e-6)


def test_window_any_shape_and_int16() -> None:
    hu = np.full((2, 3, 4, 5), 100, dtype=np.int16)
    out = window_hu(hu, 80, 200)  # subdural: [-20, 180]; 100 -> 0.6
    assert out.shape == (2, 3, 4, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.6, atol=1e-6)


def test_window_into_a_channel_view_matches_the_plain_call() -> None:
    # make_input writes each window straight into its channel of the model input.
    hu = np.random.default_rng(3).normal(40, 400, (4, 6, 7)).astype(np.float32)
    x = np.full((4, 3, 6, 7), np.nan, np.float32)
    got = window_hu(hu, 80, 200, out=x[:, 1])
    assert np.shares_memory(got, x)
    # the float32 formula, written out: (hu - lo) * (1 / width), clipped to [0, 1]
    by_hand = np.clip((hu - np.float32(80 - 100)) * np.float32(1 / 200), 0, 1)
    np.testing.assert_array_equal(x[:, 1], by_hand)
    np.testing.assert_array_equal(window_hu(hu, 80, 200), by_hand)
    assert np.isnan(x[:, 0]).all() and np.isnan(x[:, 2]).all()  # other channels untouched
    # the int16 cache goes through the same float32 arithmetic
    hu16 = np.round(hu).astype(np.int16)
    np.testing.assert_array_equal(
        window_hu(hu16, 40, 80, out=np.empty((4, 6, 7), np.float32)),
        np.clip((hu16.astype(np.float32) - np.float32(0)) * np.float32(1 / 80), 0, 1))


@pytest.mark.parametrize("out", [np.empty((4, 6), np.float32), np.empty((4, 6, 7), np.float64)])
def test_window_rejects_an_out_of_another_shape_or_type(out: np.ndarray) -> None:
    with pytest.raises(ValueError, match="out must be float32"):
        window_hu(np.zeros((4, 6, 7), np.float32), 40, 80, out=out)


@pytest.mark.parametrize("width", [0, -10, float("nan")])
def test_window_rejects_bad_width(width: float) -> None:
    with pytest.raises(ValueError, match="width"):
        window_hu(np.zeros(3), 40, width)


# --- stack_neighbours -----------------------------------------------------------------


def test_stack_neighbours_channels_and_edges() -> None:
    s = 4
    x = np.broadcast_to(np.arange(s, dtype=np.float32)[:, None, None], (s, 2, 3)).copy()
    out = stack_neighbours(x)
    assert out.shape == (s, 3, 2, 3)
    expected = [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]  # first/last repeat themselves
    np.testing.assert_array_equal(out[:, :, 0, 0], expected)
    # every pixel, not only one
    np.testing.assert_array_equal(out, np.asarray(expected, np.float32)[:, :, None, None] + 0 * out)


def test_stack_neighbours_single_slice() -> None:
    x = np.random.default_rng(0).random((1, 4, 4)).astype(np.float32)
    out = stack_neighbours(x)
    for c in range(3):
        np.testing.assert_array_equal(out[0, c], x[0])


def test_stack_neighbours_rejects_bad_shape() -> None:
    with pytest.raises(ValueError):
        stack_neighbours(np.zeros((4, 4)))
    with pytest.raises(ValueError):
        stack_neighbours(np.zeros((0, 4, 4)))


# --- head_bbox ------------------------------------------------------------------------


def test_head_bbox_drops_headrest_and_air_exact() -> None:
    hu = np.full((64, 64), AIR, np.float32)
    hu[10:31, 20:41] = 40.0  # square "head": rows 10..30, cols 20..40
    hu[50:56, 5:60] = 300.0  # headrest, bigger in width than the head but smaller in area
    box = head_bbox(hu, pad=2, open_px=0)
    # rows 10..30 padded by 2 -> [8, 33); cols 20..40 -> [18, 43): already square (25).
    assert box == (8, 33, 18, 43)


def test_head_bbox_study_is_square_contains_head_excludes_headrest() -> None:
    hu = phantom(s=5, n=96, cy=40, cx=48, r=24)
    hu += np.random.default_rng(1).normal(0, 15, hu.shape).astype(np.float32)  # noisy air
    y0, y1, x0, x1 = head_bbox(hu)
    assert y1 - y0 == x1 - x0  # square
    head = disc((96, 96), 40, 48, 24)
    rows, cols = np.nonzero(head)
    assert y0 <= rows.min() and y1 > rows.max() and x0 <= cols.min() and x1 > cols.max()
    assert y1 <= 96 - 10  # stops above the headrest (rows 86..91)
    assert y1 - y0 <= 2 * 24 + 1 + 2 * 4 + 1  # no bigger than the padded head


def test_head_bbox_uses_max_projection_over_slices() -> None:
    hu = np.full((3, 64, 64), AIR, np.float32)
    hu[0, 10:20, 10:20] = 40.0
    hu[2, 30:40, 30:40] = 40.0
    hu[1, 10:40, 10:40] = 40.0  # joins both in the projection
    assert head_bbox(hu, pad=0, open_px=0) == (10, 40, 10, 40)


def test_head_bbox_opening_cuts_thin_bridge_to_headrest() -> None:
    hu = np.full((80, 80), AIR, np.float32)
    hu[disc((80, 80), 30, 40, 20)] = 40.0
    hu[70:76, 5:75] = 300.0
    hu[50:70, 39:41] = 300.0  # 2-px bridge joins head and headrest
    assert head_bbox(hu, open_px=0)[1] >= 76  # without opening the headrest is kept
    y0, y1, x0, x1 = head_bbox(hu, pad=4, open_px=2)
    assert y1 <= 56  # head rows 10..50 plus padding; headrest dropped
    assert y0 <= 10 and x0 <= 20 and x1 >= 61


def test_head_bbox_all_air_gives_full_image() -> None:
    assert head_bbox(np.full((2, 40, 40), AIR, np.float32)) == (0, 40, 0, 40)
    # non-square images are squared around their centre
    assert head_bbox(np.full((30, 40), AIR, np.float32)) == (-5, 35, 0, 40)


def test_open_square_is_scipys_binary_opening() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(13)
    for _ in range(400):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        mask = rng.random((h, w)) < rng.random()
        for it in (1, 2, 3):
            want = ndimage.binary_opening(mask, np.ones((3, 3), bool), iterations=it)
            np.testing.assert_array_equal(open_square(mask, it), want)
    # An object touching the image edge: the border counts as background.
    edge = np.zeros((8, 8), bool)
    edge[:4, :4] = True
    assert not open_square(edge, 2).any()
    assert open_square(edge, 1)[:3, :3].all()
    with pytest.raises(ValueError, match=">= 1"):
        open_square(edge, 0)
    with pytest.raises(ValueError, match="2-D"):
        open_square(np.zeros((2, 4, 4), bool), 1)


def test_head_bbox_box_of_the_largest_component_not_the_first() -> None:
    hu = np.full((1, 60, 60), AIR, np.float32)
    hu[0, 2:8, 2:8] = 40.0  # a small blob first in raster order
    hu[0, 20:50, 15:45] = 40.0  # the head
    assert head_bbox(hu, pad=0, open_px=2) == (20, 50, 15, 45)


def test_crop_to_box_fills_outside_with_air() -> None:
    hu = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    out = crop_to_box(hu, (-1, 3, 2, 6))
    assert out.shape == (1, 4, 4)
    np.testing.assert_array_equal(out[0, 0], [AIR] * 4)
    np.testing.assert_array_equal(out[0, 1:, :2], hu[0, 0:3, 2:4])
    np.testing.assert_array_equal(out[0, 1:, 2:], AIR)


# --- resize ---------------------------------------------------------------------------


def test_resize_shapes_and_constant() -> None:
    x3 = np.full((2, 50, 70), 7.0, np.float64)
    out3 = resize_stack(x3, 32)
    assert out3.shape == (2, 32, 32) and out3.dtype == np.float32
    np.testing.assert_allclose(out3, 7.0, atol=1e-5)
    x4 = np.zeros((2, 3, 20, 20), np.float32)
    assert resize_stack(x4, 40).shape == (2, 3, 40, 40)
    same = resize_stack(x4, 20)
    np.testing.assert_array_equal(same, x4)
    assert same is not x4


def test_resize_antialiases_checkerboard() -> None:
    yy, xx = np.mgrid[:64, :64]
    board = ((yy + xx) % 2).astype(np.float32)[None]
    out = resize_stack(board, 16)
    # antialiasing averages the 1-px pattern to its mean; plain bilinear would alias
    np.testing.assert_allclose(out, 0.5, atol=0.02)


# --- crop + resize geometry -----------------------------------------------------------


def centroid(mask: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    return float(rows.mean()), float(cols.mean())


@pytest.mark.parametrize("cy,cx", [(64, 64), (40, 80)])
def test_crop_and_resize_centres_the_head(cy: float, cx: float) -> None:
    n, r = 128, 20
    hu = np.full((2, n, n), AIR, np.float32)
    hu[:, disc((n, n), cy, cx, r)] = 40.0
    out = crop_and_resize_hu(hu, PreprocessConfig(size=64, crop=True))
    assert out.shape == (2, 64, 64) and out.dtype == np.float32
    gy, gx = centroid(out[0] > -480)  # half-way between air and tissue
    assert abs(gy - 31.5) < 0.6 and abs(gx - 31.5) < 0.6
    # the head fills most of the box: diameter 41 px + 8 px pad -> 64 px
    area_frac = (out[0] > -480).mean()
    assert area_frac == pytest.approx(np.pi * (41 / 49) ** 2 / 4, abs=0.05)


def test_resize_without_crop_keeps_position() -> None:
    n = 128
    hu = np.full((1, n, n), AIR, np.float32)
    hu[:, disc((n, n), 40, 80, 20)] = 40.0
    out = crop_and_resize_hu(hu, PreprocessConfig(size=64, crop=False))
    gy, gx = centroid(out[0] > -480)
    # pixel centres map as (y + 0.5) / 2 - 0.5
    assert abs(gy - 19.75) < 0.6 and abs(gx - 39.75) < 0.6


# --- make_input -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_make_input_shape_range(mode: str) -> None:
    cfg = PreprocessConfig(mode=mode, size=48)
    x = make_input(phantom(), cfg)
    assert x.shape == (5, 9 if mode == "stacked_windows" else 3, 48, 48)
    assert x.shape[1] == cfg.channels and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_gray_channels_equal_brain_window() -> None:
    hu = phantom()
    cfg = PreprocessConfig(mode="gray", size=48)
    x = make_input(hu, cfg)
    small = crop_and_resize_hu(hu, cfg)
    for c in range(3):
        np.testing.assert_array_equal(x[:, c], window_hu(small, 40, 80))
    x[:, 0] = 0  # channels are real copies
    assert x[:, 1].max() > 0


def test_stacked_channels_are_neighbours_in_brain_window() -> None:
    hu = phantom(s=5)
    x = make_input(hu, PreprocessConfig(mode="stacked", size=48, crop=False))
    # centre pixel is inside the head: slice i holds 10*i HU -> brain window (10i)/80
    centre = x[:, :, 20, 24]
    expected = np.array([[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]) * 10 / 80
    np.testing.assert_allclose(centre, expected, atol=1e-5)
    np.testing.assert_array_equal(x[1:, 0], x[:-1, 1])
    np.testing.assert_array_equal(x[:-1, 2], x[1:, 1])


def test_windows_mode_channels() -> None:
    hu = phantom()
    cfg = PreprocessConfig(mode="windows", size=48, windows=("brain", "subdural", "bone"))
    x = make_input(hu, cfg)
    small = crop_and_resize_hu(hu, cfg)
    for c, name in enumerate(cfg.windows):
        np.testing.assert_array_equal(x[:, c], window_hu(small, *WINDOWS[name]))
    # 30 HU: brain 30/80, subdural (30+20)/200, bone (30+800)/2800
    np.testing.assert_allclose(x[3, :, 20, 24], [30 / 80, 50 / 200, 830 / 2800], atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("crop", [True, False])
def test_make_input_is_exactly_the_two_halves(mode: str, crop: bool) -> None:
    hu = phantom() + np.random.default_rng(2).normal(0, 20, (5, 96, 96)).astype(np.float32)
    cfg = PreprocessConfig(mode=mode, size=40, crop=crop)
    np.testing.assert_array_equal(
        make_input(hu, cfg), input_from_resized_hu(crop_and_resize_hu(hu, cfg), cfg)
    )


def test_input_from_int16_cache_matches_within_rounding() -> None:
    hu = phantom() + np.random.default_rng(3).normal(0, 20, (5, 96, 96)).astype(np.float32)
    cfg = PreprocessConfig(size=40)
    small = crop_and_resize_hu(hu, cfg)
    x16 = input_from_resized_hu(np.rint(small).astype(np.int16), cfg)
    # rounding moves HU by <= 0.5, i.e. <= 0.5/80 in the brain window
    np.testing.assert_allclose(x16, make_input(hu, cfg), atol=0.5 / 80 + 1e-6)


# --- config ---------------------------------------------------------------------------


def test_config_defaults_and_round_trip_through_json() -> None:
    cfg = PreprocessConfig()
    assert (cfg.mode, cfg.size, cfg.crop, cfg.window) == ("stacked", 256, True, "brain")
    other = PreprocessConfig(
        mode="windows", size=128, crop=False, windows=("stroke", "brain", "bone")
    )
    for c in (cfg, other):
        back = PreprocessConfig.from_dict(json.loads(json.dumps(c.to_dict())))
        assert back == c
        assert isinstance(back.windows, tuple)
    assert PreprocessConfig.from_dict({"size": 64}) == PreprocessConfig(size=64)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PreprocessConfig().size = 3  # type: ignore[misc]


def test_config_unknown_mode_names_allowed_values() -> None:
    with pytest.raises(ValueError) as err:
        PreprocessConfig.from_dict({"mode": "rgb"})
    for name in ("stacked", "gray", "windows"):
        assert name in str(err.value)


@pytest.mark.parametrize(
    "kw",
    [
        {"size": 0},
        {"size": 64.5},
        {"size": True},
        {"crop": "yes"},
        {"window": "lung"},
        {"windows": ("brain", "bone")},
        {"windows": ("brain", "bone", "lung")},
    ],
)
def test_config_validation(kw: dict) -> None:
    with pytest.raises(ValueError):
        PreprocessConfig(**kw)


def test_config_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown preprocess config keys"):
        PreprocessConfig.from_dict({"mode": "gray", "colour": "red"})
