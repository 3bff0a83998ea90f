import json
import re

import av
import numpy as np
import pytest

from timeviper.errors import ConfigError
from timeviper.synth import (
    MCQ_KINDS,
    Actor,
    Scene,
    VideoSpec,
    BACKGROUNDS,
    NEEDLE_BACKGROUNDS,
    OBJECTS,
    iter_items,
    make_item,
    make_video,
    parse_caption,
    render_frames,
    render_item,
    same_colour_haystack,
    split_of,
    split_range,
    stream_frames,
    write_mp4,
)
from timeviper.synth.render import OBJECT_RGB, _background
from timeviper.synth.world import NEEDLE_MIN_FRAMES, OBJECT_SIZE, background_name, background_parts

LENGTHS = (1, 2, 10, 30, 60, 120, 256, 600, 3600)
SPECS = [make_video(seed, LENGTHS[seed % len(LENGTHS)]) for seed in range(400)]


def test_same_seed_same_video_and_items():
    assert make_video(5, 300) == make_video(5, 300)
    assert np.array_equal(render_frames(make_video(5, 300), 100, 140), render_frames(make_video(5, 300), 100, 140))
    for task in ("mcq", "tvg", "caption"):
        assert make_item(task, 9, 200) == make_item(task, 9, 200)


def test_different_seeds_differ():
    a, b = make_video(1, 300), make_video(2, 300)
    assert a.scenes != b.scenes
    assert not np.array_equal(render_frames(a), render_frames(b))
    assert make_item("caption", 1, 300)[1]["caption"] != make_item("caption", 2, 300)[1]["caption"]


@pytest.mark.parametrize("frames", [1, 10, 3600])
def test_lengths(frames):
    spec = make_video(3, frames)
    assert spec.scenes[0].start == 0 and spec.scenes[-1].end == frames and spec.duration == frames
    chunk = render_frames(spec, frames // 2, min(frames, frames // 2 + 4), size=64)
    assert chunk.dtype == np.uint8 and chunk.shape == (min(frames, frames // 2 + 4) - frames // 2, 64, 64, 3)


def test_chunks_agree_with_larger_renders():
    hour = make_video(11, 3600)
    assert np.array_equal(render_frames(hour, 1800, 1810), render_frames(hour, 1790, 1830)[10:20])
    spec = make_video(12, 500)
    assert np.array_equal(np.concatenate(list(stream_frames(spec, chunk=64))), render_frames(spec))
    big = render_frames(spec, 200, 203, size=384)
    assert big.shape == (3, 384, 384, 3)


@pytest.mark.parametrize("spec", SPECS[:60] + [s for s in SPECS if s.frames >= 600])
def test_world_invariants(spec):
    scenes = spec.scenes
    assert all(a.end == b.start for a, b in zip(scenes, scenes[1:]))
    assert all(a.background != b.background for a, b in zip(scenes, scenes[1:]))
    events = [(s.background, a.obj, a.motion) for s in scenes for a in s.actors]
    assert len(events) == len(set(events))
    half = OBJECT_SIZE / 2
    for scene in scenes:
        assert 1 <= len(scene.actors) <= 3 and len({a.obj for a in scene.actors}) == len(scene.actors)
        bounds = [scene.start] + [t for a in scene.actors for t in (a.start, a.end)] + [scene.end]
        assert bounds == sorted(bounds) and all(a.end > a.start for a in scene.actors)
        for a in scene.actors:
            assert all(half - 1e-9 <= c <= 1 - half + 1e-9 for c in a.path)
    needle = spec.needle
    if needle:
        assert spec.frames >= NEEDLE_MIN_FRAMES and 3 <= needle.end - needle.start <= 10
        assert len(needle.actors) == 1 and (needle.actors[0].start, needle.actors[0].end) == (needle.start, needle.end)
        assert all(s.end - s.start >= 20 for s in scenes if s is not needle)
        assert sum(s.background in NEEDLE_BACKGROUNDS for s in scenes) == 1


def test_needles_occur_in_long_videos_only():
    assert any(s.needle for s in SPECS) and not any(s.needle for s in SPECS if s.frames < NEEDLE_MIN_FRAMES)


def test_background_parts_inverts_background_name():
    for name in BACKGROUNDS + NEEDLE_BACKGROUNDS:
        assert background_name(*background_parts(name)) == name
    assert background_parts("teal") == ("plain", "teal") and background_parts("dotted teal") == ("dotted", "teal")


def test_same_colour_haystack_keeps_only_the_pattern_apart():
    specs = [s for s in SPECS if s.needle][:12]
    for spec in specs:
        hidden = same_colour_haystack(spec)
        colour = background_parts(spec.needle.background)[1]
        assert hidden.needle == spec.needle and len({s.background for s in hidden.scenes}) == min(4, len(spec.scenes))
        assert all(background_parts(s.background)[1] == colour for s in hidden.scenes)
        assert all(a.background != b.background for a, b in zip(hidden.scenes, hidden.scenes[1:]))
        assert [s.actors for s in hidden.scenes] == [s.actors for s in spec.scenes]
    with pytest.raises(ConfigError, match="no needle"):
        same_colour_haystack(next(s for s in SPECS if not s.needle))


def test_pixels_show_the_spec():
    spec = make_video(21, 90)
    frames = render_frames(spec)
    for scene in spec.scenes:
        for t in range(scene.start, scene.end):
            actor = next((a for a in scene.actors if a.start <= t < a.end), None)
            if actor is None:
                assert np.array_equal(frames[t], _background(scene.background, 64))
            else:
                x, y = (min(63, int(c * 64)) for c in actor.center(t))
                assert tuple(frames[t, y, x]) == OBJECT_RGB[actor.obj.split()[0]]


def test_mp4_round_trip(tmp_path):
    spec = make_video(4, 12)
    path = write_mp4(spec, tmp_path / "v.mp4")
    with av.open(str(path)) as container:
        decoded = [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    assert [t for t, _ in decoded] == [float(t) for t in range(12)]
    pixels = np.stack([f for _, f in decoded])
    assert pixels.shape == (12, 64, 64, 3)
    assert np.abs(pixels.astype(int) - render_frames(spec)).mean() < 4


def test_split_boundaries():
    assert [split_of(s) for s in (0, 999_999, 1_000_000, 1_099_999, 1_100_000, 10**12)] == [
        "train", "train", "validation", "validation", "test", "test"
    ]
    assert split_range("train")[-1] == 999_999 and split_range("validation")[0] == 1_000_000
    with pytest.raises(ConfigError):
        split_of(-1)
    with pytest.raises(ConfigError, match="split"):
        split_range("dev")


def _quoted(pattern, text):
    return re.search(pattern, text)[1]


def _mcq_truth_holds(spec, item):
    """Recompute the item's answer from the spec, independently of tasks.py."""
    events = spec.events()
    options, answer = item["options"], item["options"]["ABCD".index(item["answer"])]
    others = [o for o in options if o != answer]
    shown = [a.obj for _, a in events]
    kind, question = item["kind"], item["question"]
    if kind == "present":
        return answer in shown and not set(others) & set(shown)
    if kind in ("scene", "needle"):
        scene = spec.needle if kind == "needle" else spec.scenes[0 if "first" in question else -1]
        inside = {a.obj for a in scene.actors}
        return answer in inside and not set(others) & inside
    if kind == "background":
        obj = _quoted(r"when the (\w+ \w+) appears", question)
        return {s.background for s, a in events if a.obj == obj} == {answer}
    if kind == "order":
        first = {o: shown.index(o) if o in shown else len(shown) for o in options}
        return all(first[answer] < first[o] for o in others)
    if kind == "count":
        obj = _quoted(r"does the (\w+ \w+) appear", question)
        return shown.count(obj) == int(answer) and str(shown.count(obj)) not in others
    if kind == "motion":
        obj, bg = re.search(r"the (\w+ \w+) move on the (.+) background", question).groups()
        (motion,) = [a.motion for s, a in events if a.obj == obj and s.background == bg]
        return motion == answer
    raise AssertionError(kind)


def test_mcq_answers_are_true():
    kinds, letters = set(), []
    for seed in range(500):
        spec, item = make_item("mcq", seed, LENGTHS[seed % len(LENGTHS)])
        assert len(item["options"]) == 4 == len(set(item["options"]))
        assert _mcq_truth_holds(spec, item), item
        kinds.add(item["kind"])
        letters.append(item["answer"])
    assert kinds == set(MCQ_KINDS)
    assert all(80 <= letters.count(letter) <= 170 for letter in "ABCD")


def test_tvg_span_is_the_unique_event():
    for seed in range(200):
        spec, item = make_item("tvg", seed, LENGTHS[seed % len(LENGTHS)])
        obj, motion, bg = re.fullmatch(r"the (\w+ \w+) moves (\w+) on the (.+) background", item["query"]).groups()
        (actor,) = [a for s, a in spec.events() if (a.obj, a.motion, s.background) == (obj, motion, bg)]
        assert (item["start"], item["end"]) == (actor.start, actor.end)
        assert 0 <= item["start"] < item["end"] <= item["duration"]


def test_caption_parses_back_to_the_scenes():
    for spec in SPECS[:100]:
        _, item = make_item("caption", spec.seed, spec.frames)
        expected = [(s.background, tuple((a.obj, a.motion) for a in s.actors)) for s in spec.scenes]
        assert parse_caption(item["caption"]) == expected


def test_render_item_writes_video_and_item(tmp_path):
    item = render_item("tvg", 7, 8, tmp_path / "out", size=96)
    assert json.loads((tmp_path / "out" / "item.json").read_text()) == item
    assert {"id", "task", "seed", "frames", "question", "start", "end", "duration"} <= item.keys()
    with av.open(str(tmp_path / "out" / "video.mp4")) as container:
        assert container.streams.video[0].width == 96 and sum(1 for _ in container.decode(video=0)) == 8


def test_iter_items_draws_lengths_from_a_range():
    items = [item for _, item in iter_items("mcq", range(50), (10, 3600))]
    assert all(10 <= item["frames"] <= 3600 for item in items) and len({i["frames"] for i in items}) > 20
    assert items == [item for _, item in iter_items("mcq", range(50), (10, 3600))]


def test_bad_input_raises_config_error(tmp_path):
    spec = make_video(0, 10)
    for call in (
        lambda: make_item("qa", 0, 10),
        lambda: make_video(-1, 10),
        lambda: make_video(0, 0),
        lambda: make_video(0, 10, size=8),
        lambda: render_frames(spec, 5, 11),
        lambda: render_frames(spec, 0, 2, size=8),
        lambda: write_mp4(spec, tmp_path / "x.mp4", size=65),
        lambda: list(iter_items("mcq", [0], (0, 5))),
    ):
        with pytest.raises(ConfigError):
            call()


def test_objects_are_distinct_at_64_px():
    """Any two objects differ clearly (by more than 60 levels) in at least 16 pixels of a 64-px frame."""
    frames = [
        render_frames(VideoSpec(0, 1, (Scene("gray", 0, 1, (Actor(obj, "left", 0, 1, (0.5, 0.5, 0.5, 0.5)),)),)))[0]
        for obj in OBJECTS
    ]
    frames = np.stack(frames).astype(int)
    for i, frame in enumerate(frames[:-1]):
        differing = (np.abs(frames[i + 1 :] - frame).max(-1) > 60).sum((1, 2))
        assert differing.min() >= 16, OBJECTS[i]
