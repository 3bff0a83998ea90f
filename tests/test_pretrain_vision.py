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
from timeviper.synth.pretrain_vision import ALL_BACKGROUNDS, NO_OBJECT, frame_batch, frame_labels, main
from timeviper.synth.render import BACKGROUND_RGB, OBJECT_RGB
from timeviper.synth.tokenizer import train_tokenizer
from timeviper.synth.world import OBJECTS, split_range

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


def test_pretraining_learns_backgrounds_and_keeps_the_llm(tmp_path):
    tokenizer = TextTokenizer(train_tokenizer(vocab_size=300), "timeviper")
    model = TimeViper(TimeViperConfig(LLM.replace(vocab_size=tokenizer.vocab_size), VISION, 4, "none",
                                      chat_template="timeviper"), tokenizer)
    model.save_pretrained(tmp_path / "start")
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


def test_starts_from_a_training_config(tmp_path):
    config = Path(__file__).parents[1] / "configs" / "tiny-cpu.yaml"  # model.tiny: a random model
    assert main(["--config", str(config), "--out", str(tmp_path / "out"), "--steps", "2", "--batch", "16",
                 "--device", "cpu"]) == 0
    model = TimeViper.from_pretrained(tmp_path / "out")
    assert model.vision.config.hidden_size == 32 and (tmp_path / "out" / "vision_pretraining.json").is_file()
