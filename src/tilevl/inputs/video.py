"""Video in, frame tiles out: InternVL's uniform frame sampling (`get_index`) and PyAV decoding.

`load_video` picks `num_segments` frames, tiles each with `tile_image`, and counts tiles per frame.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from tilevl.errors import InputError
from tilevl.inputs.image import IMAGENET_MEAN, IMAGENET_STD, tile_image
from tilevl.optional import require

# The model cards' video chat: `load_video(video_path, num_segments=8, max_num=1)`, one 448 px
# tile per frame (no thumbnail then) and "Frame{i}: <image>\n" lines. Every card from
# InternVL2 through InternVL3 and InternVL3.5 (Qwen3, MoE and GPT-OSS; the "video
# multi-round conversation" example of OpenGVLab/InternVL3_5-*) calls it with these values,
# so they are the defaults for every checkpoint; no family needs its own.
CARD_NUM_SEGMENTS = 8
CARD_TILES_PER_FRAME = 1


def get_index(bound: Sequence[float] | None, fps: float, max_frame: int, first_idx: int = 0,
              num_segments: int = 32) -> np.ndarray:
    """Indices of `num_segments` frames spread evenly over a video, as upstream samples them.

    Each segment contributes the frame at its middle. Kept exactly as the published
    InternVL example (including `round` and the ±100000 s default bound) so that a model sees
    the frames it was evaluated with.

    Args:
        bound: optional (start_s, end_s) in seconds; None (or empty) means the whole video.
        fps: frames per second, used to turn the bound into frame indices.
        max_frame: index of the last frame (frame count − 1).
        first_idx: lowest index allowed.
        num_segments: how many frames to pick.
    Returns:
        int array [num_segments] of frame indices.
    """
    if bound:
        start, end = bound[0], bound[1]
    else:
        start, end = -100000, 100000
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return np.array([int(start_idx + (seg_size / 2) + np.round(seg_size * idx))
                     for idx in range(num_segments)])


def video_prompt(num_frames: int) -> str:
    """The per-frame image placeholders upstream puts before a video question.

    Args:
        num_frames: number of frames (one `<image>` each).
    Returns:
        "Frame1: <image>\\nFrame2: <image>\\n…", one line per frame, each ending in a newline.
    """
    if num_frames < 0:
        raise InputError(f"num_frames must be ≥ 0, got {num_frames}")
    return "".join(f"Frame{i + 1}: <image>\n" for i in range(num_frames))


def load_video(path: str | os.PathLike, num_segments: int = CARD_NUM_SEGMENTS,
               bound: Sequence[float] | None = None, *, image_size: int = 448,
               max_num: int = CARD_TILES_PER_FRAME,
               use_thumbnail: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD
               ) -> tuple[torch.Tensor, list[int]]:
    """Decode a video with PyAV, sample frames with `get_index`, and tile each frame.

    Args:
        path: the video file.
        num_segments: how many frames to sample.
        bound: optional (start_s, end_s) in seconds.
        image_size: the tile side S.
        max_num: tiles per frame (1: one bicubic S×S resize per frame, as upstream's video demo).
        use_thumbnail, mean, std: as in `tile_image`.
    Returns:
        (pixel_values float32 [sum of N_i, 3, S, S], num_patches_list [N_1, …, N_num_segments]).
    Raises:
        InputError: naming the path for a missing, empty or unreadable video, or a bound that
            selects frames outside it.
        MissingDependencyError: when PyAV (the `video` extra) is not installed.
    """
    av = require("av", extra="video", purpose="to decode videos")
    if num_segments < 1:
        raise InputError(f"{path}: num_segments must be ≥ 1, got {num_segments}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such video file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the video file is empty (0 bytes)")
    decode_errors = (av.error.FFmpegError, OSError, ValueError, EOFError)
    try:
        num_frames, fps = _count_frames(av, path)
        if num_frames == 0:
            raise InputError(f"{path}: the video has no frames")
        if bound and fps <= 0:
            raise InputError(f"{path}: cannot apply bound={tuple(bound)}: the frame rate is "
                             "unknown")
        indices = get_index(bound, fps, num_frames - 1, first_idx=0, num_segments=num_segments)
        if indices.min() < 0 or indices.max() > num_frames - 1:
            raise InputError(f"{path}: bound={tuple(bound or ())} selects frames "
                             f"{indices.min()}…{indices.max()} of a video with {num_frames} "
                             f"frames at {fps:g} fps")
        frames = _decode_frames(av, path, set(indices.tolist()))
    except InputError:
        raise
    except EOFError as exc:  # FFmpeg's AVERROR_EOF before any frame: header-only or cut file
        raise InputError(f"{path}: the video is empty or cut short ({exc})") from exc
    except decode_errors as exc:
        raise InputError(f"{path}: cannot decode the video ({exc})") from exc

    tiles_by_index: dict[int, torch.Tensor] = {}  # repeated indices are tiled once
    pixel_values = []
    for idx in indices.tolist():
        if idx not in tiles_by_index:
            tiles_by_index[idx] = tile_image(frames[idx], image_size=image_size, max_num=max_num,
                                             use_thumbnail=use_thumbnail, mean=mean, std=std)
        pixel_values.append(tiles_by_index[idx])
    return torch.cat(pixel_values), [t.shape[0] for t in pixel_values]


def _count_frames(av, path: Path) -> tuple[int, float]:
    """(frame count, average fps) of the first video stream.

    The count comes from the container header when it has one (mp4), otherwise from a
    demux-only pass (mkv, webm), which reads packets without decoding them.
    """
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise InputError(f"{path}: the file has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if stream.frames > 0:
            return int(stream.frames), fps
        count = sum(1 for packet in container.demux(stream) if packet.size)
        return count, fps


def _decode_frames(av, path: Path, wanted: set[int]) -> dict:
    """Decode sequentially (no seeking: exact indices for any codec) and keep `wanted` frames.

    Returns:
        {index: RGB PIL image} for every wanted index. If the stream ends before a wanted
        index (a header that over-counts), that index gets the last decoded frame.
    """
    frames: dict = {}
    last_wanted, last_frame = max(wanted), None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame-parallel decoding: same frames, faster
        for i, frame in enumerate(container.decode(stream)):
            last_frame = frame
            if i in wanted:
                frames[i] = frame.to_image()  # RGB24 via swscale
            if i >= last_wanted:
                break
    if last_frame is None:
        raise InputError(f"{path}: the video has no decodable frames")
    missing = wanted - frames.keys()
    if missing:
        tail = last_frame.to_image()
        frames.update({i: tail for i in missing})
    return frames
