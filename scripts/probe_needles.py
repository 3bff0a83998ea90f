"""Needle questions by the colour of the needle scene's dotted background.

Asked (default): each needle video in the video as made and with every other scene moved onto a background of the
needle's colour (timeviper.synth.same_colour_haystack), where only the dotted pattern tells the needle scene apart;
validation seeds by default, one thread of the CPU.

    python scripts/probe_needles.py --frames 1000 --items 40 --out runs/probe_needles_1000.json [--model DIR]
        [--split validation|test] [--seed-offset K]

Scored (--cells): the answers already in synth_sweep results files, every needle cell of at least --frames frames
(anywhere in the files, so earlier models' cells count too), by colour and length.

    python scripts/probe_needles.py --cells benchmarks/results/*.json --frames 10000 --out runs/needle_colours.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from timeviper.eval.runner import parse_answer
from timeviper.eval.synth_sweep import predict, sweep_items, task_item

HAYSTACKS = ("as made", "same colour")


def colour(spec) -> str:
    return spec.needle.background.split()[-1]


def summary(rows: list[dict], columns=HAYSTACKS) -> dict:
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


def asked_rows(args) -> list[dict]:
    from timeviper.cli import load_model
    from timeviper.synth import same_colour_haystack

    model = load_model(argparse.Namespace(model=args.model, device="cpu", transv=None, logn_length="default"))
    rows = []
    for spec, item in tqdm(sweep_items("needle", args.frames, args.items, args.seed_offset, 64, args.split)):
        row = {"seed": spec.seed, "colour": colour(spec), "seconds": spec.needle.end - spec.needle.start}
        for haystack, video in zip(HAYSTACKS, (spec, same_colour_haystack(spec))):
            row[haystack] = predict(model, video, item, None, False, False, False).get("answer") == item["answer"]
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
    parser.add_argument("--cells", nargs="+", metavar="RESULTS", help="score these results files' answers instead")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.cells:
        rows = scored_rows(args.cells, args.frames)
        by_length = {frames: summary([r for r in rows if r["frames"] == frames], ("right",))
                     for frames in sorted({r["frames"] for r in rows})}
        result = {"settings": vars(args), "summary": summary(rows, ("right",)), "by_length": by_length}
    else:
        rows = asked_rows(args)
        result = {"settings": vars(args), "summary": summary(rows), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
