"""Which moments of a video are read: samples k / fps seconds from its first frame, thinned to at most
max_frames, and the decoded result (`Video`). No decoding here (timeviper.video reads files), so frames made in
memory, as the synthetic world's are, need no PyAV."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from timeviper.errors import ConfigError

SAMPLINGS = ("uniform", "first")
EPS = 1e-6  # seconds; absorbs rounding in pts * time_base


@dataclass
class Video:
    frames: torch.Tensor  # uint8 [T, H, W, 3], RGB, upright
    timestamps: torch.Tensor  # float64 [T], sample times in seconds from the first frame
    duration: float  # seconds of the whole video (declared by the file); 0.0 for a still image
    path: str


def check_sampling(fps, max_frames, sampling) -> None:
    """ConfigError unless fps > 0, max_frames is None or a positive integer, and sampling is one of SAMPLINGS."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf:
        raise ConfigError(f"fps must be a positive number, got {fps!r}")
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int)
                                   or max_frames < 1):
        raise ConfigError(f"max_frames must be a positive integer or None, got {max_frames!r}")
    if sampling not in SAMPLINGS:
        raise ConfigError(f"sampling must be one of {', '.join(SAMPLINGS)}; got {sampling!r}")


def check_chunk_frames(chunk_frames) -> None:
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ConfigError(f"chunk_frames must be a positive integer, got {chunk_frames!r}")


def sample_times(duration: float, fps: float, max_frames: int | None, sampling: str) -> np.ndarray:
    """Sample times in seconds: the grid k / fps over [0, duration), thinned to max_frames."""
    count = max(1, math.ceil(duration * fps - EPS))  # a still image or a one-frame video has one
    return kept_samples(count, max_frames, sampling) / fps


def kept_samples(count: int, max_frames: int | None, sampling: str) -> np.ndarray:
    """Which of `count` samples in a row to keep for at most `max_frames`: all of them, the first max_frames
    ("first"), or max_frames spread evenly with the first and last included ("uniform")."""
    if max_frames is None or count <= max_frames:
        return np.arange(count)
    if sampling == "first":
        return np.arange(max_frames)
    return np.floor(np.linspace(0, count - 1, max_frames) + 0.5)


def frames_within(times: torch.Tensor, intervals) -> torch.Tensor:
    """Bool [F]: which frames (at `times` [F] seconds) fall in any [start, end) of `intervals`."""
    inside = torch.zeros_like(times, dtype=torch.bool)
    for start, end in intervals:
        inside |= (times >= start) & (times < end)
    return inside
