"""The projector's frame-time embedding: features, zero start, times from every frame source, training,
checkpoints."""

import json
import math

import pytest
import torch

from timeviper.errors import ConfigError
from timeviper.model import TimeViper, TimeViperConfig
from timeviper.prompts import TextTokenizer
from timeviper.synth.tokenizer import train_tokenizer
from timeviper.sampling import Video
from timeviper.vision import Projector
from timeviper.vision.projector import time_features

from test_model import ANSWERS, LLM, VISION, frames, packed_batch


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer(train_tokenizer(vocab_size=1024), "timeviper")


def timed_model(tokenizer, period=16) -> TimeViper:
    """A random model whose time embedding is not zero (trained, as it were)."""
    torch.manual_seed(0)
    model = TimeViper(TimeViperConfig(LLM, VISION, tokens_per_frame=4, transv="uni_2_0.5-attn_3_0.5",
                                      chat_template="timeviper", time_period=period), tokenizer).eval()
    with torch.no_grad():
        model.projector.time.proj.weight.normal_(std=1.0)
    return model


def test_features_halve_the_period_down_to_two_seconds_and_repeat_after_it():
    times = torch.tensor([0.0, 1.0, 7.5, 64.0])
    features = time_features(times, 64)  # periods 64, 32, 16, 8, 4, 2: sin and cos of each
    assert features.shape == (4, 12)
    torch.testing.assert_close(features[:, 0], torch.sin(2 * math.pi * times.double() / 64))
    torch.testing.assert_close(features[:, 11], torch.cos(2 * math.pi * times.double() / 2))
    torch.testing.assert_close(features[3], features[0])  # 64 s is 0 s again
    torch.testing.assert_close(time_features(times + 640, 64), features, atol=1e-9, rtol=0)
    assert time_features(times, 100).shape == (4, 12)  # 100, 50, 25, 12.5, 6.25, 3.125


def test_a_new_embedding_starts_at_zero_and_then_tells_frames_apart_by_time():
    plain = Projector(8, 12, num_tokens=4)
    timed = Projector(8, 12, num_tokens=4, time_period=32)
    timed.mlp.load_state_dict(plain.mlp.state_dict())
    x, times = torch.randn(3, 30, 8), torch.tensor([0.0, 5.0, 9.0])
    torch.testing.assert_close(timed(x, times), plain(x))
    assert list(timed.state_dict())[-1] == "time.proj.weight"
    torch.nn.init.normal_(timed.time.proj.weight)
    same = x[:1].expand(3, -1, -1)
    out = timed(same, times)  # one frame shown at three times: three different tokens
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    torch.testing.assert_close(out - plain(same), timed.time(times)[:, None].expand(-1, 4, -1))
    torch.testing.assert_close(timed(same), plain(same))  # no times: what the frames show alone


def test_past_the_period_a_frame_is_told_its_time_modulo_the_period_or_nothing():
    timed = Projector(8, 12, num_tokens=4, time_period=32)
    torch.nn.init.normal_(timed.time.proj.weight)
    tokens, times = torch.randn(4, 4, 12), torch.tensor([0.0, 31.0, 32.0, 70.0])
    wrapped = timed.add_times(tokens, times)
    torch.testing.assert_close(wrapped[2:], tokens[2:] + timed.time(torch.tensor([0.0, 6.0]))[:, None])
    untold = timed.add_times(tokens, times, "none")
    torch.testing.assert_close(untold[:2], wrapped[:2])  # within the period: as trained
    torch.testing.assert_close(untold[2:], tokens[2:])  # at and past it: no time term
    with pytest.raises(ConfigError, match="time_past_period must be one of wrap, none"):
        timed.add_times(tokens, times, "clamp")


def test_time_past_period_is_a_model_setting_saved_and_checked(tokenizer, tmp_path):
    model = timed_model(tokenizer)  # period 16 s
    short, long = frames(12), frames(40)
    answers = {n: model.prefill([f], "What is shown?")[1] for n, f in (("short", short), ("long", long))}
    model.set_time_past_period("none")
    torch.testing.assert_close(model.prefill([short], "What is shown?")[1], answers["short"])
    assert (model.prefill([long[:20], long[20:]], "What is shown?")[1] - answers["long"]).abs().max() > 1e-4
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["time_past_period"] == "none"
    assert TimeViper.from_pretrained(tmp_path).config.time_past_period == "none"
    for bad in ("off", None, True):
        with pytest.raises(ConfigError, match="time_past_period"):
            model.set_time_past_period(bad)
    model.set_time_past_period("wrap")
    assert "time_past_period" not in model.config.to_dict()  # configs as trained stay as they were
    config = tmp_path / "config.json"
    config.write_text(config.read_text().replace('"time_past_period": "none"', '"time_past_period": "nothing"'))
    with pytest.raises(ConfigError, match="time_past_period must be one of"):
        TimeViper.from_pretrained(tmp_path)


def test_bad_periods_and_missing_times_are_refused():
    for period in (1, 0, -5, float("inf"), True, "64"):
        with pytest.raises(ConfigError, match="time_period"):
            Projector(8, 12, time_period=period)
    with pytest.raises(ConfigError, match="one time per frame"):
        Projector(8, 12, num_tokens=4, time_period=8)(torch.randn(3, 30, 8), torch.zeros(2))


def test_set_time_period_keeps_answers_until_trained_and_round_trips(tokenizer, tmp_path):
    model = timed_model(tokenizer)
    model.set_time_period(None)
    before = model.chat(frames(6), "What is shown?", max_new_tokens=6)
    model.set_time_period(32)
    assert model.projector.time.proj.weight.abs().sum() == 0
    assert model.chat(frames(6), "What is shown?", max_new_tokens=6) == before
    with torch.no_grad():
        model.projector.time.proj.weight.normal_()
    model.set_time_period(32)  # the same period keeps the trained weights
    assert model.projector.time.proj.weight.abs().sum() > 0
    model.save_pretrained(tmp_path)
    back = TimeViper.from_pretrained(tmp_path)
    assert back.config.time_period == 32
    torch.testing.assert_close(back.projector.time.proj.weight, model.projector.time.proj.weight)
    assert back.chat(frames(5), "Describe.", max_new_tokens=4) == model.chat(frames(5), "Describe.", max_new_tokens=4)
    with pytest.raises(ConfigError, match="time_period"):
        TimeViperConfig(LLM, VISION, transv="none", time_period=1)


def test_frames_carry_their_own_times_through_every_source(tokenizer, monkeypatch):
    """Chunks continue each other's times; a Video's timestamps (e.g. uniformly sampled) are the ones used."""
    model = timed_model(tokenizer)
    seen = []
    real = model.projector.time.forward
    monkeypatch.setattr(model.projector.time, "forward", lambda t: seen.append(t.tolist()) or real(t))
    video = frames(6)
    whole = model.chat(video, "What is shown?", max_new_tokens=6)
    assert model.chat(video, "What is shown?", max_new_tokens=6, chunk_frames=4) == whole
    assert seen == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3], [4, 5]]
    seen.clear()
    model.chat(video, "What is shown?", max_new_tokens=1, fps=2.0)
    assert seen == [[0, 0.5, 1, 1.5, 2, 2.5]]
    seen.clear()
    spread = Video(video, torch.tensor([0.0, 20, 40, 60, 80, 99]), 100.0, "")
    model.generate([(iter([frames(2), frames(3)]), "x")], max_new_tokens=1)
    assert seen == [[0, 1], [2, 3, 4]]  # bare tensors: once a second, counting on across chunks
    seen.clear()
    assert model.chat(spread, "What is shown?", max_new_tokens=6, chunk_frames=4) != whole
    assert seen == [[0, 20, 40, 60], [80, 99]]
    with pytest.raises(ConfigError, match="pass the frames' times"):
        model.embed_frames(video)
    with pytest.raises(ConfigError, match="as many timestamps"):
        model.chat(Video(video, torch.zeros(5), 6.0, ""), "x")


def test_training_reads_the_batch_frame_times_and_trains_the_embedding(tokenizer):
    model = timed_model(tokenizer).train()
    batch = packed_batch(tokenizer, ANSWERS)
    loss, _ = model.forward_train(batch)
    loss.backward()
    assert model.projector.time.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        batch["frame_times"] = [t * 3 for t in batch["frame_times"]]
        assert not torch.isclose(model.forward_train(batch)[0], loss)


@pytest.mark.parametrize("frames", [torch.zeros(2, 8, 8, 3), torch.tensor(3, dtype=torch.uint8),
                                    torch.zeros(2, 3, 8, 8, dtype=torch.uint8)])  # float, 0-d, channels first
def test_bad_frames_are_refused_as_a_tensor_or_inside_a_video(frames):
    from timeviper.model import frame_chunks

    for video in (frames, Video(frames, torch.zeros(2), 2.0, "")):
        with pytest.raises(ConfigError, match="uint8 tensor"):
            frame_chunks(video)
