"""The synthetic world: scenes of coloured shapes moving over patterned backgrounds.

A video is a sequence of scenes. Each scene has one background and one to three actors that
appear one after another, each moving in a straight line (left, right, up or down) and then
leaving. Everything follows from an integer seed through numpy's PCG64, so a VideoSpec is a few
hundred bytes however long the video is, and render.py draws any frame of it on demand.

Time is counted in frames at 1 fps: frame t shows second t; an interval [start, end) covers the
frames start..end-1, i.e. the seconds from `start` to `end`.

Guarantees the tasks rely on:
- scenes tile [0, frames); neighbouring scenes have different backgrounds;
- actors of a scene never overlap in time and show different objects;
- an event (object, motion, background) happens at most once per video;
- a video of at least NEEDLE_MIN_FRAMES frames may hold a needle: one scene of 3-10 s on a
  dotted background (a pattern no other scene uses) with a single actor, while every other
  scene of that video lasts at least 20 s.

Seeds are split by range: train < 1,000,000 <= validation < 1,100,000 <= test.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from timeviper.errors import ConfigError

FPS = 1
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
MOTIONS = ("left", "right", "up", "down")
OBJECTS = tuple(f"{color} {shape}" for color in COLORS for shape in SHAPES)
BACKGROUND_COLORS = ("gray", "teal", "brown", "pink")
PATTERNS = ("plain", "striped", "checkered")
NEEDLE_PATTERN = "dotted"


def background_name(pattern: str, color: str) -> str:
    """'teal' for a plain background, else 'striped teal' and the like."""
    return color if pattern == "plain" else f"{pattern} {color}"


def background_parts(name: str) -> tuple[str, str]:
    """('striped', 'teal') for 'striped teal', ('plain', 'teal') for 'teal': background_name's inverse."""
    return tuple(name.split()) if " " in name else ("plain", name)


BACKGROUNDS = tuple(background_name(p, c) for p in PATTERNS for c in BACKGROUND_COLORS)
NEEDLE_BACKGROUNDS = tuple(background_name(NEEDLE_PATTERN, c) for c in BACKGROUND_COLORS)

OBJECT_SIZE = 0.25  # an object's side, as a fraction of the frame's side
MAX_SCENES = 12
NEEDLE_MIN_FRAMES = 120
NEEDLE_SECONDS = (3, 10)
NEEDLE_RATE = 0.5  # share of long-enough videos that hold a needle
MIN_SIZE = 16

SPLITS = {
    "train": range(0, 1_000_000),
    "validation": range(1_000_000, 1_100_000),
    "test": range(1_100_000, 2**63),
}


@dataclass(frozen=True)
class Actor:
    """An object on screen during frames [start, end), its centre moving along `path`."""

    obj: str  # "<color> <shape>", one of OBJECTS
    motion: str  # one of MOTIONS
    start: int
    end: int
    path: tuple[float, float, float, float]  # centre (x0, y0) at start -> (x1, y1) at end - 1

    def center(self, t: int) -> tuple[float, float]:
        """The centre (x, y) at frame t, in fractions of the frame's side (y grows downwards)."""
        f = (t - self.start) / max(1, self.end - self.start - 1)
        x0, y0, x1, y1 = self.path
        return x0 + f * (x1 - x0), y0 + f * (y1 - y0)


@dataclass(frozen=True)
class Scene:
    background: str  # one of BACKGROUNDS or NEEDLE_BACKGROUNDS
    start: int
    end: int
    actors: tuple[Actor, ...]

    @property
    def is_needle(self) -> bool:
        return self.background in NEEDLE_BACKGROUNDS


@dataclass(frozen=True)
class VideoSpec:
    seed: int
    frames: int
    scenes: tuple[Scene, ...]
    size: int = 64  # default side of rendered frames, in pixels

    @property
    def duration(self) -> float:
        return self.frames / FPS

    @property
    def needle(self) -> Scene | None:
        return next((s for s in self.scenes if s.is_needle), None)

    def events(self) -> list[tuple[Scene, Actor]]:
        """(scene, actor) for every actor, in order of time."""
        return [(scene, actor) for scene in self.scenes for actor in scene.actors]


def split_of(seed: int) -> str:
    """'train', 'validation' or 'test': the split a seed belongs to."""
    seed = check_int("seed", seed, 0)
    return next(name for name, seeds in SPLITS.items() if seed in seeds)


def split_range(split: str) -> range:
    """The seeds of a split, e.g. split_range('train')[:1000]."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return SPLITS[split]


def make_video(seed: int, frames: int, size: int = 64) -> VideoSpec:
    """The video of `frames` seconds that `seed` describes."""
    seed, frames = check_int("seed", seed, 0), check_int("frames", frames, 1)
    size = check_int("size", size, MIN_SIZE)
    rng = np.random.Generator(np.random.PCG64(seed))
    has_needle = frames >= NEEDLE_MIN_FRAMES and rng.random() < NEEDLE_RATE
    needle_len = int(rng.integers(NEEDLE_SECONDS[0], NEEDLE_SECONDS[1] + 1)) if has_needle else 0
    layout = list(_backgrounds(rng, _durations(rng, frames - needle_len, has_needle)))
    if has_needle:
        needle_bg = NEEDLE_BACKGROUNDS[rng.integers(len(NEEDLE_BACKGROUNDS))]
        layout.insert(int(rng.integers(len(layout) + 1)), (needle_bg, needle_len))
    cast = [OBJECTS[i] for i in rng.choice(len(OBJECTS), size=rng.integers(3, 7), replace=False)]
    used: set[tuple[str, str, str]] = set()
    scenes, start = [], 0
    for background, length in layout:
        scenes.append(_scene(rng, background, start, start + length, cast, used))
        start += length
    return VideoSpec(seed, frames, tuple(scenes), size)


def same_colour_haystack(spec: VideoSpec) -> VideoSpec:
    """The video with every scene but the needle moved onto a background of the needle's colour (plain, striped and
    checkered in turn): only the dotted pattern then tells the needle scene apart, as among the thousands of scenes
    of a very long video. Actors and times are kept, so a needle question's answer and options hold; an event may
    now repeat on one background, so other kinds of question do not."""
    if spec.needle is None:
        raise ConfigError(f"video {spec.seed} of {spec.frames} frames has no needle scene to hide")
    _, colour = background_parts(spec.needle.background)
    others = itertools.cycle(background_name(p, colour) for p in PATTERNS)
    return replace(spec, scenes=tuple(s if s.is_needle else replace(s, background=next(others)) for s in spec.scenes))


def _durations(rng, total: int, has_needle: bool) -> list[int]:
    """Split `total` seconds into scenes: more and longer scenes for longer videos."""
    shortest, mean = (2 * NEEDLE_SECONDS[1], 30) if has_needle else (1, 10)
    most = int(np.clip(total // mean, 1, MAX_SCENES))
    n = int(rng.integers((most + 1) // 2, most + 1))
    floor = max(shortest, total // (3 * n))
    extra = rng.multinomial(total - n * floor, rng.dirichlet(np.full(n, 2.0)))
    return [floor + int(e) for e in extra]


def _backgrounds(rng, durations: list[int]):
    """Pair each duration with a background that differs from the previous scene's."""
    previous = None
    for length in durations:
        choices = [bg for bg in BACKGROUNDS if bg != previous]
        previous = choices[rng.integers(len(choices))]
        yield previous, length


def _scene(rng, background: str, start: int, end: int, cast: list[str], used: set) -> Scene:
    """A scene whose actors take turns: each owns an equal slot and is on screen for part of it.
    A needle's single actor is on screen all along and may be any object, not just the cast."""
    length, needle = end - start, background in NEEDLE_BACKGROUNDS
    count = 1 if needle else int(rng.integers(1, min(3, max(1, length // 3)) + 1))
    actors = []
    for i in range(count):
        a, b = start + length * i // count, start + length * (i + 1) // count
        on = b - a if needle or b - a <= 2 else int(rng.integers((b - a + 1) // 2, b - a + 1))
        first = a + int(rng.integers(0, b - a - on + 1))
        obj, motion = _pick_event(rng, OBJECTS if needle else cast, background, used, {x.obj for x in actors})
        actors.append(Actor(obj, motion, first, first + on, _path(rng, motion)))
    return Scene(background, start, end, tuple(actors))


def _pick_event(rng, pool, background: str, used: set, taken: set[str]) -> tuple[str, str]:
    """An (object, motion) not yet seen on this background, preferring the video's cast."""
    def free(objects):
        return [(o, m) for o in objects if o not in taken for m in MOTIONS if (o, m, background) not in used]

    choices = free(pool) or free(OBJECTS)  # OBJECTS x MOTIONS (192) outnumber a video's events
    obj, motion = choices[rng.integers(len(choices))]
    used.add((obj, motion, background))
    return obj, motion


def _path(rng, motion: str) -> tuple[float, float, float, float]:
    """A straight path that keeps the whole object inside the frame."""
    lo, hi = OBJECT_SIZE / 2, 1 - OBJECT_SIZE / 2
    travel = rng.uniform(0.3, 0.6)
    fixed = rng.uniform(lo, hi)
    near = rng.uniform(lo, hi - travel)
    begin, end = (near + travel, near) if motion in ("left", "up") else (near, near + travel)
    if motion in ("left", "right"):
        return (begin, fixed, end, fixed)
    return (fixed, begin, fixed, end)


def check_int(name: str, value, least: int) -> int:
    """`value` as an int, or a ConfigError naming `name` if it is not an integer >= `least`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)
