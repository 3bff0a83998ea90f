"""The training loop on a tiny model and fake data; the training config."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from launch import torchrun
from test_records import chat, fake_load_video, fake_tokenize, write_jsonl, write_media
from torch import nn

from timeviper.data import IGNORE_INDEX, build_train_data
from timeviper.errors import ConfigError, TimeViperError
from timeviper.train import Trainer, close_distributed, config_from_dict, init_distributed, load_config
from timeviper.train import trainer as trainer_module
from timeviper.train.distributed import apply_activation_checkpointing

TOKENS_PER_FRAME = 4
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class Block(nn.Module):
    def __init__(self, dim, transv=False):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(0.1)
        self.transv = nn.ModuleDict({"proj": nn.Linear(dim, dim)}) if transv else None
        if transv:
            self.transv.alpha = nn.Parameter(torch.zeros(1))  # FSDP2 shards no 0-dim parameter

    def forward(self, x):
        x = x + self.drop(self.mlp(self.norm(x)))
        if self.transv is not None:
            x = x + torch.tanh(self.transv.alpha) * self.transv["proj"](x)
        return x


class TinyVLM(nn.Module):
    """Stand-in for TimeViper: frozen vision, projector, LLM blocks with a TransV module."""

    def __init__(self, vocab=64, dim=16):
        super().__init__()
        self.vision = nn.Linear(3, dim)
        self.projector = nn.Linear(dim, dim)
        self.llm = nn.Module()
        self.llm.embed = nn.Embedding(vocab, dim)
        self.llm.layers = nn.ModuleList([Block(dim), Block(dim, transv=True)])
        self.llm.head = nn.Linear(dim, vocab)

    def forward_train(self, batch, average="token"):
        assert average == "token"
        x = self.llm.embed(batch["input_ids"])[0]
        for (start, end), frames in zip(batch["vision_spans"].tolist(), batch["frames"]):
            if frames is not None:
                features = self.projector(self.vision(frames.float().mean((1, 2)) / 255))
                x = torch.cat([x[:start], features.repeat_interleave(TOKENS_PER_FRAME, 0), x[end:]])
        for layer in self.llm.layers:
            x = layer(x)
        labels = batch["labels"][0]
        loss = F.cross_entropy(self.llm.head(x).float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        return loss, (labels != IGNORE_INDEX).sum()


def write_data(root: Path):
    clips = [write_media(root, f"v{n}.mp4", str(n)) for n in (2, 3, 5)]
    image = write_media(root, "i.jpg", "1")
    videos = [
        "{oops" if i == 7 else {"id": f"v{i}", "video": clips[i % 3], "conversations": chat(answer="ok " * (i % 4 + 1))}
        for i in range(12)
    ]
    images = [
        {"id": f"i{i}", "image": image, "conversations": chat("<image> Describe.", "abc"[: i % 3 + 1])}
        for i in range(5)
    ]
    return write_jsonl(root / "videos.jsonl", videos), write_jsonl(root / "images.jsonl", images)


def make_config(root: Path, **train):
    videos, images = write_data(root)
    return config_from_dict(
        {
            "model": {"tiny": {}},
            "train": {"max_steps": 6, "global_batch_tokens": 128, "micro_batch_tokens": 64, "bf16": False, **train},
            "optim": {"lr": 1e-2, "transv_lr": 5e-2, "warmup_ratio": 0.2},
            "data": {
                "datasets": [
                    {"path": str(videos), "root": str(root)},
                    {"path": str(images), "root": str(root), "weight": 2},
                ],
                "lookahead": 4,
                "pad_to_multiple_of": 8,
                "num_workers": 0,
            },
            "logging": {"every": 1},
            "checkpoint": {"every": 3, "keep_last": 2},
        }
    )


def make_trainer(config, output_dir, rank=0, world_size=1):
    torch.manual_seed(0)
    model = TinyVLM()
    data = build_train_data(
        config,
        tokenize=fake_tokenize,
        tokens_per_frame=TOKENS_PER_FRAME,
        rank=rank,
        world_size=world_size,
        load_video=fake_load_video,
    )
    return Trainer(config, model, data, output_dir, blocks=model.llm.layers)


def read_metrics(output_dir: Path):
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_run_reproduces_the_uninterrupted_one(tmp_path):
    config = make_config(tmp_path)
    straight = make_trainer(config, tmp_path / "straight")
    assert straight.fit() == 6
    expected = read_metrics(tmp_path / "straight")
    assert [m["step"] for m in expected] == [1, 2, 3, 4, 5, 6]
    assert len({m["loss"] for m in expected}) == 6
    assert expected[0]["lr"] == pytest.approx(1e-2 / 2) and expected[0]["transv_lr"] == pytest.approx(5e-2 / 2)
    assert expected[-1]["lr"] == 0.0
    assert all(m["loss_tokens"] > 0 and m["grad_norm"] > 0 and m["tokens"] % 8 == 0 for m in expected)
    assert expected[-1]["skipped_by_reason"] == {"bad_json": expected[-1]["skipped"]}

    # killed in step 5, after the checkpoint of step 3 and the metrics of step 4
    interrupted = make_trainer(config, tmp_path / "resumed")
    calls, forward = [0], interrupted.model.forward_train

    def dies_in_step_5(batch, average):
        calls[0] += 1
        if calls[0] > 4 * interrupted.grad_accum:
            raise KeyboardInterrupt
        return forward(batch, average)

    interrupted.model.forward_train = dies_in_step_5
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert [m["step"] for m in read_metrics(tmp_path / "resumed")] == [1, 2, 3, 4]

    assert make_trainer(config, tmp_path / "resumed").fit(resume=True) == 6
    resumed = read_metrics(tmp_path / "resumed")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4, 5, 6]
    for want, got in zip(expected, resumed):
        for key in ("loss", "lr", "grad_norm", "tokens", "loss_tokens", "samples", "skipped"):
            assert got[key] == want[key], (got["step"], key)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]


def test_skip_counts_are_summed_over_ranks_without_touching_the_local_ones(tmp_path, monkeypatch):
    trainer = make_trainer(make_config(tmp_path), tmp_path / "out")
    next(trainer.train_data)
    local = trainer.train_data.skips.counts.clone()
    monkeypatch.setattr(trainer_module, "all_reduce_sum", lambda t: t.mul_(2))  # as if two equal ranks
    assert torch.equal(trainer._skips().counts, 2 * local) and torch.equal(trainer.train_data.skips.counts, local)


@pytest.mark.slow
def test_two_sharded_ranks_resume_exactly(tmp_path):
    """FSDP2 over two CPU processes (Gloo) with activation checkpointing: 4 steps vs 2 + resume 2."""
    torchrun(__file__, str(tmp_path))
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    assert [m["loss"] for m in resumed] == [m["loss"] for m in straight]
    assert [m["samples"] for m in resumed] == [m["samples"] for m in straight]
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoint-2").iterdir()) == [
        "COMPLETE",
        "config.yaml",
        "model.safetensors",
        "optimizer",
        "rank-0.pt",
        "rank-1.pt",
        "trainer.json",
    ]


def _sharded_runs(root: Path):
    env = init_distributed()
    config = make_config(root, max_steps=4, global_batch_tokens=256, activation_checkpointing=True)
    config.checkpoint.every = 2
    make_trainer(config, root / "straight", env.rank, env.world_size).fit()
    make_trainer(config, root / "resumed", env.rank, env.world_size).fit(max_steps=2)
    make_trainer(config, root / "resumed", env.rank, env.world_size).fit(resume=True)
    close_distributed()


def test_max_steps_stops_early_on_the_same_schedule_and_a_used_directory_is_refused(tmp_path):
    config = make_config(tmp_path)
    trainer = make_trainer(config, tmp_path / "out")
    assert trainer.fit(max_steps=2) == 2
    metrics = read_metrics(tmp_path / "out")
    assert [m["step"] for m in metrics] == [1, 2] and metrics[1]["lr"] == pytest.approx(1e-2)
    assert (tmp_path / "out" / "checkpoint-2" / "COMPLETE").is_file()
    with pytest.raises(TimeViperError, match="already holds checkpoint-2"):
        make_trainer(config, tmp_path / "out").fit()


def test_max_seconds_ends_at_the_first_step_past_the_budget_and_the_run_resumes_on_schedule(tmp_path):
    config = make_config(tmp_path)
    assert make_trainer(config, tmp_path / "out").fit(max_seconds=0) == 1  # every step ends past 0 s
    assert (tmp_path / "out" / "checkpoint-1" / "COMPLETE").is_file()
    assert make_trainer(config, tmp_path / "out").fit(resume=True, max_seconds=3600) == 6
    make_trainer(config, tmp_path / "whole").fit()

    def steps(run):
        return [(m["step"], m["lr"], m["loss"]) for m in read_metrics(tmp_path / run)]

    assert steps("out") == steps("whole") and len(steps("whole")) == 6


def test_the_step_gradient_is_the_mean_over_all_loss_tokens(tmp_path):
    config = make_config(tmp_path, global_batch_tokens=192)  # three micro-batches a step
    trainer = make_trainer(config, tmp_path / "out")
    stream = build_train_data(
        config, tokenize=fake_tokenize, tokens_per_frame=TOKENS_PER_FRAME, load_video=fake_load_video
    )
    batches = [next(stream) for _ in range(3)]

    reference = TinyVLM()
    reference.load_state_dict(trainer.model.state_dict())
    reference.eval()
    trainer.model.eval()  # no dropout: both see the same function
    sums, counts = zip(*(reference.forward_train(b) for b in batches))
    (sum(sums) / sum(counts)).backward()
    want = {n: p.grad for n, p in reference.named_parameters()}

    captured = {}
    trainer.optimizer.step = lambda: captured.update(
        {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    )
    trainer.config.optim.grad_clip = 1e9
    trainer._train_step(0)
    assert captured.keys() == {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    for name, grad in captured.items():
        torch.testing.assert_close(grad, want[name], rtol=1e-5, atol=1e-7)


def test_activation_checkpointing_keeps_the_gradients():
    torch.manual_seed(0)
    plain = TinyVLM().eval()
    checkpointed = TinyVLM().eval()
    checkpointed.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(checkpointed.llm.layers)
    x = torch.randn(5, 16)
    for model in (plain, checkpointed):
        h = x
        for layer in model.llm.layers:
            h = layer(h)
        h.square().sum().backward()
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in checkpointed.named_parameters()]
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_grad_accumulation_must_divide_evenly(tmp_path):
    config = make_config(tmp_path, global_batch_tokens=192, micro_batch_tokens=64)
    assert config.grad_accum(1) == 3
    with pytest.raises(ConfigError, match="192 is not a multiple of .* 64 × 2"):
        config.grad_accum(2)


def write_yaml(path: Path, tree) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["optim"].update(learning_rate=1), r"optim.learning_rate: unknown key"),
        (lambda c: c["train"].update(max_steps="many"), r"train.max_steps: expected an integer, got str"),
        (lambda c: c["train"].update(bf16=1), r"train.bf16: expected a boolean, got int"),
        (lambda c: c["optim"].update(lr=-1.0), r"optim.lr: must be > 0"),
        (lambda c: c["optim"].update(lr_by_prefix=[1e-3]), r"optim.lr_by_prefix: expected a mapping of strings to"),
        (lambda c: c["optim"].update(lr_by_prefix={"llm": "fast"}), r"optim.lr_by_prefix.llm: expected a number"),
        (lambda c: c["optim"].update(betas=[0.9]), r"optim.betas: expected a list of 2 numbers, got list \[0.9\]"),
        (lambda c: c["train"].update(stage=3), r"train.stage: must be 1 or 2"),
        (lambda c: c["train"].update(trainable=["projector", "projector"]), r"train.trainable: must be distinct names"),
        (lambda c: c["train"].update(global_batch_tokens=100), r"train.global_batch_tokens: 100 is not a multiple"),
        (lambda c: c["train"].pop("max_steps"), r"train.max_steps: is required"),
        (
            lambda c: c["data"]["datasets"][1].update(path="nowhere.jsonl"),
            r"data.datasets\[1\].path: record file nowhere.jsonl does not exist",
        ),
        (lambda c: c["data"].update(pad_to_multiple_of=48), r"data.pad_to_multiple_of: must divide"),
        (lambda c: c["model"].update(llm="nowhere"), r"model.llm: set exactly one of"),
        (
            lambda c: c.update(model={"llm": "nowhere", "vision": "nowhere"}),
            r"model.llm: directory nowhere does not exist",
        ),
        (
            lambda c: c["train"].update(stage=1) or c["model"].update(transv="uni_7_0.5"),
            r"model.transv: stage 1 trains without",
        ),
    ],
)
def test_config_errors_name_the_file_and_key(tmp_path, edit, message):
    tree = make_config(tmp_path).to_dict()
    edit(tree)
    path = write_yaml(tmp_path / "bad.yaml", tree)
    with pytest.raises(ConfigError, match=f"bad.yaml: {message}"):
        load_config(path)


def test_yaml_numbers_and_defaults(tmp_path):
    tree = make_config(tmp_path).to_dict()
    tree["optim"] = {"lr": "2e-5", "lr_by_prefix": {"projector.time": "1e-2"}}  # PyYAML reads 2e-5 as a string
    tree["train"] = {"max_steps": 10, "global_batch_tokens": 128, "micro_batch_tokens": 64, "stage": 1}
    config = load_config(write_yaml(tmp_path / "c.yaml", tree))
    assert config.optim.lr == 2e-5 and config.optim.transv_lr == 5e-5 and config.train.trainable == ["projector"]
    assert config.optim.lr_by_prefix == {"projector.time": 1e-2}
    assert config.data.datasets[0].name == "videos"


def test_most_frames_a_sample_can_hold(tmp_path):
    tree = make_config(tmp_path).to_dict()
    assert load_config(write_yaml(tmp_path / "files.yaml", tree)).data.most_frames() == 256  # max_frames
    synth = {"task": "tvg", "seeds": [0, 10], "size": 32}
    tree["data"]["datasets"] = [{"synth": {**synth, "frames": [4, 12]}, "name": "short"},
                                {"synth": {**synth, "frames": 2000, "shot_frames": 32}, "name": "shots"}]
    tree["data"]["fps"] = 2.0
    data = load_config(write_yaml(tmp_path / "synth.yaml", tree)).data
    assert data.most_frames() == 32  # videos of 12 s read at 2 fps: 24 frames; shots of 2,000 s videos: 32
    data.max_frames = 16
    assert data.most_frames() == 16


@pytest.mark.parametrize("stage", [1, 2])
def test_the_stage_configs_load_once_their_paths_exist(tmp_path, monkeypatch, stage):
    path = CONFIGS / f"stage{stage}.yaml"
    with pytest.raises(ConfigError, match=f"stage{stage}.yaml: model.llm: directory models/.* does not exist"):
        load_config(path)
    monkeypatch.chdir(tmp_path)
    tree = yaml.safe_load(path.read_text())
    model = tree["model"]
    for key in ("llm", "vision", "init_checkpoint"):
        if model.get(key):
            Path(model[key]).mkdir(parents=True)
    for spec in tree["data"]["datasets"]:
        Path(spec["path"]).parent.mkdir(parents=True, exist_ok=True)
        Path(spec["path"]).touch()
        Path(spec["root"]).mkdir(parents=True, exist_ok=True)
    config = load_config(path)
    assert config.train.stage == stage and config.optim.lr == 1e-5 and config.optim.weight_decay == 0.01
    assert config.optim.warmup_ratio == 0.03 and config.optim.scheduler == "cosine"
    assert config.data.max_frames == 256 and config.data.fps == 1.0 and config.train.bf16
    assert config.grad_accum(8) >= 1
    if stage == 1:
        assert config.train.trainable == ["projector"] and config.model.transv is None
    else:
        assert config.train.trainable == ["projector", "llm", "transv"] and config.optim.transv_lr == 5e-5
        assert config.model.transv == "uni_7_0.5-attn_39_0.9" and config.train.activation_checkpointing


if __name__ == "__main__":
    _sharded_runs(Path(sys.argv[1]))
