"""Sliding-window prediction (predict_mode "tile"): windows, blending, and the MoNuSeg quadrant protocol."""

from dataclasses import replace
from itertools import pairwise

import pytest
import torch

from conftest import stitch, tiny_config
from segdiff.api import SegDiff
from segdiff.predict.ensemble import sample_x0
from segdiff.predict.tiling import blend_weight, pad_to_stride, window_starts, windows

TILE = 16
OPTS = {"generations": 3, "steps": 3}


def _model(predict_mode: str = "tile", tile_stride: int | None = None) -> SegDiff:
    cfg = tiny_config()
    cfg = replace(
        cfg, data=replace(cfg.data, size=TILE), predict=replace(cfg.predict, mode=predict_mode, tile_stride=tile_stride)
    )
    torch.manual_seed(0)
    model = SegDiff(cfg, "cpu")
    # the output conv is zero-initialised; perturb every weight so that the output depends on the image
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _image(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _close(a, b):
    # the same computation in batches of different sizes: equal up to float summation order
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# -- window placement and blending weights -----------------------------------------------------------


@pytest.mark.parametrize("length", [16, 17, 31, 32, 33, 40, 47, 64, 100])
@pytest.mark.parametrize("stride", [4, 8, 11, 16])
def test_window_starts_cover_the_image_and_end_at_the_border(length, stride):
    starts = window_starts(length, TILE, stride)
    assert starts[0] == 0
    assert starts[-1] + TILE == length  # the last window ends at the border, never past it
    assert starts == sorted(set(starts))
    assert all(b - a <= stride for a, b in pairwise(starts))  # no gap larger than the stride
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[s : s + TILE] = True
    assert covered.all()


def test_window_starts_quadrants_and_short_images():
    assert window_starts(512, 256, 256) == [0, 256]
    assert windows(512, 512, 256, 256) == [(0, 0), (0, 256), (256, 0), (256, 256)]
    assert window_starts(16, 16, 8) == [0]
    assert window_starts(10, 16, 8) == [0]  # shorter than a window: one window (the caller pads)


@pytest.mark.parametrize("blend", ["uniform", "gaussian"])
@pytest.mark.parametrize("hw,stride", [((32, 32), 16), ((32, 32), 8), ((40, 27), 5), ((16, 16), 16)])
def test_blending_weights_sum_to_one(blend, hw, stride):
    h, w = hw
    starts = windows(h, w, TILE, stride)
    weight = blend_weight(TILE, blend)
    ones = torch.ones(len(starts), 2, TILE, TILE)
    torch.testing.assert_close(stitch(ones, starts, h, w, weight), torch.ones(2, h, w))
    # so the stitch is a convex combination per pixel: constant windows c_i stay within [min c, max c]
    c = torch.arange(len(starts), dtype=torch.float32) + 1
    out = stitch(c.view(-1, 1, 1) * torch.ones(len(starts), TILE, TILE), starts, h, w, weight)
    assert out.min() >= c.min() - 1e-5 and out.max() <= c.max() + 1e-5


def test_gaussian_weight_is_positive_and_peaks_in_the_centre():
    g = blend_weight(TILE, "gaussian")
    assert g.shape == (TILE, TILE) and g.min() > 0
    assert g[TILE // 2, TILE // 2] > g[0, 0]
    with pytest.raises(ValueError, match="blend"):
        blend_weight(TILE, "cosine")


def test_stitch_of_non_overlapping_windows_is_their_mosaic():
    tiles = torch.rand(4, 2, TILE, TILE)
    starts = windows(32, 32, TILE, TILE)
    out = stitch(tiles, starts, 32, 32, blend_weight(TILE, "gaussian"))
    for t, (y, x) in zip(tiles, starts, strict=True):
        torch.testing.assert_close(out[..., y : y + TILE, x : x + TILE], t)


# -- predictions ---------------------------------------------------------------------------------------


def test_one_window_equals_the_untiled_prediction():
    """An image of exactly the tile size is one window: the same result as 'pad' mode given the same noise."""
    tiled, padded = _model("tile"), _model("pad")
    x = _image(TILE, TILE)
    opts = tiled.sampling_options(**OPTS)
    # [G, H, W]; the key of window 0 is ("img", "window", 0)
    one_window = tiled.predictor.sample_tiled(tiled.normalize(x), "img", opts)
    untiled = padded.predict_x0(x, keys=[("img", "window", 0)], opts=opts)[0]
    _close(one_window, untiled)
    # and predict_x0 in tile mode predicts an image of the tile size whole, as 'pad' mode does
    _close(tiled.predict_x0(x, keys=["img"], opts=opts), padded.predict_x0(x, keys=["img"], opts=opts))


def test_quadrant_protocol_equals_four_separate_predictions():
    """32 x 32 with tile = stride = 16 (MoNuSeg's 512 / 256): four windows, G computed per window."""
    model = _model("tile", tile_stride=None)
    x = _image(32, 32)
    opts = model.sampling_options(**OPTS)
    full = model.predict_x0(x, keys=["img"], opts=opts)[0]  # [G, 32, 32]
    assert full.shape == (OPTS["generations"], 32, 32)
    norm = model.normalize(x)
    for i, (y, xx) in enumerate([(0, 0), (0, 16), (16, 0), (16, 16)]):
        crop = norm[..., y : y + TILE, xx : xx + TILE]
        alone = sample_x0(model.net, model.schedule, crop, [("img", "window", i)], opts)[0]
        _close(full[:, y : y + TILE, xx : xx + TILE], alone)
    # the quadrants are not copies of one another (different image content and noise per window)
    assert not torch.allclose(full[:, :16, :16], full[:, 16:, 16:])


def test_quadrant_protocol_in_a_batch_is_per_image():
    model = _model("tile")
    a, b = _image(32, 32, seed=1), _image(32, 32, seed=2)
    opts = model.sampling_options(**OPTS)
    both = model.predict_x0(torch.cat([a, b]), keys=["a", "b"], opts=opts)
    _close(both[1], model.predict_x0(b, keys=["b"], opts=opts)[0])


def test_overlapping_windows_are_blended_averages():
    model = _model("tile", tile_stride=8)
    x = _image(32, 32)
    opts = model.sampling_options(**OPTS)
    full = model.predict_x0(x, keys=["img"], opts=opts)[0]
    starts = windows(32, 32, TILE, 8)
    assert len(starts) == 9
    norm = model.normalize(x)
    crops = torch.cat([norm[..., y : y + TILE, xx : xx + TILE] for y, xx in starts])
    per = sample_x0(model.net, model.schedule, crops, [("img", "window", i) for i in range(9)], opts)
    # the centre pixel block [8, 16) x [8, 16) lies in the four windows starting at 0 and 8 in both axes
    expect = torch.stack(
        [per[i][:, 8 - y : 16 - y, 8 - xx : 16 - xx] for i, (y, xx) in enumerate(starts) if y <= 8 and xx <= 8]
    ).mean(0)
    _close(full[:, 8:16, 8:16], expect)
    # a corner block is covered by one window only
    _close(full[:, :8, :8], per[0][:, :8, :8])


@pytest.mark.parametrize("hw", [(10, 10), (16, 7), (13, 16)])
def test_images_no_larger_than_the_tile_are_padded_and_cropped_back(hw):
    model = _model("tile")
    out = model.predict(_image(*hw)[0], **OPTS)
    assert out.prob.shape == out.mask.shape == out.uncertainty.shape == (1, *hw)
    assert 0 <= float(out.prob.min()) and float(out.prob.max()) <= 1


@pytest.mark.parametrize("hw", [(24, 10), (40, 20), (33, 17)])
def test_larger_images_of_any_size_are_tiled_and_cropped_back(hw):
    model = _model("tile", tile_stride=8)
    x = _image(*hw)
    opts = model.sampling_options(**OPTS)
    full = model.predict_x0(x, keys=["img"], opts=opts)
    assert full.shape == (1, OPTS["generations"], *hw)
    assert torch.isfinite(full).all() and full.abs().max() <= 1 + 1e-6
    # reference: the image reflect-padded to at least one tile per side, every window predicted alone
    # with its own key, stitched, cropped back
    norm = model.normalize(x)
    padded = pad_to_stride(norm, TILE)[0] if min(hw) < TILE else norm
    starts = windows(*padded.shape[-2:], TILE, 8)
    crops = [padded[..., y : y + TILE, xx : xx + TILE] for y, xx in starts]
    per = torch.cat(
        [sample_x0(model.net, model.schedule, c, [("img", "window", i)], opts) for i, c in enumerate(crops)]
    )
    ref = stitch(per, starts, *padded.shape[-2:], blend_weight(TILE))[..., : hw[0], : hw[1]]
    _close(full[0], ref)


def test_windows_in_groups_equal_windows_at_once_and_gaussian_blend():
    """A large image goes through the network a few windows at a time; the result must not depend on
    how many windows share a call (batch_generations / generations)."""
    model = _model("tile", tile_stride=8)
    x = _image(40, 32)
    one = model.predict_x0(x, keys=["big"], opts=model.sampling_options(**OPTS, batch_generations=3))
    many = model.predict_x0(x, keys=["big"], opts=model.sampling_options(**OPTS, batch_generations=300))
    _close(one, many)
    gauss = model.predict_x0(
        x, keys=["big"], opts=model.sampling_options(**OPTS, batch_generations=3, blend="gaussian")
    )
    assert gauss.shape == one.shape and not torch.allclose(gauss, one)
