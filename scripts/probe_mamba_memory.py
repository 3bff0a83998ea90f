"""How far back each Mamba-2 head of a model remembers, on the videos it answers.

    python scripts/probe_mamba_memory.py [--task needle] [--frames 256] [--items 10] [--model DIR] [--out FILE]

A Mamba-2 head keeps an input written at step s in its state at step t >= s times exp(A * (dt_{s+1} + ... + dt_t)),
dt being the head's step size at each token (SSD's decay). The probe asks validation questions, records every
Mamba layer's step sizes over the prompt (the tokens that layer sees: after a TransV drop, the kept ones), and
prints per head the memory at each step, the number of tokens back over which the state still holds at least
`--floor` of an input, as its median, 99th percentile and maximum over steps. A model whose longest memory is far
below the prompt's length carries nothing across the video in its Mamba layers: only attention (and TransV) can.
"""

import argparse
import json
import math
import sys
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from timeviper import TimeViper
from timeviper.data.synth_source import sample_video
from timeviper.errors import TimeViperError
from timeviper.eval import runner
from timeviper.eval.synth_sweep import sweep_items
from timeviper.llm.mamba import Mamba2
from timeviper.synth.world import NEEDLE_MIN_FRAMES


def memory(log_decay: Tensor, floor: float) -> Tensor:
    """log_decay [T, H] (A * dt of each step, <= 0) -> [T, H]: at each step t, how many tokens back the state still
    holds at least `floor` of an input: t - s for the earliest step s whose input it keeps that much."""
    cum = log_decay.double().cumsum(0)  # [T, H]: the input of step s is kept exp(cum[t] - cum[s]) at step t
    bar = cum - math.log(floor)  # cum falls with s: the inputs kept at least `floor` are those from the first s
    first = torch.searchsorted(-cum.T.contiguous(), -bar.T.contiguous())  # [H, T]  with cum[s] <= bar[t] on
    return torch.arange(len(cum))[:, None] - first.T  # [T, H]


@contextmanager
def step_sizes(model):
    """{layer name: [log decays [T, H] of each prefill call]} of every Mamba layer while inside (a prompt is
    prefilled in chunks, each continuing the state of the one before)."""
    seen, handles = defaultdict(list), []
    for name, mixer in model.named_modules():
        if isinstance(mixer, Mamba2):
            def record(module, args, name=name):
                x = args[0]  # [B, T, C]
                if x.shape[1] > 1:  # a prefill, not a decode step
                    dt = module._in_proj(x[0])[2]  # [T, H]
                    seen[name].append((module._dt(dt) * -torch.exp(module.A_log.float())).detach())
            handles.append(mixer.register_forward_pre_hook(record))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a TimeViper directory (default: the embedded model)")
    parser.add_argument("--task", choices=("mcq", "needle", "tvg", "caption"), default="needle")
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--floor", type=float, default=0.01, help="share of an input still held (0-1)")
    parser.add_argument("--out", help="JSON of the statistics per layer and head")
    args = parser.parse_args(argv)
    if not 0 < args.floor < 1 or args.items < 1:
        parser.error(f"--floor must lie between 0 and 1 and --items be at least 1, got {args.floor} and {args.items}")
    least = NEEDLE_MIN_FRAMES if args.task == "needle" else 1
    if args.frames < least:
        parser.error(f"--frames must be at least {least} for {args.task} questions, got {args.frames}")
    try:
        model = TimeViper.from_pretrained(args.model).eval()
        items = sweep_items(args.task, args.frames, args.items, 0, 64, split="validation")
        if not any(isinstance(m, Mamba2) for m in model.modules()):
            raise TimeViperError(f"{args.model or 'the embedded model'} has no Mamba layers")
    except TimeViperError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    prompts = defaultdict(list)  # layer name -> log decays [T, H] of each prompt
    with step_sizes(model) as seen, torch.no_grad():
        for spec, item in items:
            runner.predict(model, sample_video(spec, None, "uniform"), item)
            for name, chunks in seen.items():
                prompts[name].append(torch.cat(chunks))
                chunks.clear()
    results = {}
    for name, prefills in prompts.items():
        steps = torch.cat([memory(p, args.floor) for p in prefills]).double()  # [steps of every prompt, H]
        results[name] = {"tokens_seen": [len(p) for p in prefills],
                         "median": steps.median(0).values.tolist(), "p99": steps.quantile(0.99, dim=0).tolist(),
                         "max": steps.amax(0).tolist()}
        print(f"{name} ({len(prefills[0])} tokens in the first prompt), tokens back holding {args.floor:g} of an "
              f"input, median/p99/max by head: " + "  ".join(
                  f"{m:.0f}/{q:.0f}/{x:.0f}" for m, q, x in zip(*(results[name][k] for k in ("median", "p99", "max")))))
    name, row = max(results.items(), key=lambda kv: max(kv[1]["max"]))
    print(f"longest memory of any head: {max(row['max']):.0f} tokens ({name}, whose prompts were "
          f"{min(row['tokens_seen'])}-{max(row['tokens_seen'])} tokens)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"floor": args.floor, "task": args.task, "frames": args.frames,
                                              "items": args.items, "layers": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
