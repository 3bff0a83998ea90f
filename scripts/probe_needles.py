"""Needle questions by the colour of the needle scene's dotted background.

Asked (default): each needle video as made, with every other scene moved onto a background of the needle's colour
(`same colour`: timeviper.synth.same_colour_haystack, where only the dotted pattern tells the needle scene apart), or
with the needle scene's dotted background in another colour (`needle gray` and the like); validation seeds by default
(or --seeds), one thread of the CPU.

    python scripts/probe_needles.py --frames 1000 --items 40 --out runs/probe_needles_1000.json [--model DIR]
        [--split validation|test] [--seed-offset K | --seeds S,S,...] [--transv none] [--variants "as made,needle gray"]

Scored (--cells): the answers already in synth_sweep results files, every needle cell of at least --frames frames
(anywhere in the files, so earlier models' cells count too), by colour and length.

    python scripts/probe_needles.py --cells benchmarks/results/*.json --frames 10000 --out runs/needle_colours.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from timeviper.errors import ConfigError
from timeviper.eval.runner import parse_answer
from timeviper.eval.synth_sweep import predict, sweep_items, task_item
from timeviper.synth import same_colour_haystack
from timeviper.synth.world import BACKGROUND_COLORS, NEEDLE_PATTERN, background_name, background_parts


def needle_in(new_colour: str):
    """spec -> the same video with its needle scene's dotted background in `new_colour`."""
    def recolour(spec):
        background = background_name(NEEDLE_PATTERN, new_colour)
        return replace(spec, scenes=tuple(replace(s, background=background) if s.is_needle else s for s in spec.scenes))
    return recolour


VARIANTS = {"as made": lambda spec: spec, "same colour": same_colour_haystack,
            **{f"needle {c}": needle_in(c) for c in BACKGROUND_COLORS}}


def colour(spec) -> str:
    return background_parts(spec.needle.background)[1]


def summary(rows: list[dict], columns: list[str]) -> dict:
    """{colour: {videos, column: right answers}} and the same over all colours ("all")."""
    out = defaultdict(lambda: {"videos": 0, **dict.fromkeys(columns, 0)})
    for row in rows:
        for key in (row["colour"], "all"):
            out[key]["videos"] += 1
            for column in columns:
                out[key][column] += row[column]
    return dict(out)


def needle_cells(node):
    """Every needle cell with answers inside a results file's JSON, however deep."""
    if isinstance(node, dict):
        if node.get("task") == "needle" and "responses" in node:
            yield node
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            yield from needle_cells(child)


def scored_rows(paths: list[str], shortest: int) -> list[dict]:
    """One row per answer of the needle cells of at least `shortest` frames in `paths`."""
    rows = []
    for path in paths:
        for cell in needle_cells(json.loads(Path(path).read_text())):
            if cell["frames"] < shortest:
                continue
            for seed, raw in zip(cell["seeds"], cell["responses"]):
                spec, item = task_item("needle", seed, cell["frames"], 64)
                rows.append({"colour": colour(spec), "frames": cell["frames"],
                             "right": parse_answer("mcq", raw).get("answer") == item["answer"]})
    return rows


def seed_list(text: str) -> list[int]:
    return [int(seed) for seed in text.split(",")]


def asked_rows(args, variants: list[str]) -> list[dict]:
    from timeviper.cli import load_model

    if args.seeds:
        items = [task_item("needle", seed, args.frames, 64) for seed in args.seeds]
    else:
        items = sweep_items("needle", args.frames, args.items, args.seed_offset, 64, args.split)
    model = load_model(argparse.Namespace(model=args.model, device="cpu", transv=args.transv, logn_length="default"))
    rows = []
    for spec, item in tqdm(items):
        row = {"seed": spec.seed, "colour": colour(spec), "seconds": spec.needle.end - spec.needle.start}
        for variant in variants:
            answer = predict(model, VARIANTS[variant](spec), item, None, False, False, False).get("answer")
            row[variant] = answer == item["answer"]
        rows.append(row)
        Path(args.out).write_text(json.dumps({"settings": vars(args), "rows": rows}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a TimeViper directory (default: the embedded model)")
    parser.add_argument("--frames", type=int, default=1000, help="video length (with --cells: the shortest scored)")
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--seeds", type=seed_list,
                        help="comma list of seeds to ask about instead (videos that hold a needle)")
    parser.add_argument("--transv", default=None, help="a TransV spec, or none (default: the model's own)")
    parser.add_argument("--variants", default="as made,same colour", help=f"comma list of: {', '.join(VARIANTS)}")
    parser.add_argument("--cells", nargs="+", metavar="RESULTS", help="score these results files' answers instead")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"unknown variants {unknown}; expected some of: {', '.join(VARIANTS)}")
    try:
        if args.cells:
            rows = scored_rows(args.cells, args.frames)
            by_length = {frames: summary([r for r in rows if r["frames"] == frames], ["right"])
                         for frames in sorted({r["frames"] for r in rows})}
            result = {"settings": vars(args), "summary": summary(rows, ["right"]), "by_length": by_length}
        else:
            rows = asked_rows(args, variants)
            result = {"settings": vars(args), "summary": summary(rows, variants), "rows": rows}
    except (ConfigError, OSError, json.JSONDecodeError) as e:  # a seed without a needle, an unreadable results file
        parser.error(str(e))
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
