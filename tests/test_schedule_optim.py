"""Learning-rate schedule, trainable parts, AdamW groups, gradient scaling and clipping."""

import math

import pytest
import torch
from test_trainer import TinyVLM

from timeviper.errors import ConfigError
from timeviper.train.config import OptimConfig
from timeviper.train.optim import build_optimizer, part_of, scale_and_clip_grads_, set_trainable
from timeviper.train.schedule import Schedule


def test_warmup_then_cosine_to_the_floor():
    schedule = Schedule.from_config(OptimConfig(warmup_ratio=0.1), total_steps=100)
    assert schedule.warmup_steps == 10
    assert [schedule(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert schedule(54) == pytest.approx(0.5)  # half-way through the cosine
    assert schedule(32) == pytest.approx(0.5 * (1 + math.cos(math.pi * 23 / 90)))
    assert schedule(99) == pytest.approx(0.0)
    values = [schedule(s) for s in range(9, 100)]
    assert all(a > b for a, b in zip(values, values[1:]))

    floor = Schedule.from_config(OptimConfig(warmup_ratio=0.03, min_lr_ratio=0.1), total_steps=1000)
    assert floor.warmup_steps == 30 and floor(29) == 1.0 and floor(999) == pytest.approx(0.1)
    constant = Schedule.from_config(OptimConfig(scheduler="constant", warmup_ratio=0.0), total_steps=10)
    assert [constant(s) for s in range(10)] == [1.0] * 10


def test_stages_pick_the_trainable_parts():
    model = TinyVLM()
    assert part_of("llm.layers.1.transv.proj.weight") == part_of("llm.layers.1.transv.alpha") == "transv"
    assert part_of("llm.layers.1.mlp.0.weight") == "llm" and part_of("vision.weight") == "vision"

    counts = set_trainable(model, ["projector"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"projector.weight", "projector.bias"} and counts == {"projector": 16 * 16 + 16}

    set_trainable(model, ["projector", "llm", "transv"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"vision.weight", "vision.bias"}
    with pytest.raises(ConfigError, match="no parameters in"):
        set_trainable(torch.nn.Linear(2, 2), ["llm"])


def test_param_groups_split_decay_and_transv():
    model = TinyVLM()
    set_trainable(model, ["projector", "llm", "transv"])
    optimizer = build_optimizer(model, OptimConfig(lr=1e-5, transv_lr=5e-5, weight_decay=0.01))
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"decay", "no_decay", "transv_decay", "transv_no_decay"}
    assert groups["transv_no_decay"]["param_names"] == ["llm.layers.1.transv.alpha", "llm.layers.1.transv.proj.bias"]
    assert groups["transv_decay"]["param_names"] == ["llm.layers.1.transv.proj.weight"]
    assert "projector.weight" in groups["decay"]["param_names"] and "llm.embed.weight" in groups["decay"]["param_names"]
    no_decay = groups["no_decay"]["param_names"]
    assert "projector.bias" in no_decay and "llm.layers.0.norm.weight" in no_decay and "llm.head.bias" in no_decay
    assert all(".transv." not in n for n in groups["decay"]["param_names"] + no_decay)
    assert {name: (g["lr"], g["peak_lr"], g["weight_decay"]) for name, g in groups.items()} == {
        "decay": (1e-5, 1e-5, 0.01),
        "no_decay": (1e-5, 1e-5, 0.0),
        "transv_decay": (5e-5, 5e-5, 0.01),
        "transv_no_decay": (5e-5, 5e-5, 0.0),
    }
    grouped = sum((g["params"] for g in optimizer.param_groups), [])
    assert len(grouped) == sum(1 for p in model.parameters() if p.requires_grad)


def test_lr_by_prefix_gives_named_parameters_their_own_rate():
    model = TinyVLM()
    set_trainable(model, ["projector", "llm", "transv"])
    rates = {"projector": 1e-2, "llm.layers.1": 2e-3, "llm.layers.1.transv.proj": 3e-3}
    optimizer = build_optimizer(model, OptimConfig(lr=1e-5, transv_lr=5e-5, lr_by_prefix=rates))
    rate_of = {name: g["peak_lr"] for g in optimizer.param_groups for name in g["param_names"]}
    assert rate_of["projector.weight"] == rate_of["projector.bias"] == 1e-2
    assert rate_of["llm.layers.1.transv.proj.weight"] == 3e-3  # the longest prefix wins
    assert rate_of["llm.layers.1.transv.alpha"] == 2e-3  # a prefix wins over transv_lr
    assert rate_of["llm.layers.0.norm.weight"] == rate_of["llm.embed.weight"] == 1e-5
    groups = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert groups["projector_decay"] == 0.01 and groups["projector_no_decay"] == 0.0
    assert len(rate_of) == sum(1 for p in model.parameters() if p.requires_grad)


def test_lr_by_prefix_must_name_trainable_parameters():
    model = TinyVLM()
    set_trainable(model, ["projector", "llm", "transv"])
    for prefix in ("projector.time", "llm.layers.1.trans", "vision"):  # no such name, half a name, frozen
        with pytest.raises(ConfigError, match=f"lr_by_prefix: {prefix} names no trainable parameter"):
            build_optimizer(model, OptimConfig(lr_by_prefix={prefix: 1e-3}))
    with pytest.raises(ConfigError, match="lr_by_prefix.projector: must be > 0"):
        OptimConfig(lr_by_prefix={"projector": 0.0})


def test_gradients_are_scaled_then_clipped():
    params = [
        torch.nn.Parameter(torch.zeros(2)),
        torch.nn.Parameter(torch.zeros(1)),
        torch.nn.Parameter(torch.zeros(3)),
    ]
    params[0].grad, params[1].grad = torch.tensor([30.0, 40.0]), torch.tensor([0.0])  # norm 50; params[2] has none
    norm = scale_and_clip_grads_(params, scale=0.1, max_norm=1.0)
    assert norm == pytest.approx(5.0)
    assert params[0].grad.tolist() == pytest.approx([0.6, 0.8], rel=1e-5) and params[2].grad is None

    params[0].grad = torch.tensor([3.0, 4.0])
    assert scale_and_clip_grads_(params, scale=0.1, max_norm=1.0) == pytest.approx(0.5)
    assert params[0].grad.tolist() == pytest.approx([0.3, 0.4])  # under the limit: only scaled
