"""Captions shot by shot: a long video described one shot at a time, the shots' captions joined in order.

Asked for a caption of a whole video in one pass, a model has to hold every scene in mind and give them back in
order; the embedded model gets most scenes right but loses their order as videos grow (scene-F1 0.67 at 32 s, 0.24
at 256 s; shot by shot 0.95 and 0.96). Cut at its shots (timeviper.shots), a video becomes a row of short videos of
one scene each, which it describes well:

1. every frame is encoded once (timeviper.clips), and the video is cut into shots as its frames stream by;
2. each shot is captioned as a video of its own (its frames re-timed from its start; at most `config.max_frames` of
   them, 32 by default, spread evenly: the embedded model was trained on scenes read so, `synth.shot_frames`),
   `batch` shots decoded together;
3. the captions are joined: in the synthetic world's grammar ("Scene 1: a teal background with ..."), their scenes
   are numbered afresh and a scene split across two shots (same background, one after the other) becomes one, with
   the actors of both; any other text is joined shot by shot after its time span ("[0-12 s] ...").

    captioned = caption_by_shots(model, "video.mp4")
    captioned.caption  # the whole video's; captioned.shots: each shot's span and caption
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from timeviper.clips import encode
from timeviper.prompts import CAPTION_PROMPT
from timeviper.shots import ShotConfig, ShotCuts
from timeviper.synth.tasks import Scenes, parse_caption, scenes_text
from timeviper.synth.world import check_int


@dataclass(frozen=True)
class ShotCaption:
    start: float  # seconds of the video
    end: float
    text: str


@dataclass(frozen=True)
class Captioned:
    caption: str  # the shots' captions joined (join_captions)
    shots: list[ShotCaption]  # in order
    frames: int  # frames read


def join_captions(shots: list[ShotCaption]) -> str:
    """One caption of the shots' (see the module's docstring, step 3)."""
    parsed = [parse_caption(shot.text) for shot in shots]
    if not all(parsed):  # some caption is not a list of scenes
        return " ".join(f"[{shot.start:.0f}-{shot.end:.0f} s] {shot.text}" for shot in shots)
    scenes: Scenes = []
    for background, actors in (scene for caption in parsed for scene in caption):
        if scenes and scenes[-1][0] == background:  # one scene, cut in two
            scenes[-1] = (background, tuple(dict.fromkeys(scenes[-1][1] + actors)))
        else:
            scenes.append((background, actors))
    return scenes_text(scenes)


def caption_by_shots(model, video, config: ShotConfig = ShotConfig(), fps: float = 1.0, chunk_frames: int = 256,
                     max_new_tokens: int = 256, batch: int = 8, on_frames: Callable[[int], None] | None = None,
                     on_shot: Callable[[int, int], None] | None = None) -> Captioned:
    """The caption of `video` (a path, a decoded timeviper.sampling.Video, or uint8 frames [T, H, W, 3] taken as sampled
    at `fps`), shot by shot. `on_frames(n)` is told of frames encoded, `on_shot(i, total)` of shots captioned."""
    check_int("captions by shot: batch", batch, 1)
    cuts = ShotCuts(config)
    encoded = encode(model, video, fps, chunk_frames, on_frames, on_chunk=lambda chunk: cuts.update(chunk.frames))
    spans = cuts.shots()  # [(a, b)] frame ranges
    times = encoded.times.tolist()
    shots = []
    for first in range(0, len(spans), batch):
        group = spans[first:first + batch]
        prefilled = [model.prefill_tokens(encoded.clip(model, a, b, times[a], chunk_frames, config.max_frames),
                                         CAPTION_PROMPT)
                     for a, b in group]
        texts = model.decode(prefilled, max_new_tokens)
        shots += [ShotCaption(times[a], times[b - 1] + 1 / fps, text) for (a, b), text in zip(group, texts)]
        if on_shot is not None:
            on_shot(len(shots), len(spans))
    return Captioned(join_captions(shots), shots, len(times))
