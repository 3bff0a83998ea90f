"""Vision pretraining on synthetic frames: labels read off the VideoSpec agree with the rendered pixels,
and a tiny vision front learns them."""

import json
from pathlib import Path

import numpy as np
import torch
from transformers import SiglipVisionConfig

from timeviper.llm import LMConfig
from timeviper.model import TimeViper, TimeViperConfig
from timeviper.prompts import TextTokenizer
from timeviper.synth import make_video, render_frames
from timeviper.synth.pretrain_vision import (ALL_BACKGROUNDS, IS_NEEDLE_BACKGROUND, NO_OBJECT, anchor_loss, frame_batch,
                                             frame_labels, main, vision_tokens)
from timeviper.synth.render import BACKGROUND_RGB, OBJECT_RGB
from timeviper.synth.tokenizer import train_tokenizer
from timeviper.synth.world import NEEDLE_BACKGROUNDS, OBJECTS, split_range

LLM = LMConfig(vocab_size=64, hidden_size=16, pattern="M*-", num_heads=2, num_kv_heads=1, head_dim=8,
               intermediate_size=24, mamba_num_heads=2, mamba_head_dim=8, mamba_groups=1, ssm_state_size=4)
VISION = SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64).to_dict()


def test_labels_match_the_pixels():
    spec = make_video(1_100_007, 200, size=64)
    frames = render_frames(spec)
    seen = set()
    for t, frame in enumerate(frames):
        background, obj, x, y = frame_labels(spec, t)
        colour = BACKGROUND_RGB[ALL_BACKGROUNDS[background].split()[-1]]
        if obj == NO_OBJECT:  # nothing drawn: every pixel is the background's colour or its shade
            assert (frame == np.array(colour, np.uint8)).all(-1).mean() > 0.4
        else:  # every shape covers its centre
            centre = frame[min(int(y * 64), 63), min(int(x * 64), 63)]
            assert tuple(centre) == OBJECT_RGB[OBJECTS[obj].split()[0]], (t, OBJECTS[obj])
        seen.add(obj == NO_OBJECT)
    assert seen == {True, False}


def test_frame_batch_shapes():
    frames, classes, centres = frame_batch(np.random.default_rng(0), split_range("train"), 40, 32)
    assert frames.shape == (40, 32, 32, 3) and frames.dtype == torch.uint8
    assert classes.shape == (40, 2) and centres.shape == (40, 2)
    assert classes[:, 0].max() < len(ALL_BACKGROUNDS) and classes[:, 1].max() <= NO_OBJECT


def test_needle_share_draws_frames_from_needle_scenes():
    rng = np.random.default_rng(0)
    frames, classes, _ = frame_batch(rng, split_range("train"), 64, 32, needle_share=1.0)
    assert all(ALL_BACKGROUNDS[b] in NEEDLE_BACKGROUNDS for b in classes[:, 0].tolist())
    _, classes, _ = frame_batch(rng, split_range("train"), 320, 32, needle_share=0.5)
    share = IS_NEEDLE_BACKGROUND[classes[:, 0]].float().mean().item()
    assert 0.25 < share < 0.75  # 20 videos of 16 frames, each drawn from its needle scene with probability 0.5
    plain = frame_batch(np.random.default_rng(1), split_range("train"), 48, 32)
    assert all(torch.equal(a, b) for a, b in zip(plain, frame_batch(np.random.default_rng(1), split_range("train"),
                                                                     48, 32, needle_share=0.0)))


def test_anchor_loss_is_the_relative_change_of_tokens_off_needle_backgrounds():
    classes = torch.tensor([[0, NO_OBJECT], [ALL_BACKGROUNDS.index(NEEDLE_BACKGROUNDS[0]), 3], [1, 2]])
    reference = torch.randn(3, 4, 8)
    assert anchor_loss(reference, reference, classes) == 0
    moved = reference.clone()
    moved[1] += 5  # a needle frame's tokens may move freely
    assert anchor_loss(moved, reference, classes) == 0
    moved[[0, 2]] *= 1.1  # the others' change is 0.1 of their norm: 0.01 in squares
    torch.testing.assert_close(anchor_loss(moved, reference, classes), torch.tensor(0.01))
    assert anchor_loss(moved[1:2], reference[1:2], classes[1:2]) == 0  # no frame to hold


def small_model(tmp_path) -> Path:
    tokenizer = TextTokenizer(train_tokenizer(vocab_size=300), "timeviper")
    model = TimeViper(TimeViperConfig(LLM.replace(vocab_size=tokenizer.vocab_size), VISION, 4, "none",
                                      chat_template="timeviper"), tokenizer)
    model.save_pretrained(tmp_path / "start")
    return tmp_path / "start"


def test_the_anchor_holds_tokens_off_needle_backgrounds(tmp_path):
    """With the token loss on needle-rich frames, the anchor keeps every other frame's tokens near the start's."""
    start = small_model(tmp_path)
    frames, classes, _ = frame_batch(np.random.default_rng(5), split_range("validation"), 256, 32)
    change = {}
    for anchor in ("0", "30"):
        out = tmp_path / f"anchor-{anchor}"
        assert main(["--model", str(start), "--out", str(out), "--steps", "60", "--batch", "64", "--lr", "3e-3",
                     "--token-loss", "--needle-share", "0.5", "--anchor", anchor, "--device", "cpu"]) == 0
        history = json.loads((out / "vision_pretraining.json").read_text())
        assert 0 <= history[-1]["needle_background_acc"] <= 1
        with torch.no_grad():
            before = vision_tokens(TimeViper.from_pretrained(start), frames)
            after = vision_tokens(TimeViper.from_pretrained(out), frames)
        change[anchor] = anchor_loss(after, before, classes).item()  # of the frames off needle backgrounds
    assert change["30"] < change["0"] / 3, change


def test_pretraining_learns_backgrounds_and_keeps_the_llm(tmp_path):
    model = TimeViper.from_pretrained(small_model(tmp_path))
    assert main(["--model", str(tmp_path / "start"), "--out", str(tmp_path / "out"), "--steps", "150", "--batch", "64",
          "--lr", "3e-3", "--device", "cpu"]) == 0
    trained = TimeViper.from_pretrained(tmp_path / "out")
    history = (tmp_path / "out" / "vision_pretraining.json").read_text()
    assert json.loads(history)[-1]["background_acc"] > 0.4  # chance: 1/16
    before, after = model.state_dict(), trained.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("llm."))
    assert not torch.equal(before["projector.mlp.0.weight"], after["projector.mlp.0.weight"])


def test_bad_input_is_one_line_and_keeps_what_exists(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 1
    assert "missing" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    assert main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "taken")]) == 1
    assert "already holds a model" in capsys.readouterr().err
    assert (tmp_path / "taken" / "config.json").read_text() == "{}"
    assert main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "new"), "--needle-share", "2"]) == 1
    assert "--needle-share" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_starts_from_a_training_config(tmp_path):
    config = Path(__file__).parents[1] / "configs" / "tiny-cpu.yaml"  # model.tiny: a random model
    assert main(["--config", str(config), "--out", str(tmp_path / "out"), "--steps", "2", "--batch", "16",
                 "--device", "cpu"]) == 0
    model = TimeViper.from_pretrained(tmp_path / "out")
    assert model.vision.config.hidden_size == 32 and (tmp_path / "out" / "vision_pretraining.json").is_file()
