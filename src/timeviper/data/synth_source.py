"""The synthetic world as a training dataset: tasks rendered on the fly, no files.

A dataset entry of a training config such as::

    - {name: synth_mcq, synth: {task: mcq, frames: [16, 256], seeds: [0, 200000], size: 64}, weight: 1}

is a :class:`SynthDataset` whose index ``i`` is the seed ``seeds[0] + i`` (train split only). Its
sample is the conversation inference would see (the task prompt of :func:`task_prompt` after the
``<video>`` placeholder) answered in the form the inference parsers read back (:func:`answer_text`),
with the video's frames drawn at ``fps`` and spread uniformly over at most ``max_frames``, as
:func:`timeviper.video.load_video` would decode them from the video's MP4. A caption entry with ``shot_frames``
captions one scene of each video instead, read as :func:`timeviper.captioning.caption_by_shots` reads a shot; a
grounding entry with ``shot_frames`` asks about an event in that scene or in another (answered NO_EVENT), as
:func:`timeviper.grounding.ground_by_shots` asks each shot.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from timeviper.data.records import Sample, Skipped, Tokenize, encode_turns, make_sample
from timeviper.errors import ConfigError
from timeviper.prompts import CAPTION_PROMPT, NO_EVENT, VIDEO_PLACEHOLDER, grounding_prompt, mcq_prompt
from timeviper.synth import VideoSpec, iter_items, make_item, render_frames, same_colour_haystack
from timeviper.synth.tasks import LETTERS, caption_text, shot_tvg
from timeviper.synth.world import FPS
from timeviper.sampling import Video, kept_samples, sample_times

if TYPE_CHECKING:
    from timeviper.synth.world import Scene
    from timeviper.train.config import SynthConfig

SHOT_STREAM = 7  # the random stream (after the seed) that picks a shot sample's scene


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


def answer_text(item: dict, mcq_answer: str = "letter") -> str:
    """The ground truth as the model should say it: 'B' (mcq_answer "letter") or 'blue circle (B)'
    ("option": the option, then its letter), '12.0 - 30.0 seconds', or the caption."""
    task = item["task"]
    if task == "mcq":
        return item["answer"] if mcq_answer == "letter" else f"{_chosen(item)} ({item['answer']})"
    if task == "tvg":
        return NO_EVENT if item["start"] is None else f"{item['start']:.1f} - {item['end']:.1f} seconds"
    return item["caption"]


def _chosen(item: dict) -> str:
    return item["options"][LETTERS.index(item["answer"])]


def _fact(item: dict) -> tuple[str, str]:
    """What an item asks and its answer (for mcq the option's text, not its letter)."""
    return item["question"], _chosen(item) if item["task"] == "mcq" else answer_text(item)


def conversation(*items: dict, mcq_answer: str = "letter") -> list[dict]:
    """The items on one video as turns: the first question carries the video, each is answered in turn."""
    turns = []
    for i, item in enumerate(items):
        prompt = f"{VIDEO_PLACEHOLDER}\n{task_prompt(item)}" if i == 0 else task_prompt(item)
        turns += [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer_text(item, mcq_answer)}]
    return turns


def sample_video(spec: VideoSpec, max_frames: int | None = None, sampling: str = "uniform", fps: float = 1.0,
                 size: int | None = None) -> Video:
    """The Video load_video(mp4 of spec, fps, max_frames, sampling) returns (frames uint8 [T, size, size, 3] and
    their timestamps), rendered in memory: no file, so its path is ""."""
    times = sample_times(spec.duration, fps, max_frames, sampling)
    return Video(torch.from_numpy(render_at(spec, times, size)), torch.from_numpy(times), spec.duration, "")


def render_at(spec: VideoSpec, times: np.ndarray, size: int | None = None) -> np.ndarray:
    """uint8 [T, size, size, 3]: the frames of spec on screen at `times` (seconds)."""
    return np.concatenate([render_frames(spec, t, t + 1, size) for t in (times * FPS + 1e-6).astype(int).tolist()])


def sample_frames(spec: VideoSpec, max_frames: int | None = None, sampling: str = "uniform", fps: float = 1.0,
                  size: int | None = None) -> np.ndarray:
    """uint8 [T, size, size, 3]: the frames of sample_video."""
    return sample_video(spec, max_frames, sampling, fps, size).frames.numpy()


class SynthDataset:
    """``dataset[i]``: the :class:`Sample` of seed ``spec.seeds[0] + i`` (or a :class:`Skipped` if too long).

    With ``spec.kind`` an mcq seed asks that kind of question where its video has one, and a random
    kind otherwise, so a needle dataset of long videos holds needles in about half its samples; with
    ``spec.same_colour_haystack`` those videos' other scenes are on backgrounds of the needle's colour.
    With ``spec.questions`` n > 1 a sample asks up to n different questions on its video, one turn each
    (the first as with n = 1, then random kinds, or ``spec.kind`` again with ``spec.same_kind``): n answers
    for the price of one video's tokens. The first question's last token steers attention-guided TransV, as
    its instruction, and its `evidence` is the sample's (see timeviper.evidence).
    """

    def __init__(self, name: str, spec: SynthConfig, *, tokenize: Tokenize, tokens_per_frame: int,
                 max_tokens: int, max_frames: int = 256, fps: float = 1.0):
        self.name, self.spec = name, spec
        self.tokenize, self.tokens_per_frame, self.max_tokens = tokenize, tokens_per_frame, max_tokens
        self.max_frames, self.fps = max_frames, fps

    def __len__(self) -> int:
        return self.spec.seeds[1] - self.spec.seeds[0]

    def item(self, index: int) -> tuple[VideoSpec, dict]:
        """The video and (first) ground-truth item of ``dataset[index]``."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} is outside [0, {len(self)})")
        s, seed = self.spec, self.spec.seeds[0] + index
        try:
            video, item = next(iter_items(s.task, [seed], s.frames, s.size, s.kind))
        except ConfigError:  # this video has no question of that kind
            return next(iter_items(s.task, [seed], s.frames, s.size))
        return (same_colour_haystack(video) if s.same_colour_haystack else video), item

    def items(self, index: int) -> tuple[VideoSpec, list[dict]]:
        """The video of ``dataset[index]`` and its up to ``spec.questions`` items, no two asking the same
        (a repeat would be answered from the turn before, not from the video); a few extra draws make up
        for repeats, and a video with fewer questions gets fewer."""
        video, first = self.item(index)
        s, items = self.spec, [first]
        kind = s.kind if s.same_kind and first.get("kind") == s.kind else None
        asked = {_fact(first)}
        for question in range(1, 4 * s.questions):
            if len(items) == s.questions:
                break
            _, item = make_item(s.task, video.seed, video.frames, s.size, kind, question)
            fact = _fact(item)
            if fact not in asked:
                asked.add(fact)
                items.append(item)
        return video, items

    def shot(self, index: int) -> tuple[VideoSpec, Scene, dict]:
        """``dataset[index]``'s video, the scene a shot sample reads (drawn from the seed's own stream) and its item:
        the scene's caption, or a grounding question on it (timeviper.synth.tasks.shot_tvg)."""
        video, item = self.item(index)
        rng = np.random.Generator(np.random.PCG64([video.seed, SHOT_STREAM]))
        k = int(rng.integers(len(video.scenes)))
        scene, item = video.scenes[k], {**item, "id": f"{item['id']}-scene{k + 1}"}
        if self.spec.task == "tvg":
            return video, scene, {**item, **shot_tvg(video, scene, rng)}
        return video, scene, {**item, "caption": caption_text(replace(video, scenes=(scene,)))}

    def __getitem__(self, index: int) -> Sample | Skipped:
        if self.spec.shot_frames is None:
            (video, items), scene = self.items(index), None
        else:
            video, scene, item = self.shot(index)
            items = [item]
        where = f"{self.name}#{index}"
        text = encode_turns(self.tokenize, conversation(*items, mcq_answer=self.spec.mcq_answer), where)
        if isinstance(text, Skipped):
            return text
        frames, times = self._frames(video, scene)
        return make_sample(items[0]["id"], text, frames, self.tokens_per_frame, self.max_tokens, where, times,
                           tuple(map(tuple, items[0].get("evidence", ()))))

    def _frames(self, video: VideoSpec, scene: Scene | None) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [f, H, W, 3] and their times [f] (seconds): the video's, at `fps` over at most max_frames; or, for a
        shot sample, one scene as its own video: at most shot_frames of its frames (1 fps), spread evenly with the
        first and last kept, timed from the scene's start (as timeviper.clips.EncodedVideo.clip reads a shot)."""
        if scene is None:
            clip = sample_video(video, self.max_frames, "uniform", self.fps)
            return clip.frames, clip.timestamps
        read = min(self.spec.shot_frames, self.max_frames)
        seconds = kept_samples((scene.end - scene.start) * FPS, read, "uniform").astype(float) / FPS  # [f]
        return torch.from_numpy(render_at(video, scene.start + seconds)), torch.from_numpy(seconds)
