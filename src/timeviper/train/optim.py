"""Which parameters train, their AdamW groups, and gradient scaling with clipping.

Parameters belong to a *part*: ``transv`` when a module on their path is named ``transv`` (TransV
modules, wherever they sit), else the first component of their name (``projector``, ``llm``,
``vision``, ...). Only the parts a stage lists train (the SigLIP encoder only when listed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from timeviper.errors import ConfigError
from timeviper.train.config import OptimConfig


def part_of(name: str) -> str:
    path = name.split(".")[:-1]
    return "transv" if "transv" in path else name.split(".")[0]


def set_trainable(model: nn.Module, parts: Sequence[str]) -> dict[str, int]:
    """Freeze every parameter outside ``parts``; return the trainable parameter count per part."""
    counts = dict.fromkeys(parts, 0)
    for name, p in model.named_parameters():
        p.requires_grad_(part_of(name) in counts)
        if p.requires_grad:
            counts[part_of(name)] += p.numel()
    if not any(counts.values()):
        raise ConfigError(f"train.trainable: the model has no parameters in {list(parts)}")
    return counts


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, grouped by learning rate and by weight decay.

    Matrices decay; vectors and scalars (biases, norm weights, gates such as TransV's alpha, Mamba's
    A_log/D/dt_bias) do not. A parameter's peak rate is that of the longest prefix of its name in
    ``lr_by_prefix``, else ``transv_lr`` for TransV, else ``lr``. Each group keeps its peak rate in
    ``peak_lr`` and its parameters' names in ``param_names``.
    """
    groups: dict[str, dict] = {}
    unused = set(optim.lr_by_prefix)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        prefix = max((k for k in optim.lr_by_prefix if name == k or name.startswith(k + ".")), key=len, default=None)
        unused.discard(prefix)
        if prefix is not None:
            rate, lr = f"{prefix}_", optim.lr_by_prefix[prefix]
        elif part_of(name) == "transv":
            rate, lr = "transv_", optim.transv_lr
        else:
            rate, lr = "", optim.lr
        decay = p.ndim >= 2
        key = rate + ("decay" if decay else "no_decay")
        group = groups.setdefault(
            key,
            {
                "name": key,
                "params": [],
                "param_names": [],
                "lr": lr,
                "peak_lr": lr,
                "weight_decay": optim.weight_decay if decay else 0.0,
            },
        )
        group["params"].append(p)
        group["param_names"].append(name)
    if unused:
        raise ConfigError(f"optim.lr_by_prefix: {', '.join(sorted(unused))} names no trainable parameter")
    return torch.optim.AdamW(list(groups.values()), lr=optim.lr, betas=optim.betas, eps=optim.eps)


def scale_and_clip_grads_(params: Iterable[nn.Parameter], scale: float, max_norm: float) -> float:
    """Multiply the gradients by ``scale``, then clip their global norm to ``max_norm``.

    Works on sharded (DTensor) gradients too. Returns the global norm after scaling, before clipping.
    """
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    norm = norm.item() * scale
    coef = scale * min(1.0, max_norm / (norm + 1e-6))
    for g in grads:
        g.mul_(coef)
    return norm
