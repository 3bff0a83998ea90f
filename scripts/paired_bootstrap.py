"""Two synth_sweep files compared on the cells they share, item by item: each cell's headline metric in both, their
difference and its 95% paired bootstrap interval (the same seeds resampled for both).

    python scripts/paired_bootstrap.py runs/new.json runs/base.json [--samples 10000]

Items are rebuilt from the cells' seeds (so both files must come from the same world size) and each answer is scored
alone, as timeviper.eval.metrics.score would score it in its cell.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from timeviper.errors import TimeViperError
from timeviper.eval.metrics import score
from timeviper.eval.runner import answer_record
from timeviper.eval.synth_sweep import HEADLINE, cell_key, task_item


def item_scores(cell: dict, size: int) -> dict[int, float]:
    """seed -> the cell's headline metric of that seed's answer alone."""
    task, metric = cell["task"], HEADLINE[cell["task"]]
    if "responses" not in cell:
        raise TimeViperError(f"cell {cell_key(cell)} holds no responses to score item by item")
    out = {}
    for seed, raw in zip(cell["seeds"], cell["responses"]):
        _, item = task_item(task, seed, cell["frames"], size)
        out[seed] = score(item["task"], [answer_record(item, raw)], [item])[metric]
    return out


def paired(new: dict[int, float], base: dict[int, float], samples: int, rng) -> tuple[float, float, float, int]:
    """(mean difference, 2.5% and 97.5% bootstrap quantiles, items) over the seeds both hold."""
    seeds = sorted(new.keys() & base.keys())
    diff = np.array([new[s] - base[s] for s in seeds])
    means = diff[rng.integers(0, len(diff), (samples, len(diff)))].mean(1)
    return float(diff.mean()), *np.quantile(means, [0.025, 0.975]).tolist(), len(seeds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("new")
    p.add_argument("base")
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        new, base = (json.loads(Path(path).read_text()) for path in (args.new, args.base))
        sizes = {new["settings"]["size"], base["settings"]["size"]}
        if len(sizes) != 1:
            raise TimeViperError(f"the files' worlds differ in frame size: {sorted(sizes)}")
        base_cells = {cell_key(c): c for c in base["cells"]}
        shared = [(c, base_cells[cell_key(c)]) for c in new["cells"] if cell_key(c) in base_cells]
        if not shared:
            raise TimeViperError("the files share no (transv, task, frames) cell")
        rng, size = np.random.default_rng(args.seed), sizes.pop()
        rows = [(a, b, *paired(item_scores(a, size), item_scores(b, size), args.samples, rng)) for a, b in shared]
    except (OSError, KeyError, json.JSONDecodeError, TimeViperError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{'task':<8}{'frames':>7}  {'transv':<10}{'new':>7}{'base':>7}{'diff':>8}   95% interval     n")
    for a, b, diff, lo, hi, n in rows:
        metric = HEADLINE[a["task"]]
        print(f"{a['task']:<8}{a['frames']:>7}  {a['transv']:<10}{a['metrics'][metric]:>7.3f}"
              f"{b['metrics'][metric]:>7.3f}{diff:>+8.3f}   [{lo:+.3f}, {hi:+.3f}]{n:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
