"""Inpainting's pictures and masks (core/inpaint.py, core/images.load_mask): reading masks of every kind,
the plan's masks, "only masked" regions, fill, outpainting's canvas, and the exact composite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import LatentDeskError
from core.images import load_mask
from core.inpaint import (
    InpaintSettings,
    LatentBlend,
    extend_canvas,
    fill_masked,
    masked_picture,
    masked_region,
    plan_inpaint,
)


def noise_picture(w=64, h=64, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def box_mask(w=64, h=64, box=(16, 16, 40, 40)) -> Image.Image:
    mask = Image.new("L", (w, h), 0)
    mask.paste(255, box)
    return mask


def test_masks_of_every_kind_read_as_white_is_repaint(tmp_path):
    grey = box_mask()
    grey.save(tmp_path / "l.png")
    grey.convert("RGB").save(tmp_path / "rgb.png")
    Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257).save(tmp_path / "sixteen.png")   # I;16
    rgba = noise_picture().convert("RGBA")
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[16:40, 16:40] = 0                          # erased in an editor = repaint
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "erased.png")
    for name in ("l.png", "rgb.png", "sixteen.png", "erased.png"):
        mask = load_mask(tmp_path / name)
        assert mask.mode == "L" and mask.size == (64, 64), name
        assert np.array_equal(np.asarray(mask) >= 128, np.asarray(grey) >= 128), name


def test_bad_mask_files_say_what_is_wrong(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    for name, words in (("missing.png", "no such file"), ("empty.png", "not an image"), ("junk.png", "not an image")):
        with pytest.raises(LatentDeskError, match=words):
            load_mask(tmp_path / name)


def test_an_empty_mask_is_refused_and_a_mask_of_another_size_is_scaled_and_said():
    with pytest.raises(LatentDeskError, match="mask is empty"):
        plan_inpaint(noise_picture(), Image.new("L", (64, 64), 0), 64, 64)
    plan = plan_inpaint(noise_picture(), box_mask(32, 32, (8, 8, 20, 20)), 64, 64)
    assert "scaled to the picture's size" in plan.notes[0]
    assert plan.hard_mask.shape == (1, 1, 64, 64) and plan.hard_mask[0, 0, 30, 30] == 1


def test_the_model_sees_the_binarised_mask_and_a_grey_hole():
    plan = plan_inpaint(noise_picture(), box_mask(), 64, 64, InpaintSettings(mask_blur=0))
    assert set(plan.hard_mask.unique().tolist()) == {0.0, 1.0}
    hole = masked_picture(plan)
    assert torch.all(hole[..., 16:40, 16:40] == 0)
    keep = np.asarray(plan.picture, dtype=np.float32)[:8, :8] / 255 * 2 - 1
    assert torch.equal(hole[0, :, :8, :8], torch.from_numpy(keep).permute(2, 0, 1))
    latent = plan.latent_mask((8, 8), soft=False)
    assert latent.shape == (1, 1, 8, 8) and latent[0, 0, 3, 3] == 1 and latent[0, 0, 0, 0] == 0


def test_outside_the_feather_the_result_is_the_picture_exactly():
    picture = noise_picture(seed=1)
    for area in ("whole", "masked"):
        plan = plan_inpaint(picture, box_mask(), 64, 64, InpaintSettings(mask_blur=4, inpaint_area=area, padding=8))
        generated = noise_picture(seed=2)
        out = np.asarray(plan.finish(generated)).astype(int)
        soft = np.asarray(plan.canvas_mask)
        outside = soft == 0
        assert outside.sum() > 1000, area
        assert np.array_equal(out[outside], np.asarray(picture).astype(int)[outside]), area
        assert not np.array_equal(out[24:32, 24:32], np.asarray(picture)[24:32, 24:32])


def test_only_masked_cuts_a_box_of_the_outputs_shape_around_the_mask():
    mask = box_mask(256, 128, (200, 50, 220, 70))
    box = masked_region(mask, 10, (64, 64))
    left, top, right, bottom = box
    assert right - left == bottom - top                  # the output's aspect, square
    assert left <= 190 and right >= 230 and top <= 40 and bottom >= 80
    assert 0 <= left and right <= 256 and 0 <= top and bottom <= 128
    plan = plan_inpaint(noise_picture(256, 128), mask, 256, 128,
                        InpaintSettings(inpaint_area="masked", padding=10))
    assert plan.picture.size == (256, 128) and plan.box is not None
    assert plan.finish(noise_picture(256, 128)).size == (256, 128)


def test_fill_takes_the_colours_around_the_hole():
    picture = Image.new("RGB", (64, 64), (200, 30, 30))
    picture.paste((0, 255, 0), (16, 16, 40, 40))         # a green square where the mask is
    filled = np.asarray(fill_masked(picture, box_mask()))
    assert np.abs(filled[28, 28].astype(int) - (200, 30, 30)).max() <= 2
    assert np.array_equal(filled[:16], np.asarray(picture)[:16])


def test_outpainting_grows_the_canvas_and_masks_the_new_part():
    picture = noise_picture(60, 64)
    canvas, mask, sides = extend_canvas(picture, None, (16, 0, 16, 8))
    assert canvas.size == (96, 72) and sides == (16, 0, 20, 8)        # 60 + 32 = 92 -> 96: a multiple of 8
    grid = np.asarray(mask)
    assert grid[:, :16].min() == 255 and grid[:64, 16:76].max() == 0 and grid[64:].min() == 255
    assert np.array_equal(np.asarray(canvas)[:64, 16:76], np.asarray(picture))
    for bad in ((0, 0, 0, 0), (-1, 0, 0, 0), (0, 0, 99999, 0), (1.5, 0, 0, 0)):
        with pytest.raises(LatentDeskError, match="utpainting"):
            extend_canvas(picture, None, bad)


@pytest.mark.parametrize("settings, words", [
    (InpaintSettings(masked_content="nothing"), "masked content"),
    (InpaintSettings(inpaint_area="half"), "inpaint area"),
    (InpaintSettings(mask_blur=-1), "mask blur"),
    (InpaintSettings(padding=10**9), "padding"),
])
def test_bad_settings_are_refused_by_name(settings, words):
    with pytest.raises(LatentDeskError, match=words):
        plan_inpaint(noise_picture(), box_mask(), 64, 64, settings)


def test_the_latent_blend_keeps_the_outside_on_the_init_noised_to_each_level():
    init, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    seen = []
    blend = LatentBlend(lambda x, sigma: seen.append(x.clone()) or x, init, noise, mask)
    x = torch.randn(1, 4, 8, 8) * 5
    start = x.clone()
    blend(x, torch.tensor([5.0]))
    assert torch.equal(seen[0], start)                   # the first call is left alone
    blend(x, torch.tensor([2.0]))
    outside = mask.expand_as(x) == 0
    assert torch.allclose(seen[1][outside], (init + noise * 2.0)[outside])
    assert torch.equal(seen[1][~outside], start[~outside])
    assert torch.allclose(blend.final(x)[outside], init[outside])


def test_fills_box_average_is_the_plain_one_and_keeps_its_time_at_large_radii():
    import time

    import torch.nn.functional as F

    from core.inpaint import _blur
    values = np.random.default_rng(1).random((40, 56, 3)).astype(np.float32)
    for radius in (1, 5, 20):
        tensor = torch.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1)))[None]
        plain = F.avg_pool2d(F.pad(tensor, (radius,) * 4, mode="replicate"), 2 * radius + 1, stride=1)
        assert np.abs(_blur(values, radius) - plain[0].numpy().transpose(1, 2, 0)).max() < 1e-5
    started = time.perf_counter()
    fill_masked(noise_picture(1024, 1024), box_mask(1024, 1024, (100, 100, 900, 900)))
    assert time.perf_counter() - started < 30          # a 129-wide pooling window took minutes at this size


def test_outpainting_past_the_largest_side_is_refused_before_the_canvas_is_made():
    with pytest.raises(LatentDeskError, match="largest side is 8192"):
        extend_canvas(Image.new("RGB", (8000, 64)), None, (2048, 0, 0, 0))
