"""`timeviper train` end to end on the synthetic world with a tiny model; the shipped tiny/embedded recipes."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from launch import torchrun
from safetensors.torch import load_file
from test_eval_runner import TINY

from timeviper.cli import main
from timeviper.model import TimeViper
from timeviper.train import load_config
from timeviper.train.build import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_config(path: Path) -> Path:
    synth = {"seeds": [0, 1000], "frames": [4, 12], "size": 32}
    tree = {
        "model": {"tiny": TINY, "transv": "uni_0_0.5-attn_2_0.5"},
        "train": {"max_steps": 3, "global_batch_tokens": 512, "micro_batch_tokens": 256, "bf16": False,
                  "trainable": ["projector", "llm", "transv", "vision"]},
        "optim": {"lr": 1e-3, "transv_lr": 1e-3},
        "data": {"datasets": [{"synth": {"task": task, **synth}} for task in ("mcq", "tvg", "caption")],
                 "max_frames": 8, "num_workers": 0},
        "logging": {"every": 1},
        "checkpoint": {"every": 2, "keep_last": 1},
    }
    path.write_text(yaml.safe_dump(tree))
    return path


def test_train_resume_and_export(tmp_path):
    config, out = tiny_config(tmp_path / "tiny.yaml"), tmp_path / "run"
    assert main(["train", "--config", str(config), "--output", str(out), "--max-steps", "2"]) == 0
    assert (out / "checkpoint-2").is_dir()
    assert main(["train", "--config", str(config), "--output", str(out), "--resume", "--export",
                 str(tmp_path / "model")]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all({"loss", "lr"} <= m.keys() and m["loss"] > 0 and m["skipped"] == 0 for m in metrics)
    assert (out / "checkpoint-3").is_dir() and not (out / "checkpoint-2").exists()  # keep_last 1
    model = TimeViper.from_pretrained(tmp_path / "model")
    assert model.config.transv == "uni_0_0.5-attn_2_0.5" and isinstance(model.chat(torch.zeros(3, 32, 32, 3,
                                                                                        dtype=torch.uint8), "Hi?",
                                                                                        max_new_tokens=2), str)


def test_max_seconds_stops_the_run_with_a_checkpoint(tmp_path):
    config, out = tiny_config(tmp_path / "tiny.yaml"), tmp_path / "run"
    assert main(["train", "--config", str(config), "--output", str(out), "--max-seconds", "0"]) == 0
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert (out / "checkpoint-1" / "COMPLETE").is_file()
    assert main(["train", "--config", str(config), "--output", str(tmp_path / "late"), "--max-seconds", "-5"]) == 1
    assert not (tmp_path / "late" / "metrics.jsonl").exists()


def test_a_finished_run_is_not_overwritten(tmp_path, capsys):
    config, out = tiny_config(tmp_path / "tiny.yaml"), tmp_path / "run"
    assert main(["train", "--config", str(config), "--output", str(out), "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--output", str(out)]) == 1
    assert "already holds checkpoint-1" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tiny-cpu", "tiny-gpu", "embedded"])
def test_the_synthetic_recipes(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert {d.synth.task for d in config.data.datasets} == {"mcq", "tvg", "caption"}
    # the tiny recipes train their random SigLIP along; the embedded one pretrains it first and freezes it
    vision = set() if name == "embedded" else {"vision"}
    assert set(config.train.trainable) == {"projector", "llm", "transv"} | vision
    assert config.grad_accum(2 if name == "tiny-gpu" else 1) >= 1
    model = build_model(config)  # checks the TransV spec against the layer pattern
    kinds = {spec.strategy for spec in (m.spec for m in model.transv.values())}
    assert kinds == {"uniform", "attention"} and model.config.tokens_per_frame == 16
    if name == "embedded":
        assert 3e6 < sum(p.numel() for p in model.parameters()) < 10e6
        assert config.data.max_frames == 256 and any(d.synth.kind == "needle" for d in config.data.datasets)
        assert config.train.loss_average == "sample"  # a one-letter answer weighs as much as a caption


def test_the_embedded_mix_asks_about_motion_from_the_first_step():
    config = load_config(CONFIGS / "embedded.yaml")
    first = config.data.datasets[0]
    assert first.name == "synth_motion_short" and first.synth.kind == "motion"
    assert {d.synth.task for d in config.data.datasets} == {"mcq", "tvg", "caption"}
    assert all(d.synth.seeds[1] <= 1_000_000 for d in config.data.datasets)  # the training split only


def test_export_a_checkpoint(tmp_path, capsys):
    config, out = tiny_config(tmp_path / "tiny.yaml"), tmp_path / "run"
    assert main(["train", "--config", str(config), "--output", str(out), "--max-steps", "2"]) == 0
    assert main(["export", str(out), "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    assert "checkpoint-2" in capsys.readouterr().out
    trained = load_file(out / "checkpoint-2" / "model.safetensors")
    exported = TimeViper.from_pretrained(tmp_path / "bf16").state_dict()
    assert trained.keys() <= exported.keys() and all(
        torch.equal(t.to(torch.bfloat16).float(), exported[k]) for k, t in trained.items())
    exported = TimeViper.from_pretrained(tmp_path / "bf16").config
    assert exported.llm.logn_attention_length is None and exported.trained_frames == 8  # as trained: max_frames 8
    assert main(["export", str(out), "--out", str(tmp_path / "logn"), "--logn-length", "1024"]) == 0
    assert TimeViper.from_pretrained(tmp_path / "logn").config.llm.logn_attention_length == 1024
    assert exported.time_past_period == "wrap"
    assert main(["export", str(out), "--out", str(tmp_path / "untimed"), "--time-past-period", "none"]) == 0
    assert TimeViper.from_pretrained(tmp_path / "untimed").config.time_past_period == "none"

    assert main(["export", str(tmp_path), "--out", str(tmp_path / "none")]) == 1
    assert "neither a complete training checkpoint nor a run directory" in capsys.readouterr().err
    tree = yaml.safe_load(config.read_text())
    tree["train"]["trainable"] = ["projector", "llm", "transv"]  # the random SigLIP would not be saved
    frozen = tmp_path / "frozen"
    assert main(["train", "--config", str(write(tmp_path / "frozen.yaml", tree)), "--output", str(frozen),
                 "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main(["export", str(frozen), "--out", str(tmp_path / "partial")]) == 1
    assert "lacks trainable parameters: vision." in capsys.readouterr().err


def test_a_pretrained_model_learns_frame_times(tmp_path):
    """model.time_period on a model without a time embedding: it starts at zero, trains, and is exported."""
    config = tiny_config(tmp_path / "tiny.yaml")
    assert main(["train", "--config", str(config), "--output", str(tmp_path / "run"), "--max-steps", "1",
                 "--export", str(tmp_path / "plain")]) == 0
    tree = yaml.safe_load(config.read_text())
    tree["model"] = {"pretrained": str(tmp_path / "plain"), "time_period": 16}
    tree["train"]["trainable"] = ["projector", "llm", "transv"]
    tree["data"]["max_frames"] = 5
    assert main(["train", "--config", str(write(tmp_path / "timed.yaml", tree)), "--output", str(tmp_path / "timed"),
                 "--max-steps", "2", "--export", str(tmp_path / "model")]) == 0
    model = TimeViper.from_pretrained(tmp_path / "model")
    assert model.config.time_period == 16 and model.projector.time.proj.weight.abs().sum() > 0
    assert model.config.trained_frames == 8  # the pretrained model's 8, not this run's 5
    tree["model"]["time_period"] = 1
    assert main(["train", "--config", str(write(tmp_path / "bad.yaml", tree)), "--output", str(tmp_path / "bad")]) == 1


def test_a_checkpoint_from_relative_paths_exports_from_any_directory(tmp_path, monkeypatch):
    """Paths in a training config are read from the current directory and kept absolute in its checkpoints."""
    config = tiny_config(tmp_path / "tiny.yaml")
    assert main(["train", "--config", str(config), "--output", str(tmp_path / "run"), "--max-steps", "1",
                 "--export", str(tmp_path / "plain")]) == 0
    tree = yaml.safe_load(config.read_text())
    tree["model"] = {"pretrained": "plain"}
    tree["train"]["trainable"] = ["projector", "llm", "transv"]
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(write(tmp_path / "relative.yaml", tree)), "--output", "tuned",
                 "--max-steps", "2"]) == 0
    saved = yaml.safe_load((tmp_path / "tuned" / "checkpoint-2" / "config.yaml").read_text())
    assert saved["model"]["pretrained"] == str(tmp_path / "plain")
    monkeypatch.chdir(tmp_path / "run")
    assert main(["export", str(tmp_path / "tuned"), "--out", str(tmp_path / "model")]) == 0
    assert TimeViper.from_pretrained(tmp_path / "model").config.tokens_per_frame > 0


def test_training_asks_before_the_video_when_told(tmp_path, monkeypatch):
    """model.instruction_before_video: the samples trained on hold the instruction before the video, and the
    exported model asks so too."""
    from timeviper.data import records

    seen = []
    make_sample = records.make_sample
    monkeypatch.setattr("timeviper.data.synth_source.make_sample",
                        lambda sample_id, text, *a, **k: seen.append(text) or make_sample(sample_id, text, *a, **k))
    tree = yaml.safe_load(tiny_config(tmp_path / "tiny.yaml").read_text())
    tree["model"]["instruction_before_video"] = True
    assert main(["train", "--config", str(write(tmp_path / "first.yaml", tree)), "--output", str(tmp_path / "run"),
                 "--max-steps", "1", "--export", str(tmp_path / "model")]) == 0
    model = TimeViper.from_pretrained(tmp_path / "model")
    assert model.config.instruction_before_video is True
    decode = model.tokenizer.decode
    assert seen and all(decode(t.ids[:t.vision_at]).endswith(decode(t.ids[t.vision_at:t.instruction_end]) + "\n")
                        for t in seen)
    tree["model"]["instruction_before_video"] = "yes"
    assert main(["train", "--config", str(write(tmp_path / "bad.yaml", tree)), "--output", str(tmp_path / "bad")]) == 1


def test_training_draws_uniform_drop_shares_when_told(tmp_path):
    """model.transv_train_shares: every sample drops its own share at the uniform TransV layer (a share range of
    one value trains as the spec's p does); bad ranges and models without a uniform layer are refused."""
    from functools import partial

    from timeviper.data import build_train_data
    from timeviper.prompts import encode_conversation

    tree = yaml.safe_load(tiny_config(tmp_path / "tiny.yaml").read_text())
    tree["model"]["transv_train_shares"] = [0.2, 0.9]
    config = load_config(write(tmp_path / "shares.yaml", tree))
    torch.manual_seed(0)
    model = build_model(config)
    assert model.train_shares == (0.2, 0.9)
    drawn = model.drawn_shares(64)
    assert list(drawn) == [0] and 0.2 <= min(drawn[0]) < 0.3 and 0.8 < max(drawn[0]) <= 0.9  # uni_0 only
    stream = build_train_data(config, tokenize=partial(encode_conversation, model.tokenizer),
                              tokens_per_frame=model.config.tokens_per_frame)
    batch = next(iter(stream))
    stream.close()
    with torch.no_grad():
        model.train_shares = None
        plain = model.forward_train(batch)[0]
        model.train_shares = (0.5, 0.5)
        assert torch.equal(model.forward_train(batch)[0], plain)
        model.train_shares = (0.9, 0.9)
        assert not torch.allclose(model.forward_train(batch)[0], plain)
    for bad in ([0.6, 0.4], [0.5], [0, 1.5], "wide"):
        tree["model"]["transv_train_shares"] = bad
        assert main(["train", "--config", str(write(tmp_path / "bad.yaml", tree)), "--output",
                     str(tmp_path / "bad")]) == 1
    tree["model"].update(transv="attn_2_0.5", transv_train_shares=[0.2, 0.9])
    assert main(["train", "--config", str(write(tmp_path / "bad.yaml", tree)), "--output", str(tmp_path / "bad")]) == 1


def write(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def test_profiling_and_speed_metrics(tmp_path):
    tree = yaml.safe_load(tiny_config(tmp_path / "tiny.yaml").read_text())
    tree["logging"]["profile_steps"] = [2, 3]
    out = tmp_path / "run"
    assert main(["train", "--config", str(write(tmp_path / "profiled.yaml", tree)), "--output", str(out)]) == 0
    ops = (out / "profile" / "ops-rank-0.txt").read_text()
    assert ops.startswith("steps 2-3") and "aten::" in ops
    assert json.loads((out / "profile" / "trace-rank-0.json").read_text())["traceEvents"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= m["data_wait"] < 1 and m["step_s"] > 0 and m["tokens"] > 0 for m in metrics)

    tree["logging"]["profile_steps"] = [1, 3]
    assert main(["train", "--config", str(write(tmp_path / "bad.yaml", tree)), "--output", str(tmp_path / "x")]) == 1


def test_overrides_on_the_command_line(tmp_path, capsys):
    config, out = tiny_config(tmp_path / "tiny.yaml"), tmp_path / "run"
    assert main(["train", "--config", str(config), "--output", str(out), "--set", "train.max_steps=2",
                 "--set", "optim.betas=[0.9, 0.95]", "--set", "logging.every=2"]) == 0
    saved = yaml.safe_load((out / "checkpoint-2" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 2 and saved["optim"]["betas"] == [0.9, 0.95]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [2]
    for bad, message in [("train.max_step=2", "train.max_step: unknown key"),
                         ("max_steps", "is not KEY=VALUE"),
                         ("train.max_steps.x=1", "train.max_steps is not a mapping"),
                         ("optim.lr=[", "not valid YAML"),
                         ("train.loss_average=mean", "train.loss_average: must be token or sample")]:
        capsys.readouterr()
        assert main(["train", "--config", str(config), "--output", str(tmp_path / "x"), "--set", bad]) == 1
        assert message in capsys.readouterr().err, bad


@pytest.mark.slow
def test_two_ranks_train_on_the_batches_of_one(tmp_path):
    """With data.same_batches_any_world_size, FSDP2 over two processes logs the losses of one process."""
    tree = yaml.safe_load(tiny_config(tmp_path / "tiny.yaml").read_text())
    tree["data"]["same_batches_any_world_size"] = True
    config = write(tmp_path / "shared.yaml", tree)
    for processes in (1, 2):
        torchrun("-m", "timeviper.cli", "train", "--config", str(config), "--output", str(tmp_path / f"ranks-{processes}"),
                 processes=processes, timeout=180)
    one, two = ([json.loads(line) for line in (tmp_path / f"ranks-{n}" / "metrics.jsonl").read_text().splitlines()]
                for n in (1, 2))
    assert [m["step"] for m in one] == [m["step"] for m in two] == [1, 2, 3]
    assert [m["samples"] for m in one] == [m["samples"] for m in two]
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (one, two)


def test_sample_averaged_loss(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--config", str(tiny_config(tmp_path / "tiny.yaml")), "--output", str(out),
                 "--set", "train.loss_average=sample"]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(m["loss_samples"] >= 1 and "loss_tokens" not in m for m in metrics)
    assert sum(m["loss_samples"] for m in metrics) <= metrics[-1]["samples"]  # drawn: trained or buffered
