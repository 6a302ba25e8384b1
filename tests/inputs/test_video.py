"""Tests of video frame sampling (`get_index`, no PyAV needed) and PyAV decoding + tiling.

Videos are written inside the tests: frame i is one flat colour, so a tile tells its frame.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tilevl.errors import InputError, MissingDependencyError
from tilevl.inputs.image import IMAGENET_MEAN, IMAGENET_STD, choose_grid
from tilevl.inputs.video import get_index, load_video, video_prompt

NUM_FRAMES, FPS, WIDTH, HEIGHT = 30, 30, 64, 48


def upstream_get_index(bound, fps, max_frame, first_idx=0, num_segments=32):
    """Verbatim from the published InternVL video example (the reference)."""
    if bound:
        start, end = bound[0], bound[1]
    else:
        start, end = -100000, 100000
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    frame_indices = np.array([
        int(start_idx + (seg_size / 2) + np.round(seg_size * idx))
        for idx in range(num_segments)
    ])
    return frame_indices


# ----------------------------------------------------------------------------- without av


def test_get_index_hand_worked():
    # seg = 29/8 = 3.625; index k = int(1.8125 + round(3.625k)), numpy rounding half to even.
    assert get_index(None, 30.0, 29, num_segments=8).tolist() == [1, 5, 8, 12, 15, 19, 23, 26]
    # bound 0.5–1.0 s: start 15, end min(30, 29) = 29, seg 3.5: 15 + 1.75 + {0, 4, 7, 10}.
    assert get_index((0.5, 1.0), 30.0, 29, num_segments=4).tolist() == [16, 20, 23, 26]
    # More segments than frames repeats frames rather than inventing new ones.
    assert get_index(None, 25.0, 2, num_segments=6).tolist() == [0, 0, 1, 1, 1, 2]


def test_get_index_equals_upstream():
    rng = np.random.default_rng(0)
    for _ in range(300):
        fps = float(rng.uniform(1, 60))
        max_frame = int(rng.integers(0, 2000))
        segs = int(rng.integers(1, 64))
        bound = None if rng.random() < 0.5 else tuple(sorted(rng.uniform(0, 80, 2)))
        first = int(rng.integers(0, 3))
        assert np.array_equal(get_index(bound, fps, max_frame, first, segs),
                              upstream_get_index(bound, fps, max_frame, first, segs))


def test_video_prompt():
    assert video_prompt(3) == "Frame1: <image>\nFrame2: <image>\nFrame3: <image>\n"
    assert video_prompt(0) == ""
    with pytest.raises(InputError):
        video_prompt(-1)


def test_missing_av_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` fail
    with pytest.raises(MissingDependencyError, match=r"tilevl\[video\]"):
        load_video(tmp_path / "x.mp4")


# ----------------------------------------------------------------------------- with av


def colour(i):
    return (8 * i, 255 - 8 * i, 128)


def write_video(path, codec="libx264", num_frames=NUM_FRAMES, **options):
    """Frame i is flat `colour(i)`; lossless codecs keep colours within ~3 levels (RGB↔YUV)."""
    av = pytest.importorskip("av")
    try:
        av.codec.Codec(codec, "w")
    except Exception:  # a PyAV build without this encoder
        pytest.skip(f"PyAV has no {codec} encoder")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS, options=options)
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "yuv420p"
        container.start_encoding()  # writes the header even when no frame follows
        for i in range(num_frames):
            arr = np.empty((HEIGHT, WIDTH, 3), np.uint8)
            arr[:] = colour(i)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "colours.mp4", qp="0")


def frames_seen(pixel_values, num_patches):
    """Which source frame each sampled frame shows, from the mean colour of its first tile."""
    mean = np.asarray(IMAGENET_MEAN)[:, None]
    std = np.asarray(IMAGENET_STD)[:, None]
    palette = np.array([colour(i) for i in range(NUM_FRAMES)], np.float64)
    starts = np.cumsum([0] + num_patches[:-1])
    seen = []
    for s in starts:
        rgb = (pixel_values[s].reshape(3, -1).numpy() * std + mean).mean(1) * 255
        seen.append(int(np.abs(palette - rgb).sum(1).argmin()))
    return seen


def test_load_video_picks_the_get_index_frames(mp4):
    pixel_values, num_patches = load_video(mp4, num_segments=8)
    assert pixel_values.shape == (8, 3, 448, 448)
    assert num_patches == [1] * 8
    assert frames_seen(pixel_values, num_patches) == [1, 5, 8, 12, 15, 19, 23, 26]


def test_load_video_with_bound(mp4):
    pixel_values, num_patches = load_video(mp4, num_segments=4, bound=(0.5, 1.0), image_size=28)
    assert frames_seen(pixel_values, num_patches) == [16, 20, 23, 26]


def test_load_video_tiles_each_frame(mp4):
    cols, rows = choose_grid(WIDTH, HEIGHT, 28, 1, 6)
    pixel_values, num_patches = load_video(mp4, num_segments=3, image_size=28, max_num=6)
    per_frame = cols * rows + (cols * rows > 1)
    assert num_patches == [per_frame] * 3
    assert pixel_values.shape == (3 * per_frame, 3, 28, 28)


def test_container_without_frame_count(tmp_path):
    # Matroska has no frame count in its header: the demux-only count is used instead.
    mkv = write_video(tmp_path / "colours.mkv", codec="ffv1")
    pixel_values, num_patches = load_video(mkv, num_segments=8, image_size=28)
    assert frames_seen(pixel_values, num_patches) == [1, 5, 8, 12, 15, 19, 23, 26]


def test_broken_videos(tmp_path, mp4):
    pytest.importorskip("av")
    with pytest.raises(InputError, match="nothere.mp4.*no such video"):
        load_video(tmp_path / "nothere.mp4")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.mp4.*empty"):
        load_video(empty)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(InputError, match="junk.mp4"):
        load_video(junk)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(mp4.read_bytes()[:200])
    with pytest.raises(InputError, match="cut.mp4"):
        load_video(cut)
    no_frames = write_video(tmp_path / "none.mkv", codec="ffv1", num_frames=0)
    with pytest.raises(InputError, match="none.mkv.*(no frames|empty or cut short)"):
        load_video(no_frames)
    with pytest.raises(InputError, match="bound"):
        load_video(mp4, bound=(5.0, 6.0))  # the video lasts 1 s


def test_cli_video_uses_the_model_cards_defaults(mp4, tmp_path, monkeypatch, tokenizer):
    """`tilevl chat --video` as the InternVL3.5 card's video example: 8 frames, 1 tile each,
    "Frame{i}: <image>" lines before the question (all cards since InternVL2 agree)."""
    import tilevl
    from tilevl.chat.session import ChatSession
    from tilevl.checkpoint.tokenizer import img_context_token_id
    from tilevl.cli import main
    from tilevl.inputs.video import CARD_NUM_SEGMENTS, CARD_TILES_PER_FRAME

    assert (CARD_NUM_SEGMENTS, CARD_TILES_PER_FRAME) == (8, 1)
    model = tilevl.build_model("tiny", seed=0)
    model.img_context_token_id = img_context_token_id(tokenizer)
    tilevl.save_model(model, tmp_path / "tiny", tokenizer=tokenizer)
    seen = {}

    def generate(self, ids, settings, streamer):
        seen["patches"] = list(self.num_patches_list)
        seen["prompt"] = tokenizer.decode(ids)
        if streamer is not None:
            streamer.end()
        return tokenizer("ok<|im_end|>", add_special_tokens=False)["input_ids"]

    monkeypatch.setattr(ChatSession, "_generate", generate)
    assert main(["chat", str(tmp_path / "tiny"), "--video", str(mp4), "What happens?"]) == 0
    assert seen["patches"] == [1] * 8
    assert "Frame8: <img>" in seen["prompt"] and "Frame9" not in seen["prompt"]
    assert "</img>\nWhat happens?<|im_end|>" in seen["prompt"]
