"""The synthetic world as a training dataset: tasks rendered on the fly, no files.

A dataset entry of a training config such as::

    - {name: synth_mcq, synth: {task: mcq, frames: [16, 256], seeds: [0, 200000], size: 64}, weight: 1}

is a :class:`SynthDataset` whose index ``i`` is the seed ``seeds[0] + i`` (train split only). Its
sample is the conversation inference would see (the task prompt of :func:`task_prompt` after the
``<video>`` placeholder) answered in the form the inference parsers read back (:func:`answer_text`),
with the video's frames drawn at ``fps`` and spread uniformly over at most ``max_frames``, as
:func:`timeviper.video.load_video` would decode them from the video's MP4.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from timeviper.data.records import Sample, Skipped, Tokenize, encode_turns, make_sample
from timeviper.errors import ConfigError
from timeviper.prompts import CAPTION_PROMPT, VIDEO_PLACEHOLDER, grounding_prompt, mcq_prompt
from timeviper.synth import VideoSpec, iter_items, render_frames
from timeviper.synth.world import FPS
from timeviper.video import sample_times

if TYPE_CHECKING:
    from timeviper.train.config import SynthConfig


def task_prompt(item: dict) -> str:
    """The instruction for an item (synthetic, or a benchmark's in the same fields), as inference asks it."""
    task = item["task"]
    if task == "mcq":
        return mcq_prompt(item["question"], item["options"])
    if task == "tvg":
        return grounding_prompt(item["query"])
    if task == "caption":
        return CAPTION_PROMPT
    raise ConfigError(f"item {item.get('id')!r}: unknown task {task!r}")


def answer_text(item: dict) -> str:
    """The ground truth as the model should say it: 'B', '12.0 - 30.0 seconds', or the caption."""
    task = item["task"]
    if task == "mcq":
        return item["answer"]
    if task == "tvg":
        return f"{item['start']:.1f} - {item['end']:.1f} seconds"
    return item["caption"]


def conversation(item: dict) -> list[dict]:
    return [{"from": "human", "value": f"{VIDEO_PLACEHOLDER}\n{task_prompt(item)}"},
            {"from": "gpt", "value": answer_text(item)}]


def sample_frames(spec: VideoSpec, max_frames: int | None = None, sampling: str = "uniform", fps: float = 1.0,
                  size: int | None = None) -> np.ndarray:
    """uint8 [T, size, size, 3]: the frames load_video(mp4 of spec, fps, max_frames, sampling) returns."""
    times = sample_times(spec.duration, fps, max_frames, sampling)
    return np.concatenate([render_frames(spec, t, t + 1, size) for t in (times * FPS + 1e-6).astype(int).tolist()])


class SynthDataset:
    """``dataset[i]``: the :class:`Sample` of seed ``spec.seeds[0] + i`` (or a :class:`Skipped` if too long).

    With ``spec.kind`` an mcq seed asks that kind of question where its video has one, and a random
    kind otherwise, so a needle dataset of long videos holds needles in about half its samples.
    """

    def __init__(self, name: str, spec: SynthConfig, *, tokenize: Tokenize, tokens_per_frame: int,
                 max_tokens: int, max_frames: int = 256, fps: float = 1.0):
        self.name, self.spec = name, spec
        self.tokenize, self.tokens_per_frame, self.max_tokens = tokenize, tokens_per_frame, max_tokens
        self.max_frames, self.fps = max_frames, fps

    def __len__(self) -> int:
        return self.spec.seeds[1] - self.spec.seeds[0]

    def item(self, index: int) -> tuple[VideoSpec, dict]:
        """The video and ground-truth item of ``dataset[index]``."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} is outside [0, {len(self)})")
        s, seed = self.spec, self.spec.seeds[0] + index
        try:
            return next(iter_items(s.task, [seed], s.frames, s.size, s.kind))
        except ConfigError:  # this video has no question of that kind
            return next(iter_items(s.task, [seed], s.frames, s.size))

    def __getitem__(self, index: int) -> Sample | Skipped:
        video, item = self.item(index)
        where = f"{self.name}#{index}"
        text = encode_turns(self.tokenize, conversation(item), where)
        if isinstance(text, Skipped):
            return text
        frames = torch.from_numpy(sample_frames(video, self.max_frames, "uniform", self.fps))
        return make_sample(item["id"], text, frames, self.tokens_per_frame, self.max_tokens, where)
