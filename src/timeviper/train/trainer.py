"""The training loop, independent of what the model is.

The model is any ``nn.Module`` with ``forward_train(batch, average) -> (loss_sum, divisor)``: the
cross-entropy *summed* over the batch's loss tokens (computed in fp32) and how many there were
(``average="token"``; with ``"sample"`` each sample's tokens share a weight of 1 and the divisor
counts samples). The trainer sums both over the micro-batches of a step and over ranks, and
divides the gradients by the global divisor, so every loss token (or sample) of a step weighs the
same whatever micro-batch or rank it fell in: the result equals one big batch's mean loss. Terms a
model adds to that sum (such as evidence attention) it may also leave in ``model.extra_losses``
(name -> detached sum), which the log then shows apart, under the same divisor.

The training data is any iterator of batches (the model's input) with ``state_dict()``,
``load_state_dict(state)`` and ``skips`` (:class:`~timeviper.data.SkipStats`), such as
:class:`~timeviper.data.PackedStream` or the :class:`~timeviper.data.Prefetcher` around it that
``build_train_data`` returns.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from timeviper.data.records import SkipStats
from timeviper.errors import ConfigError, TimeViperError
from timeviper.train.checkpoint import latest_checkpoint, load_checkpoint, load_model_weights, save_checkpoint
from timeviper.train.config import Config
from timeviper.train.distributed import all_reduce_sum, init_distributed, parallelize, print0
from timeviper.train.logger import MetricsLogger, peak_flops
from timeviper.train.profiling import step_profiler
from timeviper.train.optim import build_optimizer, scale_and_clip_grads_, set_trainable
from timeviper.train.schedule import Schedule


class Trainer:
    """Train ``model`` on ``train_data`` as ``config`` says, writing to ``output_dir``.

    ``blocks`` are the model's repeated layers (``model.llm.layers``): the units of FSDP sharding
    and activation checkpointing. If the model has ``flops_per_token()`` (training FLOPs per
    token), metrics on GPU include the model FLOP utilisation ``mfu``.
    """

    def __init__(
        self, config: Config, model: nn.Module, train_data, output_dir: str | Path, *, blocks: Sequence[nn.Module] = ()
    ):
        self.config = config
        self.env = init_distributed()
        self.output_dir = Path(output_dir)
        self.train_data = train_data
        self.grad_accum = config.grad_accum(self.env.world_size)
        if config.train.evidence_weight and self.env.world_size > 1:  # it reads a layer outside its forward
            raise ConfigError("train.evidence_weight: evidence attention trains in one process only; "
                              f"this run has {self.env.world_size}")
        counts = set_trainable(model, config.train.trainable)
        print0("trainable parameters:", ", ".join(f"{part} {n / 1e6:.1f}M" for part, n in counts.items()))
        flops_per_token = getattr(model, "flops_per_token", None)
        self._flops_per_token = flops_per_token() if callable(flops_per_token) else None
        self.model = parallelize(
            model,
            blocks,
            self.env,
            bf16=config.train.bf16,
            activation_checkpointing=config.train.activation_checkpointing,
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, config.optim)
        self._has_transv = any(g["name"].startswith("transv") for g in self.optimizer.param_groups)
        self.schedule = Schedule.from_config(config.optim, config.train.max_steps)
        if self.env.device.type == "cuda":
            # cuDNN's fused attention plans every new shape at ~10 ms of CPU a call, and packed micro-batches
            # change shape every step: the flash and memory-efficient kernels serve them without that cost
            torch.backends.cuda.enable_cudnn_sdp(False)
            torch.set_float32_matmul_precision("high")  # TF32 for what stays in float32 (the SSD's PyTorch path)
        # one process: bf16 autocast; sharded: FSDP's mixed precision computes in bf16
        self._autocast = config.train.bf16 and self.env.device.type == "cuda" and self.env.world_size == 1

    def fit(self, max_steps: int | None = None, resume: bool = False, max_seconds: float | None = None) -> int:
        """Train up to step ``max_steps`` (default and at most ``train.max_steps``) and return the last step.

        ``max_steps`` stops the run early without changing the schedule, and so does ``max_seconds``: the
        first step to end that long after the call began is the last (every rank stops at the same step). A
        checkpoint is written at the stop. With ``resume`` the run continues from the latest complete
        checkpoint in ``output_dir`` (or starts afresh if there is none).
        """
        if max_seconds is not None and not max_seconds >= 0:
            raise ConfigError(f"max_seconds must be a number of seconds >= 0, got {max_seconds}")
        cfg = self.config
        started = time.perf_counter()
        stop = min(max_steps or cfg.train.max_steps, cfg.train.max_steps)
        step = self._start(resume)
        logger = MetricsLogger(
            self.output_dir,
            start_step=step,
            total_steps=stop,
            tensorboard=cfg.logging.tensorboard,
            enabled=self.env.is_main,
        )
        logged, tokens_since_log, waited, clock = step, 0, 0.0, time.perf_counter()
        profiler = step_profiler(cfg.logging.profile_steps, step, self.output_dir, self.env)
        try:
            with profiler:
                while step < stop:
                    metrics = self._train_step(step)
                    profiler.step()
                    step += 1
                    if max_seconds is not None and self._out_of_time(time.perf_counter() - started, max_seconds):
                        stop = step
                    tokens_since_log += metrics["tokens"]
                    waited += metrics.pop("data_wait_s")
                    logger.advance()
                    if step % cfg.logging.every == 0 or step == stop:
                        elapsed = time.perf_counter() - clock
                        rates = self._rates(step - logged, tokens_since_log, elapsed, waited)
                        logger.log({"step": step, **metrics, **rates, **self._skips().summary()})
                        logged, tokens_since_log, waited, clock = step, 0, 0.0, time.perf_counter()
                    if step % cfg.checkpoint.every == 0 or step == stop:
                        self._save(step)
                        clock = time.perf_counter()
        finally:
            logger.close()
        return step

    def _start(self, resume: bool) -> int:
        latest = latest_checkpoint(self.output_dir)
        if latest is not None and not resume:
            raise TimeViperError(
                f"{self.output_dir} already holds {latest.name}: resume that run or choose another output directory"
            )
        if latest is not None:
            step, data_state = load_checkpoint(latest, model=self.model, optimizer=self.optimizer, env=self.env)
            self.train_data.load_state_dict(data_state)
            self._report_config_changes(latest)
            print0(f"resumed from {latest} at step {step}")
            return step
        if resume:
            print0(f"no checkpoint in {self.output_dir}: starting afresh")
        seed = self.config.train.seed + self.env.rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if self.config.model.init_checkpoint:
            load_model_weights(self.model, self.config.model.init_checkpoint, self.env, require_all=False)
            print0(f"initialised trainable weights from {self.config.model.init_checkpoint}")
        return 0

    def _train_step(self, step: int) -> dict:
        factor = self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["peak_lr"] * factor
        device = self.env.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        loss_tokens = torch.zeros((), dtype=torch.float64, device=device)
        tokens, waited, extra = 0, 0.0, {}
        for _ in range(self.grad_accum):
            clock = time.perf_counter()
            batch = next(self.train_data)
            waited += time.perf_counter() - clock
            batch = _to_device(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self._autocast):
                loss, count = self.model.forward_train(batch, self.config.train.loss_average)
            loss.backward()
            loss_sum += loss.detach()
            loss_tokens += count
            tokens += batch["input_ids"].numel()
            for name, value in getattr(self.model, "extra_losses", {}).items():  # terms inside loss, for the log
                extra[name] = extra.get(name, 0.0) + value.double()
        totals = torch.stack([loss_sum, loss_tokens, torch.tensor(float(tokens), dtype=torch.float64, device=device),
                              *extra.values()])
        loss_sum, loss_tokens, tokens, *extra_sums = all_reduce_sum(totals).tolist()
        if loss_tokens == 0:
            raise TimeViperError(f"step {step + 1}: no loss token in any micro-batch")
        grad_norm = scale_and_clip_grads_(self.params, 1.0 / loss_tokens, self.config.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = {"loss": loss_sum / loss_tokens, "lr": self.config.optim.lr * factor}
        metrics.update({name: value / loss_tokens for name, value in zip(extra, extra_sums)})
        if self._has_transv:
            metrics["transv_lr"] = self.config.optim.transv_lr * factor
        divisor = "loss_tokens" if self.config.train.loss_average == "token" else "loss_samples"
        return {**metrics, "grad_norm": grad_norm, "tokens": int(tokens), divisor: int(loss_tokens),
                "data_wait_s": waited}

    def _out_of_time(self, elapsed: float, budget: float) -> bool:
        """Whether any rank has used up the time budget (so that all stop at the same step)."""
        late = torch.tensor(float(elapsed >= budget), device=self.env.device)
        return bool(all_reduce_sum(late) > 0)

    def _rates(self, steps: int, tokens: int, seconds: float, data_wait: float) -> dict:
        """Speed over the last logging interval of `steps` steps; ``data_wait`` is the share of its time
        (this rank's) spent waiting for batches: near 0 when data loading keeps up."""
        rates = {"tokens_per_s": tokens / seconds, "step_s": seconds / steps, "data_wait": data_wait / seconds}
        peak = peak_flops(self.env.device)
        if peak and self._flops_per_token:
            rates["mfu"] = tokens / seconds / self.env.world_size * self._flops_per_token / peak
        return rates

    def _skips(self) -> SkipStats:
        """Samples drawn and skipped so far, over all ranks."""
        local = self.train_data.skips
        return SkipStats(local.names, all_reduce_sum(local.counts.to(self.env.device, copy=True)).cpu())

    def _save(self, step: int) -> None:
        save_checkpoint(
            self.output_dir,
            step,
            model=self.model,
            optimizer=self.optimizer,
            data_state=self.train_data.state_dict(),
            config=self.config.to_dict(),
            env=self.env,
            keep_last=self.config.checkpoint.keep_last,
        )

    def _report_config_changes(self, checkpoint: Path) -> None:
        before = _flatten(yaml.safe_load((checkpoint / "config.yaml").read_text()))
        now = _flatten(self.config.to_dict())
        changed = [
            f"{k}: {before.get(k)!r} -> {now.get(k)!r}"
            for k in sorted(before.keys() | now.keys())
            if before.get(k) != now.get(k)
        ]
        if changed:
            print0(
                "the config differs from the checkpoint's; continuing with the new values:\n  " + "\n  ".join(changed)
            )


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _to_device(obj, device: torch.device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    return obj
