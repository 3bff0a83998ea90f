"""Needle questions by the needle's background colour, in the video as made and with every other scene moved onto
a background of the needle's colour (timeviper.synth.same_colour_haystack), where only the dotted pattern tells the
needle scene apart. Validation seeds by default; one thread of the CPU.

    python scripts/probe_needles.py --frames 1000 --items 40 --out runs/probe_needles_1000.json [--model DIR]
        [--split validation|test] [--seed-offset K]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from timeviper.cli import load_model
from timeviper.eval.synth_sweep import predict, sweep_items
from timeviper.synth import same_colour_haystack

HAYSTACKS = {"as made": lambda spec: spec, "same colour": same_colour_haystack}


def summary(rows: list[dict]) -> dict:
    """{colour: {videos, haystack: right answers}} and the same over all colours."""
    out = defaultdict(lambda: {"videos": 0, **dict.fromkeys(HAYSTACKS, 0)})
    for row in rows:
        for key in (row["needle"].split()[-1], "all"):
            out[key]["videos"] += 1
            for haystack in HAYSTACKS:
                out[key][haystack] += row[haystack]
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a TimeViper directory (default: the embedded model)")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model = load_model(argparse.Namespace(model=args.model, device="cpu", transv=None, logn_length="default"))
    rows = []
    for spec, item in tqdm(sweep_items("needle", args.frames, args.items, args.seed_offset, 64, args.split)):
        row = {"seed": spec.seed, "needle": spec.needle.background, "seconds": spec.needle.end - spec.needle.start}
        for haystack, make in HAYSTACKS.items():
            answer = predict(model, make(spec), item, None, False, False, False).get("answer")
            row[haystack] = answer == item["answer"]
        rows.append(row)
        Path(args.out).write_text(json.dumps({"settings": vars(args), "rows": rows}))
    result = {"settings": vars(args), "summary": summary(rows), "rows": rows}
    Path(args.out).write_text(json.dumps(result))
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
