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
from timeviper.sampling import kept_samples


@dataclass(frozen=True)
class EncodedVideo:
    tokens: Tensor  # [F, n, C] vision tokens of every frame, before their times are added
    times: Tensor  # [F] float64 seconds at which the frames are shown, ascending
    fps: float

    @property
    def duration(self) -> float:
        """Seconds the frames cover: up to the last one's end."""
        return float(self.times[-1]) + 1 / self.fps

    def clip(self, model, a: int, b: int, origin: float, chunk_frames: int = 256,
             max_frames: int | None = None) -> Iterator[Tensor]:
        """The model's input for frames [a, b) (at most `max_frames` of them, spread evenly, the first and last
        kept), their times counted from `origin` seconds: chunks [1, f * n, C] for TimeViper.prefill_tokens."""
        index = a + torch.from_numpy(kept_samples(b - a, max_frames, "uniform")).long()  # [f]
        for chunk in index.split(chunk_frames):
            yield model.add_frame_times(self.tokens[chunk], self.times[chunk] - origin).flatten(0, 1)[None]


def encode(model, video, fps: float = 1.0, chunk_frames: int = 256,
           on_frames: Callable[[int], None] | None = None, on_chunk: Callable | None = None) -> EncodedVideo:
    """Every frame of `video` (a path, a decoded timeviper.sampling.Video, or uint8 frames [T, H, W, 3] taken as sampled
    at `fps`) through the vision encoder, `chunk_frames` at a time; `on_frames(n)` is told of frames encoded and
    `on_chunk(chunk)` sees each decoded timeviper.sampling.Video chunk (its uint8 frames and timestamps)."""
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
