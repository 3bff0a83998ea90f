"""Compare the losses of two `timeviper train` runs step by step, e.g. one GPU against two (FSDP2).

    python scripts/compare_losses.py runs/1gpu/metrics.jsonl runs/2gpu/metrics.jsonl [--tolerance 1e-5]

Both runs must see the same global batches (same config and data; `global_batch_tokens` fixed, so the
gradient accumulation makes up for the number of GPUs). Prints the absolute loss difference at every
step logged by both runs, then the largest and a verdict; exits 1 when it exceeds the tolerance or the
runs share no step. bf16 runs differ by rounding: expect ~1e-3 there, ~1e-6 in fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_losses(path: str | Path) -> dict[int, float]:
    """{step: loss} of a metrics.jsonl (a resumed run's later records win)."""
    records = (json.loads(line) for line in Path(path).read_text().splitlines() if line.strip())
    return {r["step"]: r["loss"] for r in records}


def compare(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    """{step: |loss_a - loss_b|} over the steps both runs logged."""
    return {step: abs(a[step] - b[step]) for step in sorted(a.keys() & b.keys())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", help="metrics.jsonl of one run")
    ap.add_argument("second", help="metrics.jsonl of the other")
    ap.add_argument("--tolerance", type=float, default=1e-5, help="largest allowed absolute difference")
    args = ap.parse_args(argv)
    a, b = read_losses(args.first), read_losses(args.second)
    diffs = compare(a, b)
    if not diffs:
        print(f"no step in common ({len(a)} and {len(b)} steps logged): cannot compare")
        return 1
    print(f"{'step':>6}  {'first':>12}  {'second':>12}  {'abs diff':>10}")
    for step, diff in diffs.items():
        print(f"{step:>6}  {a[step]:>12.6f}  {b[step]:>12.6f}  {diff:>10.2e}")
    worst = max(diffs, key=diffs.get)
    same = diffs[worst] <= args.tolerance
    print(f"max abs difference {diffs[worst]:.2e} at step {worst} over {len(diffs)} steps: "
          f"{'MATCH' if same else 'MISMATCH'} (tolerance {args.tolerance:g})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
