"""FSDP2 over two CPU processes (Gloo) trains a tiny TimeViper, TransV uni + attn, as one process does."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launch import torchrun

from timeviper.data.packing import collate
from timeviper.data.records import IGNORE_INDEX, VISION_SLOT_ID, Sample, SkipStats
from timeviper.llm import LMConfig
from timeviper.model import TimeViper, TimeViperConfig
from timeviper.train import Trainer, close_distributed, config_from_dict, init_distributed

ROOT = Path(__file__).resolve().parents[1]
LLM = LMConfig(vocab_size=256, hidden_size=32, pattern="M-M*-M-*-", num_heads=4, num_kv_heads=2, head_dim=8,
               intermediate_size=48, mamba_num_heads=4, mamba_head_dim=8, mamba_groups=2, ssm_state_size=8,
               chunk_size=8)
VISION = dict(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=48)
TOKENS_PER_FRAME = 4
# micro-batches of packed (frames, instruction, answer) samples, padded to 8: 1 to 3 samples each, so the
# ranks run TransV's attention-guided selection over different numbers of segments
MICRO_BATCHES = [[(3, 5, 4), (2, 3, 6)], [(5, 4, 3)], [(1, 2, 2), (2, 6, 5), (4, 3, 3)], [(0, 5, 7), (3, 4, 2)]]


def sample(frames: int, instruction: int, answer: int, g: torch.Generator) -> Sample:
    system, vision = 2, frames * TOKENS_PER_FRAME
    ids = torch.randint(1, LLM.vocab_size, (system + vision + instruction + answer,), generator=g)
    ids[system:system + vision] = VISION_SLOT_ID
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[-answer:] = ids[-answer:]
    video = torch.randint(0, 256, (frames, 40, 48, 3), dtype=torch.uint8, generator=g) if frames else None
    return Sample("s", ids, labels, (system, system + vision), system + vision + instruction, video)


class Stream:
    """Fixed micro-batches in turn, as a Trainer data stream."""

    def __init__(self, batches: list[dict]):
        self.batches, self.next, self.skips = batches, 0, SkipStats(["synthetic"])

    def __next__(self) -> dict:
        self.next += 1
        return self.batches[self.next - 1]

    def state_dict(self) -> dict:
        return {"next": self.next}

    def load_state_dict(self, state: dict) -> None:
        self.next = state["next"]


def train(output: Path, rank: int = 0, world_size: int = 1) -> None:
    """Two steps of two micro-batches each; rank r of n takes micro-batches r, r + n, ..."""
    g = torch.Generator().manual_seed(0)
    batches = [collate([sample(*s, g) for s in specs], pad_to_multiple_of=8) for specs in MICRO_BATCHES]
    records = output.parent / "records.jsonl"  # the config names a dataset; the batches come from Stream
    records.touch()
    config = config_from_dict({
        "model": {"tiny": {}},
        "train": {"max_steps": 2, "global_batch_tokens": 128, "micro_batch_tokens": 64, "bf16": False,
                  "activation_checkpointing": True},
        "optim": {"lr": 1e-3, "transv_lr": 5e-3, "warmup_ratio": 0.0, "scheduler": "constant"},
        "data": {"datasets": [{"path": str(records), "root": str(output.parent)}], "num_workers": 0},
        "logging": {"every": 1},
    })
    torch.manual_seed(0)
    model = TimeViper(TimeViperConfig(LLM, VISION, TOKENS_PER_FRAME, "uni_2_0.5-attn_3_0.5"))
    with torch.no_grad():
        for module in model.transv.values():
            module.alpha.fill_(0.5)  # the transfer reaches the loss from the first step
    Trainer(config, model, Stream(batches[rank::world_size]), output, blocks=list(model.llm.layers)).fit()


def losses(output: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_two_sharded_ranks_match_one_process(tmp_path):
    """Same global batches, same losses: step 1 checks the forward, step 2 the sharded update."""
    torchrun(__file__, str(tmp_path / "sharded"), processes=2, timeout=180)
    torchrun(__file__, str(tmp_path / "single"), processes=1, timeout=180)
    single, sharded = losses(tmp_path / "single"), losses(tmp_path / "sharded")
    assert [s for s, _ in single] == [s for s, _ in sharded] == [1, 2]
    for (_, a), (_, b) in zip(single, sharded):
        assert abs(a - b) < 1e-5, (single, sharded)
    files = [tmp_path / run / "metrics.jsonl" for run in ("single", "sharded")]
    verdict = subprocess.run([sys.executable, ROOT / "scripts" / "compare_losses.py", *files],
                             capture_output=True, text=True)
    assert verdict.returncode == 0 and "MATCH" in verdict.stdout, verdict.stdout


if __name__ == "__main__":
    env = init_distributed()
    train(Path(sys.argv[1]), env.rank, env.world_size)
    close_distributed()
