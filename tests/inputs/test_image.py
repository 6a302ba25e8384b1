"""Tests of image loading and dynamic tiling against an independent reference pipeline.

The reference below is written from the InternVL 1.5 rule, tile by tile, with numpy only.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from tilevl.errors import ConfigError, InputError
from tilevl.inputs import image as image_mod
from tilevl.inputs.image import (IMAGENET_MEAN, IMAGENET_STD, ImageSettings, candidate_grids,
                                 choose_grid, find_closest_aspect_ratio, load_image, preprocess,
                                 tile_image)

# ----------------------------------------------------------------------------- reference


def ref_grid(width, height, image_size, min_num, max_num):
    """Upstream's rule, re-typed: grids sorted by tile count, nearest ratio, tie → bigger grid."""
    grids = sorted(set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1)
                       for j in range(1, n + 1) if min_num <= i * j <= max_num),
                   key=lambda g: g[0] * g[1])
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(width / height - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * image_size ** 2 * cols * rows:
            best = (cols, rows)
    return best


def ref_tiles(img, image_size=448, min_num=1, max_num=12, use_thumbnail=True, dynamic=True,
              mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Resize whole image, crop every tile, ToTensor + Normalize each tile separately."""
    S = image_size
    if dynamic:
        cols, rows = ref_grid(img.width, img.height, S, min_num, max_num)
        resized = img.resize((cols * S, rows * S), Image.Resampling.BICUBIC)
        crops = [resized.crop(((k % cols) * S, (k // cols) * S, (k % cols + 1) * S,
                               (k // cols + 1) * S)) for k in range(cols * rows)]
        if use_thumbnail and len(crops) > 1:
            crops.append(img.resize((S, S), Image.Resampling.BICUBIC))
    else:
        crops = [img.resize((S, S), Image.Resampling.BICUBIC)]
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    out = []
    for crop in crops:
        x = np.asarray(crop, np.float32).transpose(2, 0, 1) / np.float32(255)  # ToTensor
        out.append((x - m) / s)  # Normalize
    return np.stack(out)


def random_image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def assert_matches_reference(img, **kw):
    want = ref_tiles(img, **kw)
    for workers in (1, 2):  # one-call resize, and the threaded resize (must be bit-exact too)
        got = tile_image(img, workers=workers, **kw)
        assert got.dtype == torch.float32
        assert tuple(got.shape) == want.shape
        assert np.abs(got.numpy() - want).max() <= 1e-6


# ----------------------------------------------------------------------------- tiling


@pytest.mark.parametrize("width,height,max_num", [
    (1, 1, 12), (10000, 50, 12), (50, 10000, 12), (3840, 2160, 40), (448, 448, 12),
    (449, 447, 12), (800, 600, 12), (1920, 1080, 12)])
def test_tiles_match_reference_on_named_sizes(width, height, max_num):
    assert_matches_reference(random_image(width, height), max_num=max_num)


@settings(max_examples=25, deadline=None)
@given(width=st.integers(1, 900), height=st.integers(1, 900), max_num=st.integers(1, 16),
       data=st.data())
def test_tiles_match_reference_on_generated_sizes(width, height, max_num, data):
    min_num = data.draw(st.integers(1, max_num))
    size = data.draw(st.sampled_from([14, 28, 56, 112, 224]))
    thumb = data.draw(st.booleans())
    assert_matches_reference(random_image(width, height, seed=width * height), image_size=size,
                             min_num=min_num, max_num=max_num, use_thumbnail=thumb)


def test_normalisation_is_within_1e6_for_every_value_and_channel():
    # A 16×16 image holding all 256 values per channel, tiled at its own size: no resampling,
    # so this checks the fused multiply-subtract against ToTensor+Normalize exhaustively.
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    img = Image.fromarray(np.stack([values, values[::-1], values.T], -1))
    got = tile_image(img, image_size=16, dynamic=False).numpy()
    want = ref_tiles(img, image_size=16, dynamic=False)
    assert np.abs(got - want).max() <= 1e-6


def test_thumbnail_only_when_more_than_one_tile():
    assert tile_image(random_image(900, 450), image_size=56, max_num=12).shape[0] == 9  # (4,2)+1
    assert tile_image(random_image(900, 450), image_size=56, use_thumbnail=False).shape[0] == 8
    assert tile_image(random_image(60, 60), image_size=56, max_num=12).shape[0] == 1


def test_tiles_are_row_major():
    # Left half red, right half blue, 2×1 grid: tile 0 must be red, tile 1 blue.
    arr = np.zeros((448, 896, 3), np.uint8)
    arr[:, :448, 0] = 255
    arr[:, 448:, 2] = 255
    tiles = tile_image(Image.fromarray(arr), max_num=2, use_thumbnail=False)
    assert tiles.shape[0] == 2
    assert tiles[0, 0].mean() > tiles[1, 0].mean() and tiles[1, 2].mean() > tiles[0, 2].mean()


def test_custom_mean_std():
    img = random_image(300, 200)
    assert_matches_reference(img, image_size=56, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_fixed_mode_is_one_bicubic_resize():
    img = random_image(1000, 300)
    got = tile_image(img, dynamic=False)
    assert got.shape == (1, 3, 448, 448)
    assert np.abs(got.numpy() - ref_tiles(img, dynamic=False)).max() <= 1e-6


def test_tile_image_accepts_path_and_bytes(tmp_path):
    img = random_image(120, 80)
    path = tmp_path / "a.png"
    img.save(path)
    want = ref_tiles(img, image_size=28)
    assert np.abs(tile_image(path, image_size=28).numpy() - want).max() <= 1e-6
    assert np.abs(tile_image(path.read_bytes(), image_size=28).numpy() - want).max() <= 1e-6


def test_bad_tiling_arguments():
    with pytest.raises(ConfigError, match="min_num"):
        tile_image(random_image(10, 10), min_num=3, max_num=2)
    with pytest.raises(ConfigError, match="std"):
        tile_image(random_image(10, 10), std=(0.5, 0.0, 0.5))


# ----------------------------------------------------------------------------- grid choice


def test_candidate_grids_equal_upstream_order():
    for lo, hi in [(1, 12), (1, 6), (2, 40), (4, 4)]:
        upstream = sorted(set((i, j) for n in range(lo, hi + 1) for i in range(1, n + 1)
                              for j in range(1, n + 1) if i * j <= hi and i * j >= lo),
                          key=lambda x: x[0] * x[1])
        assert list(candidate_grids(lo, hi)) == upstream


def test_choose_grid_examples():
    assert choose_grid(800, 600) == (4, 3)
    assert choose_grid(1920, 1080) == (4, 2)  # ties with (2,1), big enough for the larger one
    assert choose_grid(1, 1) == (1, 1)
    assert choose_grid(10000, 50) == (12, 1)
    assert choose_grid(50, 10000) == (1, 12)
    assert choose_grid(3840, 2160, max_num=40) == (7, 4)
    assert choose_grid(448, 448, min_num=2, max_num=12) == (2, 2)


def test_tie_prefers_larger_grid_only_for_large_images():
    # 2:1 images fit (2,1), (4,2), (6,3) equally well; the area rule decides.
    assert choose_grid(200, 100) == (2, 1)  # 20 000 px ≤ 0.5·448²·8
    assert choose_grid(2000, 1000) == (4, 2)  # 2 000 000 px > 0.5·448²·8; (6,3) > max_num
    assert choose_grid(2000, 1000, max_num=18) == (6, 3)  # > 0.5·448²·18 = 1 806 336
    assert choose_grid(1800, 900, max_num=18) == (4, 2)  # 1 620 000 ≤ 1 806 336
    grids = candidate_grids(1, 12)
    assert find_closest_aspect_ratio(2.0, grids, 200, 100, 448) == (2, 1)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 40), st.data())
def test_choose_grid_equals_reference(width, height, max_num, data):
    min_num = data.draw(st.integers(1, max_num))
    assert choose_grid(width, height, 448, min_num, max_num) == ref_grid(width, height, 448,
                                                                         min_num, max_num)


# ----------------------------------------------------------------------------- settings

V1_5_CONFIG = {"force_image_size": 448, "dynamic_image_size": True, "min_dynamic_patch": 1,
               "max_dynamic_patch": 12, "use_thumbnail": True,
               "vision_config": {"image_size": 448}}
V1_2_CONFIG = {"force_image_size": 448, "vision_config": {"image_size": 448}}


def test_settings_from_dynamic_checkpoint():
    s = ImageSettings.from_checkpoint_config(V1_5_CONFIG)
    assert s == ImageSettings(448, True, 1, 12, True, IMAGENET_MEAN, IMAGENET_STD)


def test_settings_from_fixed_checkpoint_use_upstream_defaults():
    pre = {"crop_size": 448, "size": 448, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25] * 3}
    s = ImageSettings.from_checkpoint_config(V1_2_CONFIG, pre)
    assert (s.dynamic, s.min_num, s.max_num, s.use_thumbnail) == (False, 1, 6, False)
    assert s.mean == (0.5, 0.5, 0.5) and s.std == (0.25, 0.25, 0.25)
    img = random_image(640, 480)
    got = preprocess(img, s)
    assert got.shape == (1, 3, 448, 448)
    want = ref_tiles(img, dynamic=False, mean=s.mean, std=s.std)
    assert np.abs(got.numpy() - want).max() <= 1e-6


def test_settings_image_size_sources():
    assert ImageSettings.from_checkpoint_config({"vision_config": {"image_size": 224}}).image_size \
        == 224
    assert ImageSettings.from_checkpoint_config(
        {"vision_config": {"image_size": [336, 336]}}).image_size == 336
    assert ImageSettings.from_checkpoint_config(
        {}, {"crop_size": {"height": 392, "width": 392}}).image_size == 392
    with pytest.raises(ConfigError, match="no image size"):
        ImageSettings.from_checkpoint_config({})
    with pytest.raises(ConfigError, match="force_image_size"):
        ImageSettings.from_checkpoint_config({"force_image_size": [448, 224]})
    with pytest.raises(ConfigError, match="dynamic"):
        ImageSettings.from_checkpoint_config({**V1_5_CONFIG, "dynamic_image_size": "yes"})


def test_settings_round_trips():
    s = ImageSettings.from_checkpoint_config(V1_5_CONFIG, {"image_mean": [0.1, 0.2, 0.3]})
    assert ImageSettings.from_checkpoint_config(*s.to_checkpoint_config()) == s
    assert ImageSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ConfigError, match="unknown"):
        ImageSettings.from_dict({**s.to_dict(), "colour": 1})


def test_preprocess_dynamic_and_max_num_override():
    s = ImageSettings.from_checkpoint_config(V1_5_CONFIG)
    img = random_image(1600, 800)
    assert preprocess(img, s).shape[0] == 9  # (4,2) + thumbnail
    assert preprocess(img, s, max_num=2).shape[0] == 3  # (2,1) + thumbnail


# ----------------------------------------------------------------------------- loading


def png_bytes(img, fmt="PNG", **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_load_every_source_kind(tmp_path):
    img = random_image(30, 20)
    data = png_bytes(img)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    for source in (str(path), path, data, bytearray(data), url, img):
        got = load_image(source)
        assert got.mode == "RGB" and np.array_equal(np.asarray(got), np.asarray(img))


def test_remote_and_unsupported_sources():
    with pytest.raises(InputError, match="remote fetching is not enabled"):
        load_image("https://example.com/cat.png")
    with pytest.raises(InputError, match="data URL"):
        load_image("data:text/plain;base64,aGVsbG8=")
    with pytest.raises(InputError, match="base64"):
        load_image("data:image/png;base64,@@@")
    with pytest.raises(InputError, match="int"):
        load_image(42)


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(InputError, match="no-such.png"):
        load_image(tmp_path / "no-such.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(InputError, match="notes.png.*not an image"):
        load_image(text)
    with pytest.raises(InputError, match="<bytes>"):
        load_image(b"\x00\x01garbage")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(tmp_path, fmt):
    data = png_bytes(random_image(200, 150), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=f"cut.{fmt.lower()}.*truncated"):
        load_image(path)
    with pytest.raises(InputError, match="<bytes>"):
        load_image(data[: len(data) // 2])


def test_pixel_limit(monkeypatch):
    data = png_bytes(random_image(20, 10))
    with pytest.raises(InputError, match=r"20×10 = 200 pixels.*max_pixels=199"):
        load_image(data, max_pixels=199)
    assert load_image(data, max_pixels=200).size == (20, 10)
    # Pillow's own bomb check (Image.open raises past 2× its limit) is reported too.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    with pytest.raises(InputError, match="decompression-bomb.*max_pixels"):
        load_image(data)


def test_exif_orientation_is_applied():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)  # red on the left edge as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = png_bytes(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95)
    got = np.asarray(load_image(data))
    assert got.shape == (40, 20, 3)  # width and height swapped
    assert got[:10, :, 0].mean() > 200 and got[-10:, :, 0].mean() < 50  # red is now on top


def test_alpha_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red → white
    rgba[0, 1] = (0, 0, 255, 255)  # opaque blue stays
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black → mid grey
    got = np.asarray(load_image(Image.fromarray(rgba, "RGBA")))
    assert tuple(got[0, 0]) == (255, 255, 255) and tuple(got[0, 1]) == (0, 0, 255)
    assert all(abs(int(v) - 127) <= 1 for v in got[1, 0])
    la = Image.fromarray(np.array([[[10, 0], [10, 255]]], np.uint8), "LA")
    assert np.asarray(load_image(la)).tolist() == [[[255] * 3, [10] * 3]]


def test_palette_with_transparency():
    p = Image.new("P", (2, 1))
    p.putpalette([0, 255, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    got = np.asarray(load_image(png_bytes(p)))
    assert got.tolist() == [[[255, 255, 255], [255, 0, 0]]]


def test_grey_cmyk_and_wide_modes():
    grey = np.array([[0, 100, 255]], np.uint8)
    assert np.asarray(load_image(Image.fromarray(grey, "L")))[..., 1].tolist() == [[0, 100, 255]]
    wide = np.array([[0, 256, 4660, 65535]], np.uint16)
    i16 = Image.fromarray(wide)
    assert i16.mode == "I;16"
    assert np.asarray(load_image(i16))[..., 0].tolist() == [[0, 1, 18, 255]]
    # A saved 16-bit PNG reopens as I;16 (or I): the same scaling applies.
    assert np.asarray(load_image(png_bytes(i16)))[..., 0].tolist() == [[0, 1, 18, 255]]
    i32 = Image.fromarray(wide.astype(np.int32), "I")
    assert np.asarray(load_image(i32))[..., 0].tolist() == [[0, 1, 18, 255]]
    small_i = Image.fromarray(np.array([[3, 200]], np.int32), "I")
    assert np.asarray(load_image(small_i))[..., 0].tolist() == [[3, 200]]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    assert np.asarray(load_image(f))[..., 0].tolist() == [[0, 128, 255]]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert np.asarray(load_image(cmyk)).tolist() == [[[255, 0, 0]]]


def test_workers_pool_survives_reuse():
    img = random_image(1000, 700)
    a = tile_image(img, image_size=112, workers=2)
    b = tile_image(img, image_size=112, workers=3)
    assert torch.equal(a, b)
    assert image_mod._pillow_pass_order() in ("horizontal", "rule")
