"""Shot boundaries (timeviper.shots): the synthetic world's scenes found exactly, in memory and through an MP4,
whatever the chunking; short shots joined; bad settings refused."""

import pytest
import torch

from timeviper.data.synth_source import sample_video
from timeviper.errors import ConfigError
from timeviper.shots import ShotConfig, ShotCuts
from timeviper.synth import make_video, write_mp4
from timeviper.video import load_video


def shots_of(frames, config=ShotConfig(), chunk=None):
    cuts = ShotCuts(config)
    for part in frames.split(chunk or len(frames)):
        cuts.update(part)
    return cuts.shots()


def scene_spans(spec):
    return [(scene.start, scene.end) for scene in spec.scenes]


@pytest.mark.parametrize("seed, frames", [(1_000_000, 256), (1_000_007, 256), (1_000_003, 32), (1_000_021, 130)])
def test_the_shots_of_a_synthetic_video_are_its_scenes(seed, frames):
    spec = make_video(seed, frames)
    assert len(spec.scenes) > 1
    video = sample_video(spec).frames
    assert shots_of(video) == scene_spans(spec)
    assert shots_of(video, chunk=7) == scene_spans(spec)  # a cut between chunks is found too


def test_shots_survive_mp4_compression(tmp_path):
    spec = make_video(1_000_002, 64)
    video = load_video(write_mp4(spec, tmp_path / "v.mp4"))
    assert shots_of(video.frames) == scene_spans(spec)


def test_large_frames_are_compared_shrunk():
    sky = torch.full((3, 384, 384, 3), 200, dtype=torch.uint8)
    sky[2] = 20  # a cut to a dark frame
    sky[1, :40, :40] = 0  # a small object appears: no cut
    assert shots_of(sky) == [(0, 2), (2, 3)]


def test_no_shot_is_shorter_than_min_frames():
    frames = torch.zeros(10, 16, 16, 3, dtype=torch.uint8)
    for start, value in ((3, 100), (4, 200), (8, 50)):  # cuts at 3, 4 and 8
        frames[start:] = value
    assert shots_of(frames) == [(0, 3), (3, 4), (4, 8), (8, 10)]
    assert shots_of(frames, ShotConfig(min_frames=2)) == [(0, 3), (3, 8), (8, 10)]  # the cut at 4 is too close to 3
    assert shots_of(frames, ShotConfig(min_frames=3)) == [(0, 3), (3, 10)]  # and the one at 8 too close to the end
    assert shots_of(frames[:2], ShotConfig(min_frames=3)) == [(0, 2)]
    assert ShotCuts().shots() == []


def test_frames_of_another_size_are_refused():
    cuts = ShotCuts()
    cuts.update(torch.zeros(2, 16, 16, 3, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="another size"):
        cuts.update(torch.zeros(2, 8, 8, 3, dtype=torch.uint8))


@pytest.mark.parametrize("kwargs, message", [({"cut_share": 0}, "cut_share"), ({"cut_share": 1.5}, "cut_share"),
                                             ({"cut_share": float("nan")}, "cut_share"), ({"pixel_delta": 255}, "255"),
                                             ({"pixel_delta": -1}, "pixel_delta"), ({"min_frames": 0}, "min_frames"),
                                             ({"max_frames": 0}, "max_frames")])
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ShotConfig(**kwargs)
