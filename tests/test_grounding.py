"""Coarse-to-fine grounding (timeviper.grounding): its pieces, its windows read as videos of their own, the search's
bookkeeping on a tiny random model, and the command line."""

import json
import math

import pytest
import torch
from test_cli import model_dir, run, video  # noqa: F401 (fixtures)
from test_time_embedding import timed_model, tokenizer  # noqa: F401 (fixture)

from timeviper.errors import ConfigError
from timeviper.grounding import SearchConfig, consensus_span, ground_by_shots, search, support, window_starts
from timeviper.model import frame_chunks
from timeviper.prompts import NO_EVENT


def test_consensus_span_is_the_one_that_agrees_most_with_the_others():
    spans = [(10.0, 14.0), (0.0, 3.0), (11.0, 14.0), None, (10.0, 15.0)]
    best, consensus = consensus_span(spans)
    assert best == (10.0, 14.0)  # IoU 0.75 and 0.8 with the other two near it; (10, 15) has 0.8 and 0.6
    assert consensus == pytest.approx((1 + 0 + 0.75 + 0.8) / 5)  # the sample without a span agrees with none
    assert consensus_span([None, None]) == (None, 0.0)
    assert consensus_span([(1.0, 2.0)] * 3) == ((1.0, 2.0), 1.0)


def test_support_is_the_mean_iou_with_the_prior():
    assert support((0.0, 4.0), [(0.0, 4.0), (2.0, 6.0), None, (10.0, 12.0)]) == pytest.approx((1 + 1 / 3) / 4)


@pytest.mark.parametrize("duration, starts", [(64, [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48]),
                                              (66, [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 50]),
                                              (16, [0]), (10, [0]), (17, [0, 1])])
def test_windows_cover_the_video_the_last_ending_at_its_end(duration, starts):
    assert window_starts(duration, 16, 4) == starts


def test_windows_are_a_quarter_of_the_video_at_least_16_s_unless_set():
    assert SearchConfig().windows(10) == (16, 4) and SearchConfig().windows(64) == (16, 4)
    assert SearchConfig().windows(256) == (64, 16) and SearchConfig(stride=2).windows(256) == (64, 2)
    assert SearchConfig(window=8).windows(256) == (8, 2) and SearchConfig(window=8, stride=3).windows(9) == (8, 3)


def test_scales_halve_the_window_down_to_16_s():
    assert SearchConfig().lengths(256) == [(64, 16)]
    assert SearchConfig(scales=2).lengths(256) == [(64, 16), (32, 8)]
    assert SearchConfig(scales=4).lengths(256) == [(64, 16), (32, 8), (16, 4)]
    assert SearchConfig(scales=2).lengths(64) == [(16, 4)] and SearchConfig(scales=2, window=8).lengths(64) == [(8, 2)]


@pytest.mark.parametrize("kwargs, message", [({"window": 0}, "window must be a number > 0"),
                                             ({"stride": -1.0}, "stride"), ({"samples": 1}, "samples"),
                                             ({"prior_weight": float("nan")}, "prior_weight"),
                                             ({"window": True}, "window"), ({"seed": 0.5}, "seed"),
                                             ({"scales": 0}, "scales"), ({"agreement_weight": -1}, "agreement_weight")])
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SearchConfig(**kwargs)


def test_a_window_is_read_as_a_video_of_its_own(tokenizer):  # noqa: F811
    """Frames encoded once and re-timed from a window's start give the logits of the window's frames read alone,
    shown once a second from 0: the search's windows are short videos, whatever their place."""
    model = timed_model(tokenizer)
    frames = torch.randint(0, 256, (12, 32, 32, 3), dtype=torch.uint8)
    times = torch.arange(12, dtype=torch.float64)
    tokens = model.frame_tokens(frames)  # [12, 4, C]
    torch.testing.assert_close(model.add_frame_times(tokens, times).flatten(0, 1), model.embed_frames(frames, times))
    window = slice(5, 11)
    retimed = model.add_frame_times(tokens[window], times[window] - 5).flatten(0, 1)[None]
    _, from_cache = model.prefill_tokens([retimed], "When?")
    _, alone = model.prefill(frame_chunks(frames[window]), "When?")
    torch.testing.assert_close(from_cache, alone)
    _, in_place = model.prefill_tokens([model.add_frame_times(tokens[window], times[window]).flatten(0, 1)[None]],
                                       "When?")
    assert not torch.allclose(from_cache, in_place, atol=1e-3)  # its times are the window's own


def test_search_asks_the_whole_video_and_every_window(tokenizer):  # noqa: F811
    model = timed_model(tokenizer)
    frames = torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8)
    asked, windows = [], []
    real = model.prefill_tokens
    model.prefill_tokens = lambda vision, instruction: asked.append(instruction) or real(vision, instruction)
    found = search(model, frames, "the red circle moves left", SearchConfig(window=4, stride=3, samples=3),
                   on_window=lambda i, n: windows.append((i, n)))
    assert found.frames == 10 and len(found.prior) == 3 and (found.window, found.stride) == (4, 3)
    assert windows == [(1, 3), (2, 3), (3, 3)]  # windows at 0, 3 and 6 s, the last ending at 10 s
    assert len(asked) == 4 and len(set(asked)) == 1 and "the red circle moves left" in asked[0]
    for c in found.candidates:  # a random model's answers rarely hold spans; any that do are scored so
        assert c.window <= c.start <= c.end <= c.window + 4 and c.score == pytest.approx(c.consensus + c.support)
    assert found.best == max(found.candidates, key=lambda c: c.score, default=None)


@pytest.mark.parametrize("weight, best", [(0.0, (6.0, 7.0)), (2.0, (3.0, 4.0))])
def test_agreement_lets_windows_that_place_an_event_alike_outvote_a_surer_one(tokenizer, weight, best):  # noqa: F811
    model = timed_model(tokenizer)
    answers = iter([["none", "none"],  # the whole video: no support anywhere
                    ["3.0 - 4.0 seconds", "none"], ["0.0 - 1.0 seconds", "none"],  # windows at 0 and 3 s: 3-4 s
                    ["0.0 - 1.0 seconds"] * 2])  # the window at 6 s, surer: 6-7 s
    model.decode = lambda prefilled, *args, **kwargs: next(answers)
    config = SearchConfig(window=4, stride=3, samples=2, agreement_weight=weight)
    found = search(model, torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8), "x", config)
    assert [(c.start, c.end, c.consensus, c.agreement) for c in found.candidates] == [
        (3.0, 4.0, 0.5, 0.5), (3.0, 4.0, 0.5, 0.5), (6.0, 7.0, 1.0, 0.0)]
    assert all(c.length == 4 and c.score == c.consensus + weight * c.agreement for c in found.candidates)
    assert (found.start, found.end) == best


def test_by_shots_the_answer_comes_from_the_shot_least_likely_to_say_no_event(tokenizer):  # noqa: F811
    model = timed_model(tokenizer)
    frames = torch.zeros(12, 32, 32, 3, dtype=torch.uint8)
    frames[4:8], frames[8:] = 255, 128  # three shots: 0-4, 4-8 and 8-12 s
    no_event = tokenizer.encode(NO_EVENT)[0]
    beliefs = iter([0.9, 0.2, 0.6])  # P(NO_EVENT's first token) of each shot in turn
    asked, real = [], model.prefill_tokens

    def prefill_tokens(vision, instruction):
        chunks = list(vision)
        asked.append(sum(c.shape[1] for c in chunks) // 4)  # frames read (4 tokens a frame)
        cache, logits = real(chunks, instruction)
        p = next(beliefs)
        logits = torch.full_like(logits, math.log((1 - p) / (logits.shape[-1] - 1)))
        logits[0, no_event] = math.log(p)
        return cache, logits

    model.prefill_tokens = prefill_tokens
    model.decode = lambda prefilled, *args, **kwargs: ["1.0 - 9.0 seconds"]  # past the shot's end: clipped to it
    found = ground_by_shots(model, frames, "the red circle moves left")
    assert asked == [4, 4, 4] and found.frames == 12 and found.shot == 1
    assert [(s.start, s.end) for s in found.shots] == [(0, 4), (4, 8), (8, 12)]
    assert [s.happens for s in found.shots] == pytest.approx([0.1, 0.8, 0.4], abs=1e-5)
    assert (found.start, found.end) == (5.0, 8.0) and found.raw == "1.0 - 9.0 seconds"


def test_the_cli_searches(capsys, model_dir, video):  # noqa: F811
    code, out, _ = run(capsys, "ground", video, "the red circle moves left", "--model", model_dir, "--device", "cpu",
                       "--search", "--window", 6, "--stride", 3, "--samples", 2, "--max-new-tokens", 6, "--json",
                       "--scales", 2, "--agreement-weight", 8, "--quiet")
    result = json.loads(out)
    assert code == 0 and result["frames"] == 12 and result["search"]["window"] == 6 and result["search"]["samples"] == 2
    assert result["search"]["scales"] == 2 and result["search"]["agreement_weight"] == 8
    assert {"start", "end", "best", "seconds"} <= result.keys()


def test_the_cli_grounds_shot_by_shot(capsys, model_dir, video):  # noqa: F811
    code, out, _ = run(capsys, "ground", video, "the red circle moves left", "--model", model_dir, "--device", "cpu",
                       "--shots", "--shot-frames", 4, "--max-new-tokens", 6, "--json", "--quiet")
    result = json.loads(out)
    assert code == 0 and result["frames"] == 12 and result["cuts"]["max_frames"] == 4
    assert result["shots"][0]["start"] == 0 and result["shots"][-1]["end"] == 12 and 0 <= result["shot"] < len(result["shots"])


@pytest.mark.parametrize("argv, message", [(["--max-frames", "4"], "drop --max-frames"),
                                           (["--samples", "1"], "samples must be"),
                                           (["--shots"], "two ways to ground")])
def test_cli_search_errors_name_the_setting(capsys, model_dir, video, argv, message):  # noqa: F811
    code, out, err = run(capsys, "ground", video, "x", "--model", model_dir, "--device", "cpu", "--search", *argv,
                         "--quiet")
    assert code == 1 and not out and err.startswith("timeviper: error:") and message in err
