"""Captions shot by shot (timeviper.captioning): captions joined in the synthetic grammar or by time span, each shot
read as a video of its own on a tiny random model, and the command line."""

import json

import pytest
import torch
from test_cli import model_dir, run, video  # noqa: F401 (fixtures)
from test_time_embedding import timed_model, tokenizer  # noqa: F401 (fixture)

from timeviper.captioning import ShotCaption, caption_by_shots, join_captions
from timeviper.errors import ConfigError
from timeviper.prompts import CAPTION_PROMPT
from timeviper.shots import ShotConfig
from timeviper.sampling import Video


def shot(text, start=0.0, end=1.0):
    return ShotCaption(start, end, text)


def test_scenes_are_numbered_afresh_and_a_scene_cut_in_two_is_one():
    joined = join_captions([
        shot("Scene 1: a teal background with a red star moving up."),
        shot("Scene 1: a teal background with a red star moving up, then a blue circle moving left. "
             "Scene 2: a striped gray background with a white cross moving down."),
        shot("Scene 1: a pink background with a red star moving right."),
    ])
    assert joined == ("Scene 1: a teal background with a red star moving up, then a blue circle moving left. "
                      "Scene 2: a striped gray background with a white cross moving down. "
                      "Scene 3: a pink background with a red star moving right.")


def test_a_scene_outside_the_grammar_keeps_its_text():
    joined = join_captions([shot("Scene 1: a teal background with a red star moving up."), shot("Scene 1: a blur")])
    assert joined == "Scene 1: a teal background with a red star moving up. Scene 2: a blur"


def test_free_text_is_joined_after_each_shots_time_span():
    joined = join_captions([shot("A dog runs.", 0, 12.0), shot("Scene 1: a teal background with a red star moving up.",
                                                               12.0, 30.5)])
    assert joined == "[0-12 s] A dog runs. [12-30 s] Scene 1: a teal background with a red star moving up."


def two_shots(length=12, cut=5):
    """uint8 frames [length, 32, 32, 3]: a still picture with a little noise, another one from `cut` on."""
    torch.manual_seed(1)
    first, second = (torch.randint(0, 256, (1, 32, 32, 3)) for _ in range(2))
    frames = torch.where(torch.arange(length)[:, None, None, None] < cut, first, second)
    return (frames + torch.randint(-4, 5, frames.shape)).clamp(0, 255).to(torch.uint8)


def test_each_shot_is_captioned_as_a_video_of_its_own(tokenizer):  # noqa: F811
    model = timed_model(tokenizer)
    frames = two_shots()
    done = []
    captioned = caption_by_shots(model, frames, max_new_tokens=8, on_shot=lambda i, n: done.append((i, n)))
    alone = [model.chat(frames[a:b], CAPTION_PROMPT, max_new_tokens=8) for a, b in ((0, 5), (5, 12))]
    assert [(s.start, s.end, s.text) for s in captioned.shots] == [(0.0, 5.0, alone[0]), (5.0, 12.0, alone[1])]
    assert captioned.frames == 12 and done == [(2, 2)]
    assert captioned.caption == join_captions(captioned.shots)
    one_at_a_time = caption_by_shots(model, frames, max_new_tokens=8, batch=1, on_shot=lambda i, n: done.append(i))
    assert one_at_a_time == captioned and done[1:] == [1, 2]


def test_a_video_of_one_shot_is_captioned_as_in_one_pass(tokenizer):  # noqa: F811
    model = timed_model(tokenizer)
    frames = two_shots(cut=12)
    captioned = caption_by_shots(model, frames, max_new_tokens=8)
    assert [s.text for s in captioned.shots] == [model.chat(frames, CAPTION_PROMPT, max_new_tokens=8)]


def test_a_long_shot_is_read_thinned(tokenizer):  # noqa: F811
    model = timed_model(tokenizer)
    frames = two_shots(length=20, cut=20)
    kept = [0, 5, 10, 14, 19]  # 5 of 20, spread evenly
    captioned = caption_by_shots(model, frames, ShotConfig(max_frames=5), max_new_tokens=8)
    thinned = Video(frames[kept], torch.tensor(kept, dtype=torch.float64), 20.0, "")
    assert captioned.shots[0].text == model.chat(thinned, CAPTION_PROMPT, max_new_tokens=8)
    assert captioned.shots[0].end == 20 and captioned.frames == 20


def test_a_bad_batch_is_refused(tokenizer):  # noqa: F811
    with pytest.raises(ConfigError, match="batch"):
        caption_by_shots(timed_model(tokenizer), two_shots(), batch=0)


def test_caption_shots_on_the_command_line(capsys, model_dir, video):  # noqa: F811
    code, out, _ = run(capsys, "caption", video, "--shots", "--model", model_dir, "--device", "cpu",
                       "--max-new-tokens", 6, "--json", "--quiet")
    result = json.loads(out)
    assert code == 0 and result.keys() == {"caption", "frames", "seconds", "shots", "cuts"}
    assert result["frames"] == 12 and result["shots"][0]["start"] == 0 and result["shots"][-1]["end"] == 12
    assert result["cuts"] == {"cut_share": 0.2, "pixel_delta": 24, "min_frames": 1, "max_frames": 32}
    code, _, err = run(capsys, "caption", video, "--shots", "--max-frames", 4, "--model", model_dir)
    assert code == 1 and "drop --max-frames" in err
    code, _, err = run(capsys, "caption", video, "--shots", "--cut-share", 2, "--model", model_dir)
    assert code == 1 and "cut_share" in err
    code, out, _ = run(capsys, "caption", video, "--shots", "--shot-frames", "all", "--model", model_dir,
                       "--device", "cpu", "--max-new-tokens", 6, "--json", "--quiet")
    assert code == 0 and json.loads(out)["cuts"]["max_frames"] is None
