"""Ground-truth items on synthetic videos: multiple choice (mcq), grounding (tvg), captions.

An item is a JSON-ready dict with `id`, `task`, `seed`, `frames`, `duration`, `size`, `question`, and
- mcq: `kind` (the question type, one of MCQ_KINDS), `options` (4 strings), `answer` ("A".."D");
- tvg: `query` (the event), `start` and `end` (seconds; the event is on screen in [start, end));
- caption: `caption`, in the grammar below.
mcq and tvg items also hold `evidence`: the [start, end) intervals (seconds) where what the answer names is on
screen (the answer's object for present/background/order/count, the asked actor for motion/needle, the
asked scene for scene, the event for tvg). It is a training signal (`timeviper.evidence`), never shown to the model.
The video is make_video(seed, frames, size): it does not depend on the task; the question does,
through its own random stream.

Caption grammar (caption_text writes it, parse_caption reads it back):
    Scene 1: a teal background with a blue circle moving left, then an orange star moving up.
    Scene 2: a striped gray background with a white cross moving down.
"""

from __future__ import annotations

import json
import re
from collections import Counter, namedtuple
from pathlib import Path

import numpy as np

from timeviper.errors import ConfigError
from timeviper.prompts import CAPTION_PROMPT
from timeviper.synth.render import write_mp4
from timeviper.synth.world import BACKGROUNDS, MOTIONS, OBJECTS, Actor, Scene, VideoSpec, check_int, make_video

TASKS = ("mcq", "tvg", "caption")
MCQ_KINDS = ("present", "scene", "background", "order", "count", "motion", "needle")
LETTERS = "ABCD"

# A multiple-choice question before its options are drawn: distractors come from `near` first
# (plausible ones: things the video shows elsewhere, or that look alike), then from `far`.
Question = namedtuple("Question", "text answer near far evidence")


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def motion_question(obj: str, background: str) -> str:
    return f"Which way does the {obj} move on the {background} background?"


Scenes = list[tuple[str, tuple[tuple[str, str], ...]]]  # [(background, ((object, motion), ...))], in order


def scenes_text(scenes: Scenes) -> str:
    """Scenes in the caption grammar, numbered from 1; a scene without actors (parse_caption's reading of a scene
    outside the grammar) is written as its text."""
    return " ".join(
        f"Scene {i}: "
        + (f"{article(background)} background with "
           + ", then ".join(f"{article(obj)} moving {motion}" for obj, motion in actors) + "." if actors else background)
        for i, (background, actors) in enumerate(scenes, 1)
    )


def caption_text(spec: VideoSpec) -> str:
    return scenes_text([(scene.background, tuple((a.obj, a.motion) for a in scene.actors)) for scene in spec.scenes])


_SCENE = re.compile(r"^an? (.+?) background with (.+?)\.?$")
_ACTOR = re.compile(r"^(?:an? |the )?(\w+ \w+) mov(?:ing|es) (\w+)$")
_ACTOR_SEPARATOR = re.compile(r",\s*then\s+|,\s*|\s+then\s+|\s+and\s+")


def parse_caption(text: str) -> Scenes:
    """The scenes of a caption as (background, ((object, motion), ...)) in order.

    A scene that does not follow the grammar becomes (its text, ()), which matches no real scene.
    """
    scenes = []
    for body in re.split(r"scene\s+\d+\s*:", text.lower())[1:]:
        body = " ".join(body.split())
        match = _SCENE.match(body)
        actors = [_ACTOR.match(part) for part in _ACTOR_SEPARATOR.split(match[2])] if match else []
        if match and all(actors):
            scenes.append((match[1], tuple((a[1], a[2]) for a in actors)))
        else:
            scenes.append((body, ()))
    return scenes


def _mcq_questions(spec: VideoSpec) -> dict[str, list[Question]]:
    """Every question each kind could ask about this video (an empty list: the kind does not fit).
    Distractor lists may hold the answer; _mcq leaves it out."""
    events = spec.events()
    pairs = [(s.background, a.obj) for s, a in events]
    count = Counter(obj for _, obj in pairs)  # objects in order of first appearance
    shown = list(count)
    absent = [o for o in OBJECTS if o not in count]
    backgrounds = {o: {bg for bg, obj in pairs if obj == o} for o in shown}
    needle = spec.needle
    seen = {o: [(a.start, a.end) for _, a in events if a.obj == o] for o in shown}  # where each object is on screen

    def alike(obj):
        color, shape = obj.split()
        return [o for o in absent if o.startswith(color + " ") or o.endswith(" " + shape)]

    def not_in(scene):
        inside = {a.obj for a in scene.actors}
        return [o for o in shown if o not in inside], [o for o in OBJECTS if o not in inside]

    def in_scene(which, scene):
        return [Question(f"Which object appears in the {which} scene?", a.obj, *not_in(scene), [(scene.start, scene.end)])
                for a in scene.actors]

    return {
        "present": [Question("Which of these objects appears in the video?", o, alike(o), absent, seen[o]) for o in shown],
        "scene": in_scene("first", spec.scenes[0]) + in_scene("last", spec.scenes[-1]) if len(spec.scenes) > 1 else [],
        "background": [  # an object seen only in the needle is for the needle kind to ask about
            Question(f"What is the background when the {o} appears?", bg, [s.background for s in spec.scenes], BACKGROUNDS,
                     seen[o])
            for o, (bg, *more) in backgrounds.items()
            if not more and bg in BACKGROUNDS
        ],
        "order": [
            Question("Which of these objects appears first in the video?", o, shown[i + 1 :], absent, seen[o][:1])
            for i, o in enumerate(shown[:-1])
        ],
        "count": [
            Question(f"How many times does the {o} appear in the video?", str(n), [str(k) for k in range(max(1, n - 3), n + 4)], [],
                     seen[o])
            for o, n in count.items()
        ],
        "motion": [
            Question(motion_question(a.obj, s.background), a.motion, MOTIONS, [], [(a.start, a.end)])
            for s, a in events
            if a.end - a.start > 1 and pairs.count((s.background, a.obj)) == 1
        ],
        "needle": [
            Question("One scene lasts only a few seconds. Which object appears in it?", a.obj, *not_in(needle),
                     [(a.start, a.end)])
            for a in (needle.actors if needle else ())
        ],
    }


def _mcq(spec: VideoSpec, rng, kind: str | None = None) -> dict:
    questions = {kind: qs for kind, qs in _mcq_questions(spec).items() if qs}
    if kind is None:
        kind = list(questions)[rng.integers(len(questions))]
    elif kind not in questions:
        raise ConfigError(f"video {spec.seed} of {spec.frames} frames has no {kind!r} question "
                          f"(it has: {', '.join(questions)})")
    q = questions[kind][rng.integers(len(questions[kind]))]
    candidates = [str(x) for x in (*rng.permutation(q.near), *rng.permutation(q.far))]
    distractors = [x for x in dict.fromkeys(candidates) if x != q.answer][:3]
    position = int(rng.integers(4))
    options = distractors[:position] + [q.answer] + distractors[position:]
    return {"kind": kind, "question": q.text, "options": options, "answer": LETTERS[position],
            "evidence": [[float(a), float(b)] for a, b in q.evidence]}


def _event(scene: Scene, actor: Actor, origin: int = 0) -> dict:
    """A grounding item's fields for one event, its times counted from `origin` (seconds of the video)."""
    start, end = float(actor.start - origin), float(actor.end - origin)
    return {
        "question": f"When does the {actor.obj} move {actor.motion} on the {scene.background} background?",
        "query": f"the {actor.obj} moves {actor.motion} on the {scene.background} background",
        "start": start,
        "end": end,
        "evidence": [[start, end]],
    }


def _moving(events: list[tuple[Scene, Actor]]) -> list[tuple[Scene, Actor]]:
    """The (scene, actor) events whose actor is on screen for more than a second (all of them if none is)."""
    return [(s, a) for s, a in events if a.end - a.start > 1] or events


def _tvg(spec: VideoSpec, rng) -> dict:
    moving = _moving(spec.events())
    return _event(*moving[rng.integers(len(moving))])


def shot_tvg(spec: VideoSpec, scene: Scene, rng) -> dict:
    """A grounding item on one scene of `spec` read as a video of its own (times from the scene's start): an event of
    the scene, or, half the time and whenever the scene has none, an event of another scene, which does not happen
    in it (`start` and `end` None, answered NO_EVENT). A video of one scene is only asked about its own events."""
    elsewhere = [(s, a) for s, a in spec.events() if s is not scene]
    if elsewhere and (not scene.actors or rng.random() < 0.5):
        return {**_event(*elsewhere[rng.integers(len(elsewhere))]), "start": None, "end": None, "evidence": []}
    moving = _moving([(scene, a) for a in scene.actors])
    return _event(*moving[rng.integers(len(moving))], origin=scene.start)


def _caption(spec: VideoSpec, rng) -> dict:
    return {"question": CAPTION_PROMPT, "caption": caption_text(spec)}


BUILDERS = {"mcq": _mcq, "tvg": _tvg, "caption": _caption}


def make_item(task: str, seed: int, frames: int, size: int = 64, kind: str | None = None,
              question: int = 0) -> tuple[VideoSpec, dict]:
    """The video and the ground-truth item of `task` for (seed, frames).

    `kind` (mcq only) asks a question of that kind instead of a random one; a ConfigError says when
    the video has none (e.g. "needle" on a video without a needle scene). `question` n > 0 draws the
    item from a random stream of its own: another question (or event) on the same video.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if kind is not None and (task != "mcq" or kind not in MCQ_KINDS):
        raise ConfigError(f"kind must be one of {', '.join(MCQ_KINDS)} and is for mcq items only; "
                          f"got {kind!r} for {task}")
    spec = make_video(seed, frames, size)
    stream = [spec.seed, TASKS.index(task) + 1] + ([check_int("question", question, 1)] if question else [])
    rng = np.random.Generator(np.random.PCG64(stream))
    item = {
        "id": f"{task}-{spec.seed}-{spec.frames}" + (f"-q{question}" if question else ""),
        "task": task,
        "seed": spec.seed,
        "frames": spec.frames,
        "duration": spec.duration,
        "size": spec.size,
    }
    item.update(_mcq(spec, rng, kind) if kind else BUILDERS[task](spec, rng))
    return spec, item


def render_item(task: str, seed: int, frames: int, out_dir, size: int = 64) -> dict:
    """Write out_dir/video.mp4 and out_dir/item.json; return the item."""
    spec, item = make_item(task, seed, frames, size)
    out_dir = Path(out_dir)
    write_mp4(spec, out_dir / "video.mp4")
    (out_dir / "item.json").write_text(json.dumps(item, indent=2) + "\n")
    return item


def iter_items(task: str, seeds, frames, size: int = 64, kind: str | None = None, question: int = 0):
    """(spec, item) for each seed, without writing files; render frames with render_frames(spec).

    `frames` is a length in seconds, or a (shortest, longest) range from which each seed draws
    its own length, log-uniformly. `kind` and `question` are make_item's.
    """
    for seed in seeds:
        yield make_item(task, seed, _length(seed, frames), size, kind, question)


def _length(seed: int, frames) -> int:
    if isinstance(frames, int):
        return frames
    seed = check_int("seed", seed, 0)
    try:
        lo, hi = (int(f) for f in frames)
    except (TypeError, ValueError):
        raise ConfigError(f"frames must be an int or a (shortest, longest) pair, got {frames!r}") from None
    if not 1 <= lo <= hi:
        raise ConfigError(f"frames range must satisfy 1 <= shortest <= longest, got {frames!r}")
    rng = np.random.Generator(np.random.PCG64([seed, 0]))
    return int(min(hi, np.exp(rng.uniform(np.log(lo), np.log(hi + 1)))))
