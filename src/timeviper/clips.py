"""A video encoded once, its parts read as videos of their own.

Grounding by search and captioning shot by shot ask the model about many parts of one video. The vision encoder
runs once over every frame (`encode`); a part, frames [a, b), is then shown to the language model re-timed from
its own start (`EncodedVideo.clip`), so it reads exactly as that stretch of video would alone: the frame-time
embedding sees 0 s at the part's first frame, as in training, whatever its place in the video.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from timeviper.errors import ConfigError


@dataclass(frozen=True)
class EncodedVideo:
    tokens: Tensor  # [F, n, C] vision tokens of every frame, before their times are added
    times: Tensor  # [F] float64 seconds at which the frames are shown, ascending
    fps: float

    @property
    def duration(self) -> float:
        """Seconds the frames cover: up to the last one's end."""
        return float(self.times[-1]) + 1 / self.fps

    def clip(self, model, a: int, b: int, origin: float, chunk_frames: int = 256) -> Iterator[Tensor]:
        """The model's input for frames [a, b), their times counted from `origin` seconds: chunks [1, f * n, C]
        for TimeViper.prefill_tokens."""
        for s in range(a, b, chunk_frames):
            e = min(s + chunk_frames, b)
            yield model.add_frame_times(self.tokens[s:e], self.times[s:e] - origin).flatten(0, 1)[None]


def encode(model, video, fps: float = 1.0, chunk_frames: int = 256,
           on_frames: Callable[[int], None] | None = None, on_chunk: Callable | None = None) -> EncodedVideo:
    """Every frame of `video` (a path, a decoded timeviper.video.Video, or uint8 frames [T, H, W, 3] taken as sampled
    at `fps`) through the vision encoder, `chunk_frames` at a time; `on_frames(n)` is told of frames encoded and
    `on_chunk(chunk)` sees each decoded timeviper.video.Video chunk (its uint8 frames and timestamps)."""
    from timeviper.model import frame_chunks

    tokens, times = [], []
    for chunk in frame_chunks(video, fps, chunk_frames=chunk_frames):
        with torch.inference_mode():
            tokens.append(model.frame_tokens(chunk.frames))  # [f, n, C]
        times.append(torch.as_tensor(chunk.timestamps, dtype=torch.float64))
        if on_chunk is not None:
            on_chunk(chunk)
        if on_frames is not None:
            on_frames(len(chunk.frames))
    if not sum(map(len, times)):
        raise ConfigError("the video has no frames")
    return EncodedVideo(torch.cat(tokens), torch.cat(times), fps)
