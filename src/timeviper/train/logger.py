"""Training metrics: ``metrics.jsonl``, a progress bar, optionally TensorBoard (all on rank 0).

``metrics.jsonl`` holds one JSON object per logged step. A run that starts at step S (0 for a
fresh one, the checkpoint's step on resume) first drops the records after S, so a resumed run
never repeats a step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from tqdm import tqdm

from timeviper.train.distributed import print0

METRICS_FILE = "metrics.jsonl"

# dense bf16 tensor-core peak per GPU, by device-name substring
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak FLOP/s, if known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


class MetricsLogger:
    def __init__(self, output_dir: str | Path, *, start_step: int, total_steps: int, tensorboard: bool, enabled: bool):
        self.enabled = enabled
        self._tb = None
        self._bar = tqdm(
            total=total_steps, initial=start_step, desc="train", dynamic_ncols=True, disable=not enabled or None
        )
        if not enabled:
            return
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / METRICS_FILE
        _truncate(path, start_step)
        self._file = open(path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print0(
                    "logging.tensorboard is on but the tensorboard package is not installed "
                    "(pip install tensorboard); logging to metrics.jsonl only"
                )
            else:
                self._tb = SummaryWriter(output_dir / "tensorboard", purge_step=start_step + 1)

    def log(self, record: dict) -> None:
        """Write one step's metrics (``record["step"]`` is required)."""
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(key, value, record["step"])
        self._bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)

    def advance(self) -> None:
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def _truncate(path: Path, last_step: int) -> None:
    """Keep the records of ``path`` up to ``last_step`` (and drop a torn last line)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
