"""How well each vision token alone tells a needle scene's dotted background from the other backgrounds of its
colour: the vision front's share of finding a needle among millions of tokens.

For each background colour, a linear discriminant (LDA, shrunk by 1% of the mean variance) is fitted on the vision
tokens of half the frames (dotted against plain, striped and checkered of that colour) and scored on the other
half: its Fisher ratio (distance of the class means over their pooled standard deviation along it) and the share
of dotted tokens scoring above all but --false-alarm of the others' tokens. Validation-split frames, a share of
them drawn from needle scenes (timeviper.synth.pretrain_vision.frame_batch).

    python scripts/probe_needle_tokens.py embedded runs/vision-needles [--frames 8000] [--out runs/needle_tokens.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from timeviper.model import TimeViper
from timeviper.synth.pretrain_vision import ALL_BACKGROUNDS, frame_batch, vision_tokens
from timeviper.synth.render import BACKGROUND_RGB
from timeviper.synth.world import NEEDLE_PATTERN, background_parts, split_range


def separation(dotted: tuple[torch.Tensor, torch.Tensor], others: tuple[torch.Tensor, torch.Tensor],
               false_alarm: float) -> dict[str, float]:
    """dotted and others: (fit, held-out) tokens [n, D] each -> Fisher ratio and detection on the held-out ones."""
    (dotted_fit, dotted_test), (others_fit, others_test) = dotted, others
    covariance = (torch.cov(dotted_fit.T) + torch.cov(others_fit.T)) / 2
    shrink = 0.01 * covariance.diagonal().mean() * torch.eye(len(covariance), dtype=covariance.dtype)
    direction = torch.linalg.solve(covariance + shrink, dotted_fit.mean(0) - others_fit.mean(0))  # [D]
    hit, rest = dotted_test @ direction, others_test @ direction
    fisher = (hit.mean() - rest.mean()) / ((hit.var() + rest.var()) / 2).sqrt()
    return {"fisher": round(fisher.item(), 2),
            "detected": round((hit > rest.quantile(1 - false_alarm)).double().mean().item(), 3),
            "dotted_tokens": len(dotted_test), "other_tokens": len(rest)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="TimeViper directories, or `embedded` for the shipped model")
    parser.add_argument("--frames", type=int, default=8000)
    parser.add_argument("--needle-share", type=float, default=0.3)
    parser.add_argument("--false-alarm", type=float, default=0.001, help="share of other tokens let above the bar")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", help="a JSON file for the results")
    args = parser.parse_args(argv)

    frames, classes, _ = frame_batch(np.random.default_rng(args.seed), split_range("validation"), args.frames, 64,
                                     args.needle_share)
    pattern, colour = np.array([background_parts(ALL_BACKGROUNDS[b]) for b in classes[:, 0].tolist()]).T
    fit = np.arange(len(frames)) < len(frames) // 2
    results = {}
    for name in args.models:
        model = TimeViper.from_pretrained(None if name == "embedded" else name, torch.float32, "cpu").eval()
        with torch.no_grad():
            tokens = torch.cat([vision_tokens(model, chunk) for chunk in frames.split(1000)]).double()  # [F, N, D]
        results[name] = {}
        for c in BACKGROUND_RGB:
            def split(mask):
                return tuple(tokens[torch.from_numpy(mask & part)].flatten(0, 1) for part in (fit, ~fit))
            dotted = pattern == NEEDLE_PATTERN
            results[name][c] = separation(split(dotted & (colour == c)), split(~dotted & (colour == c)),
                                          args.false_alarm)
        print(name)
        for c, r in results[name].items():
            print(f"  {c:6s} Fisher ratio {r['fisher']:5.2f}   dotted tokens detected at a false alarm rate of "
                  f"{args.false_alarm}: {r['detected']:.3f}   ({r['dotted_tokens']} / {r['other_tokens']} tokens)")
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
