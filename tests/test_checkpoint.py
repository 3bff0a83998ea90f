"""Checkpoints: round trip, atomic writes, pruning, partial loads."""

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_trainer import TinyVLM

from timeviper.errors import CheckpointError
from timeviper.train import checkpoint as ckpt
from timeviper.train.config import OptimConfig
from timeviper.train.distributed import DistEnv
from timeviper.train.optim import build_optimizer, set_trainable

ENV = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def trained(seed=0, parts=("projector", "llm", "transv")):
    torch.manual_seed(seed)
    model = TinyVLM()
    set_trainable(model, parts)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2))
    for _ in range(2):
        sum((p * torch.randn_like(p)).sum() for p in model.parameters() if p.requires_grad).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def save(tmp_path, step, model, optimizer, keep_last=5):
    return ckpt.save_checkpoint(
        tmp_path,
        step,
        model=model,
        optimizer=optimizer,
        data_state={"drawn": [step]},
        config={"train": {"max_steps": 9}},
        env=ENV,
        keep_last=keep_last,
    )


def test_round_trip_restores_weights_optimizer_rng_and_data_state(tmp_path):
    model, optimizer = trained()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = save(tmp_path, 7, model, optimizer)
    expected_draws = (random.random(), np.random.rand(), torch.rand(3))

    assert sorted(p.name for p in path.iterdir()) == [
        "COMPLETE",
        "config.yaml",
        "model.safetensors",
        "optimizer",
        "rank-0.pt",
        "trainer.json",
    ]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(load_file(path / "model.safetensors")) == trainable and not any(
        n.startswith("vision.") for n in trainable
    )

    fresh, fresh_optimizer = trained(seed=1)
    step, data_state = ckpt.load_checkpoint(path, model=fresh, optimizer=fresh_optimizer, env=ENV)
    assert step == 7 and data_state == {"drawn": [7]}
    assert (random.random(), np.random.rand()) == expected_draws[:2] and torch.equal(torch.rand(3), expected_draws[2])
    for (name, a), b in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b) or name.startswith("vision."), name
    want, got = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert want["state"].keys() == got["state"].keys()
    for i in want["state"]:
        for key, value in want["state"][i].items():
            assert torch.equal(value, got["state"][i][key])


def test_a_save_killed_midway_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    model, optimizer = trained()
    save(tmp_path, 1, model, optimizer)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ckpt, "save_file", killed)
        with pytest.raises(KeyboardInterrupt):
            save(tmp_path, 2, model, optimizer)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers[0] == "checkpoint-1" and leftovers[1].startswith("checkpoint-2.tmp-") and len(leftovers) == 2
    (tmp_path / "checkpoint-5").mkdir()  # renamed but never marked, as if copied half-way
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-1"

    save(tmp_path, 3, model, optimizer)  # the next save clears the debris of the failed one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-3", "checkpoint-5"]
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-3"


def test_pruning_keeps_the_newest_complete_checkpoints(tmp_path):
    model, optimizer = trained()
    for step in (5, 10, 15, 20):
        save(tmp_path, step, model, optimizer, keep_last=2)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["checkpoint-15", "checkpoint-20"]
    save(tmp_path, 25, model, optimizer, keep_last=1)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-25"]


def test_weights_of_an_earlier_stage_load_partially_but_strange_ones_fail(tmp_path):
    stage1, stage1_optimizer = trained(parts=["projector"])
    path = save(tmp_path, 1, stage1, stage1_optimizer)
    stage2, _ = trained(seed=1)
    ckpt.load_model_weights(stage2, path, ENV, require_all=False)
    assert torch.equal(stage2.projector.weight, stage1.projector.weight)
    assert not torch.equal(stage2.llm.head.weight, stage1.llm.head.weight)
    with pytest.raises(CheckpointError, match="lacks trainable parameters: llm.embed.weight"):
        ckpt.load_model_weights(stage2, path, ENV, require_all=True)

    save_file({"projector.weight": torch.zeros(16, 16), "extra.weight": torch.zeros(1)}, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="tensors the model does not have: extra.weight"):
        ckpt.load_model_weights(stage2, path, ENV, require_all=False)
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_model_weights(stage2, tmp_path / "nowhere", ENV, require_all=False)


def test_resuming_with_another_world_size_is_refused(tmp_path):
    model, optimizer = trained()
    path = save(tmp_path, 1, model, optimizer)
    (path / "trainer.json").write_text(json.dumps({"step": 1, "world_size": 8}))
    with pytest.raises(CheckpointError, match="written by 8 ranks, this run has 1"):
        ckpt.load_checkpoint(path, model=model, optimizer=optimizer, env=ENV)
