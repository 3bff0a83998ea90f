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
import sys
from pathlib import Path

import numpy as np
import torch

from timeviper.errors import TimeViperError
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


def probe(models: dict[str, TimeViper], args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    """model name -> background colour -> separation of its dotted tokens, on frames drawn as `args` says."""
    frames, classes, _ = frame_batch(np.random.default_rng(args.seed), split_range("validation"), args.frames, 64,
                                     args.needle_share)
    pattern, colour = np.array([background_parts(ALL_BACKGROUNDS[b]) for b in classes[:, 0].tolist()]).T
    dotted, fit = pattern == NEEDLE_PATTERN, np.arange(len(frames)) < len(frames) // 2
    for c in BACKGROUND_RGB:
        for kind, mask in (("dotted", dotted), ("other", ~dotted)):
            if min((mask & (colour == c) & part).sum() for part in (fit, ~fit)) < 2:
                raise TimeViperError(f"too few {kind} {c} frames in half of {args.frames} to fit and score on: "
                                     f"raise --frames or --needle-share")
    results = {}
    for name, model in models.items():
        with torch.no_grad():
            tokens = torch.cat([vision_tokens(model, chunk) for chunk in frames.split(1000)]).double()  # [F, N, D]

        def split(mask):  # tokens [n, D] of the masked frames, (fitted, held-out)
            return tuple(tokens[torch.from_numpy(mask & part)].flatten(0, 1) for part in (fit, ~fit))

        results[name] = {c: separation(split(dotted & (colour == c)), split(~dotted & (colour == c)), args.false_alarm)
                         for c in BACKGROUND_RGB}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="TimeViper directories, or `embedded` for the shipped model")
    parser.add_argument("--frames", type=int, default=8000)
    parser.add_argument("--needle-share", type=float, default=0.3)
    parser.add_argument("--false-alarm", type=float, default=0.001, help="share of other tokens let above the bar")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", help="a JSON file for the results")
    args = parser.parse_args(argv)
    if args.frames < 2 or not 0 < args.needle_share <= 1 or not 0 < args.false_alarm < 1:
        parser.error("--frames must be at least 2, --needle-share in (0, 1] and --false-alarm in (0, 1)")
    try:
        models = {name: TimeViper.from_pretrained(None if name == "embedded" else name, torch.float32, "cpu").eval()
                  for name in args.models}
        results = probe(models, args)
    except TimeViperError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name, by_colour in results.items():
        print(name)
        for c, r in by_colour.items():
            print(f"  {c:6s} Fisher ratio {r['fisher']:5.2f}   dotted tokens detected at a false alarm rate of "
                  f"{args.false_alarm}: {r['detected']:.3f}   ({r['dotted_tokens']} / {r['other_tokens']} tokens)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"settings": vars(args), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
