"""Images in, normalised tiles out: safe loading of any image source, and InternVL's tiling.

`load_image` makes an RGB PIL image; `tile_image` cuts it into S×S tiles (+ thumbnail) for the ViT.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from tilevl.config import UPSTREAM_CHAT_DEFAULTS
from tilevl.errors import ConfigError, InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_PIXELS = 100_000_000
_BICUBIC = Image.Resampling.BICUBIC
_ORIENTATION = 0x0112  # the EXIF tag that says how the camera was held
# Below about one megapixel of output the thread hand-off costs more than it saves.
_PARALLEL_MIN_PIXELS = 1 << 20

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]


# ----------------------------------------------------------------------------- grid choice

@functools.lru_cache(maxsize=64)
def candidate_grids(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    """All (cols, rows) grids with min_num ≤ cols·rows ≤ max_num, in upstream's order.

    The order among grids with the same tile count decides ties in `find_closest_aspect_ratio`,
    so this repeats upstream's set-then-stable-sort exactly instead of "improving" it.
    """
    grids = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1)
        for j in range(1, n + 1) if i * j <= max_num and i * j >= min_num)
    return tuple(sorted(grids, key=lambda x: x[0] * x[1]))


def find_closest_aspect_ratio(aspect_ratio: float, target_ratios, width: int, height: int,
                              image_size: int) -> tuple[int, int]:
    """Pick the grid whose cols/rows is closest to the image's width/height (InternVL 1.5).

    Args:
        aspect_ratio: width / height of the image.
        target_ratios: candidate (cols, rows) grids, smallest tile count first.
        width, height: the image size in pixels.
        image_size: the tile side S.
    Returns:
        (cols, rows). On a tie the later (larger) grid wins only when the image has more than
        half the pixels that grid would hold, so small images are not blown up.
    """
    best_diff, best = float("inf"), (1, 1)
    area = width * height
    for cols, rows in target_ratios:
        diff = abs(aspect_ratio - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def choose_grid(width: int, height: int, image_size: int = 448, min_num: int = 1,
                max_num: int = 12) -> tuple[int, int]:
    """The (cols, rows) tile grid InternVL's dynamic preprocessing uses for this image size.

    Args:
        width, height: the image size in pixels (both ≥ 1).
        image_size: the tile side S.
        min_num, max_num: bounds on cols·rows.
    Returns:
        (cols, rows).
    """
    _check_tiling_args(image_size, min_num, max_num)
    if width < 1 or height < 1:
        raise InputError(f"cannot tile an empty image of size {width}×{height}")
    return find_closest_aspect_ratio(width / height, candidate_grids(min_num, max_num),
                                     width, height, image_size)


def _check_tiling_args(image_size: int, min_num: int, max_num: int) -> None:
    if image_size < 1:
        raise ConfigError(f"image_size must be ≥ 1, got {image_size}")
    if min_num < 1 or max_num < min_num:
        raise ConfigError(f"need 1 ≤ min_num ≤ max_num, got min_num={min_num}, "
                          f"max_num={max_num}")


# ----------------------------------------------------------------------------- tiling

def tile_image(image: ImageSource, *, image_size: int = 448, min_num: int = 1, max_num: int = 12,
               use_thumbnail: bool = True, dynamic: bool = True, mean=IMAGENET_MEAN,
               std=IMAGENET_STD, workers: int | None = None) -> torch.Tensor:
    """Cut an image into normalised S×S tiles the way InternVL does.

    Dynamic mode (InternVL 1.5+): choose a grid with `choose_grid`, resize the whole image
    bicubically to (S·cols, S·rows), cut tiles row-major and, when more than one tile was cut
    and `use_thumbnail`, append a bicubic S×S resize of the original. Fixed mode
    (`dynamic=False`, InternVL-Chat-V1-2): one bicubic S×S resize. The result equals upstream's
    crop-then-ToTensor-then-Normalize pipeline to within 1e-6 (Pillow resamples identically; the
    float normalisation is fused into one multiply-subtract).

    Args:
        image: a PIL image (used as given: no pixel limit, it is decoded already) or anything
            `load_image` accepts.
        image_size: the tile side S.
        min_num, max_num: bounds on the number of tiles (thumbnail not counted).
        use_thumbnail: append the whole-image thumbnail when there is more than one tile.
        dynamic: False for the fixed single-tile mode.
        mean, std: per-channel normalisation of values in [0, 1].
        workers: threads for the resize; None picks `torch.get_num_threads()` for large
            images and 1 for small ones.
    Returns:
        float32 tensor [N, 3, S, S], N = cols·rows (+1 thumbnail) or 1 in fixed mode.
    """
    _check_tiling_args(image_size, min_num, max_num)
    img = _to_rgb(image, "<PIL image>") if isinstance(image, Image.Image) else load_image(image)
    scale, shift = _affine(tuple(float(v) for v in mean), tuple(float(v) for v in std))
    S = image_size
    cols, rows = choose_grid(*img.size, S, min_num, max_num) if dynamic else (1, 1)
    n = cols * rows
    thumb = dynamic and use_thumbnail and n > 1
    out = torch.empty(n + thumb, 3, S, S)
    out_np = out.numpy()  # shares memory: numpy ufuncs below write straight into `out`
    tiles = out_np[:n].reshape(rows, cols, 3, S, S)
    if workers is None:
        workers = min(torch.get_num_threads(), 8) if n * S * S >= _PARALLEL_MIN_PIXELS else 1
    thumb_view = out_np[n:].reshape(1, 1, 3, S, S) if thumb else None
    if workers <= 1 or not _resize_into_tiles_parallel(img, tiles, thumb_view, scale, shift,
                                                       workers):
        _write_block(tiles, np.asarray(img.resize((cols * S, rows * S), _BICUBIC)), 0, 0,
                     scale, shift)
        if thumb_view is not None:
            _write_block(thumb_view, np.asarray(img.resize((S, S), _BICUBIC)), 0, 0, scale, shift)
    return out


@functools.lru_cache(maxsize=16)
def _affine(mean: tuple, std: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(x/255 − mean)/std as x·scale − shift: float32 constants [3, 1, 1], made in float64."""
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"mean and std need 3 values with std > 0, got mean={mean}, std={std}")
    m, s = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return ((1.0 / (255.0 * s)).astype(np.float32).reshape(3, 1, 1),
            (m / s).astype(np.float32).reshape(3, 1, 1))


def _write_block(tiles: np.ndarray, block: np.ndarray, y0: int, x0: int, scale, shift) -> None:
    """Normalise a rectangle of the resized image into the tiles it overlaps.

    Args:
        tiles: float32 [rows, cols, 3, S, S], written in place.
        block: uint8 [h, w, 3]: rows y0 … y0+h−1, columns x0 … x0+w−1 of the resized image.
        y0, x0: the block's top-left corner in the resized image.
    """
    S = tiles.shape[3]
    h, w = block.shape[:2]
    for r in range(y0 // S, (y0 + h - 1) // S + 1):
        ra, rb = max(y0, r * S), min(y0 + h, (r + 1) * S)
        for c in range(x0 // S, (x0 + w - 1) // S + 1):
            ca, cb = max(x0, c * S), min(x0 + w, (c + 1) * S)
            src = block[ra - y0:rb - y0, ca - x0:cb - x0].transpose(2, 0, 1)  # [3, h', w']
            dst = tiles[r, c, :, ra - r * S:rb - r * S, ca - c * S:cb - c * S]  # a view
            np.multiply(src, scale, out=dst)  # uint8 → float32 and HWC → CHW in one pass
            np.subtract(dst, shift, out=dst)


_pool_lock = threading.Lock()
_pool_state: dict[str, Any] = {"key": None, "pool": None}


def _pool(workers: int) -> ThreadPoolExecutor:
    # Keyed by pid too: a pool inherited through fork has no live threads and would hang.
    key = (os.getpid(), workers)
    with _pool_lock:
        if _pool_state["key"] != key:
            _pool_state["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="tilevl-resize")
            _pool_state["key"] = key
        return _pool_state["pool"]


def _bounds(total: int, parts: int) -> list[tuple[int, int]]:
    edges = [total * k // parts for k in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def _rule_says_vertical_first(in_w: int, in_h: int, out_w: int, out_h: int) -> bool:
    # Newer Pillow (13.0 does) shrinks the height first when it shrinks much more than the width.
    return in_h - out_h > 0 and in_h - out_h > (in_w - out_w) * 2


@functools.lru_cache(maxsize=1)
def _pillow_pass_order() -> str | None:
    """How the installed Pillow orders its two resampling passes, found by experiment.

    Returns:
        "horizontal" (always horizontal first, older Pillow), "rule" (vertical first when
        `_rule_says_vertical_first`), or None when neither explains it: then tiling stays on
        the one-call resize, which is exact whatever Pillow does.
    """
    rng = np.random.default_rng(0)
    probe = Image.fromarray(rng.integers(0, 256, (40, 12, 3), dtype=np.uint8))
    matches = {"horizontal": True, "rule": True}
    for out in ((24, 8), (6, 30), (18, 20), (30, 50)):
        full = np.asarray(probe.resize(out, _BICUBIC))
        h_first = np.asarray(probe.resize((out[0], 40), _BICUBIC).resize(out, _BICUBIC))
        v_first = np.asarray(probe.resize((12, out[1]), _BICUBIC).resize(out, _BICUBIC))
        matches["horizontal"] &= np.array_equal(full, h_first)
        expected = v_first if _rule_says_vertical_first(12, 40, *out) else h_first
        matches["rule"] &= np.array_equal(full, expected)
    return next((order for order, ok in matches.items() if ok), None)


def _resize_into_tiles_parallel(img: Image.Image, tiles: np.ndarray, thumb: np.ndarray | None,
                                scale, shift, workers: int) -> bool:
    """The same bicubic resize as `img.resize`, split over threads, bit for bit.

    Pillow resamples in two separable 8-bit passes, and each pass's weights depend only on
    the input and output lengths. So a horizontal pass can be split by rows and a vertical
    pass by columns without changing one value, provided the passes run in Pillow's order.
    Pillow releases the GIL while it resamples.

    Returns:
        False (nothing written) when Pillow's pass order is unknown; the caller then resizes
        in one call.
    """
    order = _pillow_pass_order()
    if order is None:
        return False
    rows, cols, _, S, _ = tiles.shape
    out_w, out_h = cols * S, rows * S
    in_w, in_h = img.size
    pool = _pool(workers)
    jobs = []
    if thumb is not None:  # independent of the big resize, so it overlaps with it
        jobs.append(pool.submit(
            lambda: _write_block(thumb, np.asarray(img.resize((S, S), _BICUBIC)), 0, 0,
                                 scale, shift)))

    def shrink_rows(x0: int, x1: int) -> Image.Image:  # vertical pass on source columns
        return img.crop((x0, 0, x1, in_h)).resize((x1 - x0, out_h), _BICUBIC)

    def widen_rows(src: Image.Image, y0: int, y1: int) -> Image.Image:  # horizontal pass
        return src.crop((0, y0, src.width, y1)).resize((out_w, y1 - y0), _BICUBIC)

    if order == "rule" and _rule_says_vertical_first(in_w, in_h, out_w, out_h):
        parts = [(x0, pool.submit(shrink_rows, x0, x1)) for x0, x1 in _bounds(in_w, workers)]
        middle = Image.new("RGB", (in_w, out_h))  # [out_h, in_w] after the vertical pass
        for x0, part in parts:
            middle.paste(part.result(), (x0, 0))
        jobs += [pool.submit(lambda y0, y1: _write_block(
            tiles, np.asarray(widen_rows(middle, y0, y1)), y0, 0, scale, shift), y0, y1)
            for y0, y1 in _bounds(out_h, workers)]
    else:
        middle = img  # [in_h, out_w] after the horizontal pass
        if out_w != in_w:
            parts = [(y0, pool.submit(widen_rows, img, y0, y1))
                     for y0, y1 in _bounds(in_h, workers)]
            middle = Image.new("RGB", (out_w, in_h))
            for y0, part in parts:
                middle.paste(part.result(), (0, y0))

        def vertical(x0: int, x1: int) -> None:
            band = middle.crop((x0, 0, x1, in_h)).resize((x1 - x0, out_h), _BICUBIC)
            _write_block(tiles, np.asarray(band), 0, x0, scale, shift)

        jobs += [pool.submit(vertical, x0, x1) for x0, x1 in _bounds(out_w, workers)]
    for job in jobs:
        job.result()  # re-raises a worker's exception here
    return True


# ----------------------------------------------------------------------------- loading

def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image from a path, bytes, a base64 data URL or a PIL image, as RGB.

    EXIF orientation is applied; transparent pixels are composited over white; 16-bit and
    float images are scaled to 8 bits. The size is checked against `max_pixels` before the
    pixels are decoded, so a decompression bomb costs nothing.

    Args:
        source: a file path (str or Path), encoded bytes, a `data:image/...;base64,` URL or a
            PIL image. http(s) URLs are refused: tilevl never fetches user URLs itself.
        max_pixels: the largest width·height accepted.
    Returns:
        An RGB PIL image.
    Raises:
        InputError: naming the source (the path, "<bytes>" or "<data URL>") for a missing,
            truncated, non-image or too large input.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.size, "<PIL image>", max_pixels)
        return _to_rgb(source, "<PIL image>")
    name, stream = _open_source(source)
    try:
        try:
            img = Image.open(stream)
        except Image.DecompressionBombError as exc:
            raise InputError(f"{name}: image is too large for Pillow's decompression-bomb check "
                             f"({exc}); tilevl's limit is max_pixels={max_pixels}") from exc
        except UnidentifiedImageError as exc:
            raise InputError(f"{name}: not an image, or a format Pillow cannot read") from exc
        except (OSError, SyntaxError, ValueError, struct.error) as exc:
            raise InputError(f"{name}: truncated or corrupt image ({exc})") from exc
        _check_pixels(img.size, name, max_pixels)
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as exc:
            raise InputError(f"{name}: truncated or corrupt image ({exc})") from exc
    finally:
        stream.close()
    return _to_rgb(img, name)


def _open_source(source) -> tuple[str, io.IOBase]:
    """(name for messages, binary stream) for every source kind but PIL images."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>", io.BytesIO(bytes(source))
    if isinstance(source, str) and source.startswith("data:"):
        return "<data URL>", io.BytesIO(_decode_data_url(source))
    if isinstance(source, str) and source.lower().startswith(("http://", "https://")):
        raise InputError(f"{source}: remote fetching is not enabled; download the image and "
                         "pass its path or bytes")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            return str(path), open(path, "rb")
        except FileNotFoundError as exc:
            raise InputError(f"{path}: no such image file") from exc
        except OSError as exc:  # a folder, no permission …
            raise InputError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    raise InputError(f"cannot load an image from a {type(source).__name__}; pass a path, bytes, "
                     "a data URL or a PIL image")


def _decode_data_url(url: str) -> bytes:
    header, comma, payload = url.partition(",")
    media = header[len("data:"):].split(";")
    if not comma or not media[0].lower().startswith("image/") or "base64" not in media[1:]:
        raise InputError("<data URL>: expected 'data:image/<type>;base64,<data>', got "
                         f"'{header[:60]}'")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"<data URL>: the base64 payload is invalid ({exc})") from exc


def _check_pixels(size: tuple[int, int], name: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise InputError(f"{name}: image is {width}×{height} = {width * height} pixels, over the "
                         f"limit of max_pixels={max_pixels}")
    if width < 1 or height < 1:
        raise InputError(f"{name}: image is empty ({width}×{height})")


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    """Upright RGB: EXIF rotation applied, alpha over white, high bit depths scaled to 8 bits."""
    try:
        img.load()  # a lazily opened image is decoded here, once, before any thread reads it
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as exc:
        raise InputError(f"{name}: image data is truncated or corrupt ({exc})") from exc
    try:
        if img.getexif().get(_ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error):
        pass  # unreadable EXIF is metadata damage, not image damage: keep the pixels as stored
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        # 16-bit grey: keep the high byte (/256) instead of clipping everything above 255.
        gray = np.asarray(img).astype(np.uint16) >> 8
        return Image.fromarray(gray.astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "F"):
        return Image.fromarray(_wide_to_uint8(np.asarray(img), mode), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, HSV …
    except ValueError as exc:
        raise InputError(f"{name}: cannot convert image mode {mode} to RGB") from exc


def _wide_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """32-bit int or float grey to uint8 ([H, W]).

    "I" holding values above 255 is taken as 16-bit data (the usual source: 16-bit PNG/TIFF)
    and scaled by 1/256; "F" within [0, 1] is scaled by 255; anything else is clipped.
    """
    if mode == "I":
        v = values.astype(np.int64)
        if v.size and v.max() > 255:
            v = np.clip(v, 0, 65535) >> 8
        return np.clip(v, 0, 255).astype(np.uint8)
    v = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if v.size and v.min() >= 0.0 and v.max() <= 1.0:
        v = v * 255.0
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- settings

def _square_size(value: Any, key: str) -> int | None:
    """An int size from 448, [448, 448], {"height": 448, "width": 448} or {"shortest_edge": 448}."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        sides = {value[k] for k in ("height", "width", "shortest_edge") if k in value}
    elif isinstance(value, (list, tuple)):
        sides = set(value)
    else:
        sides = {value}
    if len(sides) != 1 or not isinstance(next(iter(sides)), int) or isinstance(
            next(iter(sides)), bool):
        raise ConfigError(f"{key}: expected one square size in pixels, got {value!r}")
    return next(iter(sides))


@dataclass(frozen=True)
class ImageSettings:
    """Preprocessing settings that travel with a checkpoint (image size, tiling, mean/std)."""

    image_size: int = 448
    dynamic: bool = True
    min_num: int = 1
    max_num: int = 12
    use_thumbnail: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        for field in ("image_size", "min_num", "max_num"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"ImageSettings.{field} must be an int, got {value!r}")
        for field in ("dynamic", "use_thumbnail"):
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"ImageSettings.{field} must be a bool, got "
                                  f"{getattr(self, field)!r}")
        _check_tiling_args(self.image_size, self.min_num, self.max_num)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        _affine(self.mean, self.std)  # validates length and sign

    @classmethod
    def from_checkpoint_config(cls, config: Mapping[str, Any],
                               preprocessor_config: Mapping[str, Any] | None = None
                               ) -> "ImageSettings":
        """Read the settings an official InternVL checkpoint was trained with.

        Args:
            config: the checkpoint's config.json. Keys read: `force_image_size` (else
                `vision_config.image_size`), `dynamic_image_size`, `min_dynamic_patch`,
                `max_dynamic_patch`, `use_thumbnail`. Missing keys take the defaults of
                upstream's InternVLChatConfig (False, 1, 6, False), which is what the
                checkpoint's own code assumed.
            preprocessor_config: optional preprocessor_config.json: `image_mean`, `image_std`,
                and `crop_size`/`size`, used only when config.json has no image size (the
                model sizes its image tokens from config.json, so that one must win).
        Returns:
            ImageSettings.
        """
        pre = preprocessor_config or {}
        vision = config.get("vision_config") or {}
        size = _square_size(config.get("force_image_size"), "config.json: force_image_size")
        if size is None:
            size = _square_size(vision.get("image_size"), "config.json: vision_config.image_size")
        for key in ("crop_size", "size"):
            if size is None:
                size = _square_size(pre.get(key), f"preprocessor_config.json: {key}")
        if size is None:
            raise ConfigError("config.json: no image size (neither force_image_size nor "
                              "vision_config.image_size, and no preprocessor crop_size/size)")
        default = UPSTREAM_CHAT_DEFAULTS
        return cls(image_size=size,
                   dynamic=config.get("dynamic_image_size", default["dynamic_image_size"]),
                   min_num=config.get("min_dynamic_patch", default["min_dynamic_patch"]),
                   max_num=config.get("max_dynamic_patch", default["max_dynamic_patch"]),
                   use_thumbnail=config.get("use_thumbnail", default["use_thumbnail"]),
                   mean=tuple(pre.get("image_mean", IMAGENET_MEAN)),
                   std=tuple(pre.get("image_std", IMAGENET_STD)))

    def to_checkpoint_config(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(config.json keys, preprocessor_config.json keys); inverse of from_checkpoint_config."""
        config = {"force_image_size": self.image_size, "dynamic_image_size": self.dynamic,
                  "min_dynamic_patch": self.min_num, "max_dynamic_patch": self.max_num,
                  "use_thumbnail": self.use_thumbnail}
        pre = {"crop_size": self.image_size, "size": self.image_size,
               "image_mean": list(self.mean), "image_std": list(self.std)}
        return config, pre

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of the fields (mean/std as lists)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ImageSettings":
        """Inverse of `to_dict`; unknown keys are an error naming them."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"ImageSettings: unknown keys {sorted(unknown)}")
        return cls(**d)


def preprocess(image: ImageSource, settings: ImageSettings, max_num: int | None = None
               ) -> torch.Tensor:
    """Tiles for one image under a checkpoint's settings (dynamic or fixed size).

    Args:
        image: a PIL image or anything `load_image` accepts.
        settings: the checkpoint's ImageSettings.
        max_num: overrides settings.max_num for this call (as upstream's chat examples do).
    Returns:
        float32 tensor [N, 3, S, S].
    """
    return tile_image(image, image_size=settings.image_size, dynamic=settings.dynamic,
                      min_num=settings.min_num,
                      max_num=settings.max_num if max_num is None else max_num,
                      use_thumbnail=settings.use_thumbnail, mean=settings.mean, std=settings.std)
