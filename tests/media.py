"""Small media files for tests, written with PyAV. Each frame's flat colour encodes its index, so a test
can tell which frames a decoder picked, not only how many."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import av
import numpy as np
from PIL import Image

TIME_BASE = Fraction(1, 1000)  # frame times are written in milliseconds
PIX_FMT = {"mjpeg": "yuvj420p"}  # codecs that want another pixel format than yuv420p


def index_rgb(i: int) -> tuple[int, int, int]:
    """Three base-16 digits of i as RGB levels 16 apart (indices up to 4095 survive lossy coding)."""
    return tuple(16 * ((i >> shift) & 15) + 8 for shift in (8, 4, 0))


def frame_indices(frames) -> list[int]:
    """Read back the index of each frame of a uint8 [T, H, W, 3] tensor written with `index_rgb`."""
    digits = ((np.asarray(frames, np.float64).mean(axis=(1, 2)) - 8) / 16).round().astype(int)  # [T, 3]
    return (digits @ np.array([256, 16, 1])).tolist()


def flat(i: int, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    return np.broadcast_to(np.array(index_rgb(i), np.uint8), (height, width, 3)).copy()


def write_video(path, times: Sequence[float], size: tuple[int, int] = (32, 32), codec: str = "libx264",
                rate: int = 5, pattern: Callable[[int, tuple[int, int]], np.ndarray] = flat,
                rotation: int | None = None, options: dict | None = None,
                container_options: dict | None = None) -> Path:
    """Frame i shows pattern(i, size) from times[i] seconds (any spacing: variable frame rate is fine).
    The nominal `rate` (frames per second) sets how long the last frame lasts."""
    options = {"crf": "12", **(options or {})} if codec == "libx264" else options or {}
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = size
        stream.pix_fmt = PIX_FMT.get(codec, "yuv420p")
        stream.time_base = stream.codec_context.time_base = TIME_BASE
        stream.options = options
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(pattern(i, size), format="rgb24")
            frame.pts, frame.time_base = round(t / TIME_BASE), TIME_BASE
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return Path(path)


def cfr(count: int, rate: float) -> list[float]:
    """Times of `count` frames at a constant `rate` frames per second."""
    return [i / rate for i in range(count)]


def write_audio(path, seconds: float = 1.0, rate: int = 16000) -> Path:
    """An audio-only file (AAC silence)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        for start in range(0, int(seconds * rate), 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return Path(path)


def write_image(path, index: int, size: tuple[int, int] = (20, 12)) -> Path:
    Image.fromarray(flat(index, size)).save(path, quality=95)
    return Path(path)


def damaged_copy(src, dst, keep: float | None = None, overwrite: tuple[float, float] | None = None,
                 seed: int = 0) -> Path:
    """A copy of src cut to its first `keep` fraction of bytes, and/or with the byte range
    `overwrite` = (start, end) fractions replaced by random bytes."""
    data = bytearray(Path(src).read_bytes())
    if overwrite is not None:
        start, end = (int(f * len(data)) for f in overwrite)
        data[start:end] = np.random.default_rng(seed).integers(0, 256, end - start, np.uint8).tobytes()
    if keep is not None:
        data = data[: int(keep * len(data))]
    Path(dst).write_bytes(bytes(data))
    return Path(dst)
