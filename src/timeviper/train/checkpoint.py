"""Training checkpoints, written atomically.

``OUTPUT/checkpoint-STEP/`` holds:

=====================  ===================================================================
``model.safetensors``  the trainable parameters, full (gathered from FSDP shards), fp32
                       as trained; frozen ones come from the pretrained model
``optimizer/``         AdamW state in ``torch.distributed.checkpoint`` format: each rank
                       writes its own shards, so it is never gathered in one place
``rank-R.pt``          per rank: its data stream state and RNG states (python, numpy,
                       torch, CUDA)
``trainer.json``       step and world size (the lr schedule is a function of the step)
``config.yaml``        the run's config
``COMPLETE``           written last
=====================  ===================================================================

A checkpoint is written into ``checkpoint-STEP.tmp-PID/``, flushed to disk, marked ``COMPLETE``
and only then renamed, so a process killed while saving leaves a ``.tmp-`` directory, which
:func:`latest_checkpoint` ignores and the next save removes. Resuming needs the same world size:
every rank continues its own data stream.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from timeviper.errors import CheckpointError
from timeviper.train.distributed import DistEnv, barrier, broadcast_object

MARKER = "COMPLETE"
MODEL_FILE = "model.safetensors"
_NAME = re.compile(r"checkpoint-(\d+)")


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete checkpoints under ``output_dir``, oldest first."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = _NAME.fullmatch(path.name)
        if match and (path / MARKER).is_file():
            found.append((int(match[1]), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_state: dict,
    config: dict,
    env: DistEnv,
    keep_last: int,
) -> Path:
    """Write ``checkpoint-STEP`` (a collective call: every rank takes part), then prune old ones."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / broadcast_object(f"{final.name}.tmp-{os.getpid()}")
    if env.is_main:
        tmp.mkdir(parents=True)
    barrier()

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    weights = get_model_state_dict(model, options=options)
    dcp.save(get_optimizer_state_dict(model, optimizer), checkpoint_id=tmp / "optimizer")
    torch.save({"data": data_state, "rng": _rng_state()}, tmp / f"rank-{env.rank}.pt")
    if env.is_main:
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        save_file({k: v.contiguous() for k, v in weights.items() if k in trainable}, tmp / MODEL_FILE)
        (tmp / "trainer.json").write_text(json.dumps({"step": step, "world_size": env.world_size}))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    barrier()

    if env.is_main:
        _fsync_tree(tmp)
        _write_synced(tmp / MARKER)
        _fsync(tmp)
        os.rename(tmp, final)
        _fsync(output_dir)
        _prune(output_dir, keep_last)
    barrier()
    return final


def load_checkpoint(
    path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv
) -> tuple[int, dict]:
    """Restore model, optimizer and this rank's RNG states; return the step and the data state.

    The optimizer keeps its current hyper-parameters (lr, betas, weight decay): the config wins.
    """
    path = Path(path)
    meta = json.loads((path / "trainer.json").read_text())
    if meta["world_size"] != env.world_size:
        raise CheckpointError(
            f"{path} was written by {meta['world_size']} ranks, this run has {env.world_size}; "
            "resume with the same number of processes (each continues its own data stream)"
        )
    load_model_weights(model, path, env, require_all=True)

    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    state = get_optimizer_state_dict(model, optimizer)
    dcp.load(state, checkpoint_id=path / "optimizer")
    set_optimizer_state_dict(model, optimizer, state)
    for group, values in zip(optimizer.param_groups, hyper):
        group.update(values)

    rank_state = torch.load(path / f"rank-{env.rank}.pt", weights_only=True)
    _set_rng_state(rank_state["rng"])
    return meta["step"], rank_state["data"]


def load_model_weights(model: nn.Module, path: str | Path, env: DistEnv, *, require_all: bool) -> None:
    """Load ``model.safetensors`` of checkpoint ``path`` into the model's parameters (a collective call).

    Every tensor must name a parameter of the model; with ``require_all`` every trainable
    parameter must be there too (a resume). Without it, a checkpoint of an earlier stage may hold
    fewer (stage 1 trains the projector only).
    """
    file = Path(path) / MODEL_FILE
    weights, problem = {}, None
    if env.is_main:
        if not file.is_file():
            problem = f"{file} not found"
        else:
            weights = load_file(file)
            params = dict(model.named_parameters())
            unknown = sorted(set(weights) - set(params))
            missing = sorted(n for n, p in params.items() if p.requires_grad and n not in weights)
            if unknown:
                problem = f"{file} holds tensors the model does not have: {_few(unknown)}"
            elif require_all and missing:
                problem = f"{file} lacks trainable parameters: {_few(missing)}"
    problem = broadcast_object(problem)
    if problem:
        raise CheckpointError(problem)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=dist.is_initialized(), strict=False)
    set_model_state_dict(model, weights, options=options)


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _prune(output_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints, and leftovers of failed saves."""
    for leftover in output_dir.glob("checkpoint-*.tmp-*"):
        shutil.rmtree(leftover)
    for path in complete_checkpoints(output_dir)[:-keep_last]:
        # renamed first, so a deletion cut short leaves a .tmp- directory, never a broken checkpoint
        trash = path.with_name(f"{path.name}.tmp-delete")
        os.rename(path, trash)
        shutil.rmtree(trash)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            _fsync(Path(dirpath, name))
        _fsync(Path(dirpath))


def _write_synced(path: Path) -> None:
    with open(path, "w") as f:
        f.flush()
        os.fsync(f.fileno())


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
