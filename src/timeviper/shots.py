"""Shot boundaries: where most of the picture changes at once.

A hard cut replaces nearly every pixel between two frames; an object moving, appearing or leaving replaces few. A
frame starts a new shot when at least `cut_share` of its pixels differ from the frame before by more than
`pixel_delta` (of 255) in some channel, after both are shrunk to at most SIDE pixels a side. On the synthetic
world's validation videos (100 of 256 s) the share is at least 0.30 at every scene change and at most 0.12
within a scene (objects are a sixteenth of the frame), so the default 0.2 finds exactly its scenes. Fades,
camera motion and flashes are not cuts this measure knows; on real video tune `cut_share` and `min_frames`.
`max_frames` is for the shots' readers (timeviper.captioning): how many frames of a shot the model is shown.

    cuts = ShotCuts()
    for chunk in frame_chunks("video.mp4"):
        cuts.update(chunk.frames)
    cuts.shots()  # [(0, 31), (31, 75), ...]: frame ranges [a, b)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from timeviper.errors import ConfigError
from timeviper.synth.world import check_int

SIDE = 64  # pixels: frames are compared at this side at most


@dataclass(frozen=True)
class ShotConfig:
    cut_share: float = 0.2  # share of pixels that must change for a cut
    pixel_delta: int = 24  # a pixel changes when a channel moves by more than this (0-255)
    min_frames: int = 1  # no shot is shorter (unless the video is): cuts this near the last or the end are dropped
    max_frames: int | None = 32  # frames of a shot the model reads at most, spread evenly; None: all

    def __post_init__(self):
        if isinstance(self.cut_share, bool) or not isinstance(self.cut_share, (int, float)) \
                or not 0 < self.cut_share <= 1 or math.isnan(self.cut_share):
            raise ConfigError(f"shots: cut_share must be a share in (0, 1], got {self.cut_share!r}")
        check_int("shots: pixel_delta", self.pixel_delta, 0)
        if self.pixel_delta > 254:
            raise ConfigError(f"shots: pixel_delta must be below 255, got {self.pixel_delta}")
        check_int("shots: min_frames", self.min_frames, 1)
        if self.max_frames is not None:
            check_int("shots: max_frames", self.max_frames, 1)


def shrink(frames: Tensor) -> Tensor:
    """uint8 [T, H, W, 3] -> float [T, 3, h, w], the longer side at most SIDE (area averaging)."""
    x = frames.permute(0, 3, 1, 2).float()
    scale = max(frames.shape[1:3]) / SIDE
    if scale > 1:
        x = F.interpolate(x, size=(round(frames.shape[1] / scale), round(frames.shape[2] / scale)), mode="area")
    return x


def changed_share(frames: Tensor, pixel_delta: int) -> Tensor:
    """[T, 3, h, w] (shrunk) -> [T - 1]: the share of pixels of each frame that differ from the frame before."""
    return ((frames[1:] - frames[:-1]).abs().amax(1) > pixel_delta).float().mean(dim=(1, 2))


class ShotCuts:
    """Frames fed in order, chunk by chunk (the last frame of a chunk is kept for the next one's first)."""

    def __init__(self, config: ShotConfig = ShotConfig()):
        self.config = config
        self.frames = 0
        self.cuts: list[int] = []  # frames that start a shot, after the first
        self._last: Tensor | None = None  # [1, 3, h, w]

    def update(self, frames: Tensor) -> None:
        """The next uint8 frames [T, H, W, 3] of the video."""
        if not len(frames):
            return
        x, first = shrink(frames), self.frames  # first: the frame x[0] is
        if self._last is not None:
            if self._last.shape != x[:1].shape:
                raise ConfigError(f"shots: frames of {tuple(frames.shape[1:])} follow frames of another size")
            x, first = torch.cat([self._last, x]), first - 1
        share = changed_share(x, self.config.pixel_delta)  # [len(x) - 1]: share[i] is of frame first + 1 + i
        self.cuts += (first + 1 + torch.nonzero(share >= self.config.cut_share).flatten()).tolist()
        self.frames += len(frames)
        self._last = x[-1:]

    def shots(self) -> list[tuple[int, int]]:
        """Frame ranges [a, b) of the shots of the frames fed so far, in order (none if none were)."""
        starts = [0]
        for cut in self.cuts:
            if cut - starts[-1] >= self.config.min_frames:
                starts.append(cut)
        if len(starts) > 1 and self.frames - starts[-1] < self.config.min_frames:
            starts.pop()
        return list(zip(starts, starts[1:] + [self.frames])) if self.frames else []
