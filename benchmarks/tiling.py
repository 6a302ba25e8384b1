"""Speed of dynamic tiling: tilevl.inputs.image.tile_image vs upstream's pipeline and transformers.

Baseline ("reference"): InternVL's `dynamic_preprocess` + `build_transform` written out with
numpy/torch instead of torchvision: resize the whole image (Pillow bicubic), crop each tile,
then per tile ToTensor (uint8 HWC → float CHW / 255) and Normalize, and stack. Both start from
the same decoded RGB PIL image. Peer: transformers' InternVL image processor (GotOcr2's PIL
backend; its fast backend needs torchvision) with the same tiling settings. Outputs are
compared (max abs diff) before anything is timed; the last line is tilevl/peer.
Run: .venv/bin/python benchmarks/tiling.py [--repeat 5] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

try:
    from tilevl.inputs.image import IMAGENET_MEAN, IMAGENET_STD, ImageSettings, choose_grid, tile_image
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from tilevl.inputs.image import IMAGENET_MEAN, IMAGENET_STD, ImageSettings, choose_grid, tile_image
from _peer import peer_image_processor  # noqa: E402

CASES = [  # (width, height, max_num)
    (800, 600, 12), (1920, 1080, 12), (3840, 2160, 12),
    (800, 600, 40), (1920, 1080, 40), (3840, 2160, 40),
]


def reference_tiles(img: Image.Image, image_size: int = 448, max_num: int = 12) -> torch.Tensor:
    """Upstream's pipeline: one resize, then crop + ToTensor + Normalize tile by tile."""
    S = image_size
    cols, rows = choose_grid(img.width, img.height, S, 1, max_num)
    resized = img.resize((cols * S, rows * S), Image.Resampling.BICUBIC)
    crops = []
    for i in range(cols * rows):
        box = ((i % cols) * S, (i // cols) * S, (i % cols + 1) * S, (i // cols + 1) * S)
        crops.append(resized.crop(box))
    if len(crops) != 1:
        crops.append(img.resize((S, S), Image.Resampling.BICUBIC))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    tensors = []
    for crop in crops:
        # torchvision ToTensor: HWC uint8 → CHW float / 255; Normalize: (x − mean) / std.
        x = torch.from_numpy(np.array(crop)).permute(2, 0, 1).contiguous().float().div(255)
        tensors.append(x.sub_(mean).div_(std))
    return torch.stack(tensors)


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like test image: smooth gradients plus noise (resampling cost ignores content)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    noisy = base + rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def best_times(fns, repeat: int) -> list[float]:
    """Fastest seconds per call of each, calls interleaved so all see the same machine load."""
    for fn in fns:  # warm-up: thread pool, caches, allocator
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, record in zip(fns, times):
            t = time.perf_counter()
            fn()
            record.append(time.perf_counter() - t)
    return [min(record) for record in times]


class _Settings:  # what peer_image_processor reads from a model
    image_settings = ImageSettings()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cases", type=int, default=len(CASES), help="only the first N images")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (tile_image uses as many resize threads)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}, best of {args.repeat} interleaved runs")
    print(f"{'image':>10} {'max':>4} {'tiles':>5} {'ref img/s':>10} {'peer img/s':>11} "
          f"{'ours img/s':>11} {'vs ref':>7} {'vs peer':>8} {'max|diff|':>10}")
    processor = peer_image_processor(_Settings)
    cases = CASES[: args.cases]
    totals = [0.0, 0.0, 0.0]  # reference, peer, ours
    for width, height, max_num in cases:
        img = make_image(width, height)
        want = reference_tiles(img, max_num=max_num)
        got = tile_image(img, max_num=max_num)
        peer = processor(images=[img], max_patches=max_num, return_tensors="pt")["pixel_values"]
        diff = max((got - want).abs().max().item(), (peer - want).abs().max().item())
        if got.shape != want.shape or peer.shape != want.shape or diff > 1e-6:
            raise SystemExit(f"outputs differ for {width}×{height} max_num={max_num}: shapes "
                             f"{tuple(got.shape)}, {tuple(peer.shape)} vs {tuple(want.shape)}, diff {diff}")
        t_ref, t_peer, t_ours = best_times([
            lambda: reference_tiles(img, max_num=max_num),
            lambda: processor(images=[img], max_patches=max_num, return_tensors="pt"),
            lambda: tile_image(img, max_num=max_num)], args.repeat)
        for i, t in enumerate((t_ref, t_peer, t_ours)):
            totals[i] += t
        print(f"{width:>5}×{height:<4} {max_num:>4} {got.shape[0]:>5} {1 / t_ref:>10.1f} {1 / t_peer:>11.1f} "
              f"{1 / t_ours:>11.1f} {t_ref / t_ours:>6.2f}× {t_peer / t_ours:>7.2f}× {diff:>10.2e}")
    n = len(cases)
    print(f"all {n} images: reference {n / totals[0]:.2f} img/s, transformers {n / totals[1]:.2f} img/s, "
          f"tilevl {n / totals[2]:.2f} img/s")
    print(f"ratio (tilevl speed / reference speed): {totals[0] / totals[2]:.2f}")
    print(f"tilevl/peer (tilevl speed / transformers speed): {totals[1] / totals[2]:.2f}")

if __name__ == "__main__":
    main()
