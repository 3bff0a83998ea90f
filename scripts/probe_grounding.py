"""What timeviper.grounding.search chooses among, on synthetic videos (validation seeds by default, for choosing its
settings): the mIoU of its answer under several prior weights, of the best of its windows (an oracle), and of the
whole video's answers: the greedy one, the minimum-Bayes-risk choice of the sampled ones, the best of them.

    python scripts/probe_grounding.py --frames 64 --items 100 --out runs/probe_grounding_64.json [--model DIR]
        [--split validation|test] [--seed-offset K] [--window S --stride S --samples 16]

OUT holds the settings, every video's spans and window scores (`rows`, rewritten after each video) and the table
printed at the end (`summary`); any prior weight can be scored again from the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from timeviper.cli import load_model
from timeviper.data.synth_source import sample_video
from timeviper.eval import runner
from timeviper.eval.metrics import temporal_iou
from timeviper.eval.synth_sweep import sweep_items
from timeviper.grounding import SearchConfig, consensus_span, search

PRIOR_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)


def probe(model, spec, item, config: SearchConfig) -> dict:
    video = sample_video(spec)
    found = search(model, video, item["query"], config)
    greedy = runner.predict(model, video, item)
    return {"seed": item["seed"], "truth": [item["start"], item["end"]], "greedy": [greedy["start"], greedy["end"]],
            "prior": found.prior, "candidates": [asdict(c) for c in found.candidates]}


def as_span(value) -> tuple[float, float] | None:
    return None if value is None or None in value else tuple(value)


def summary(rows: list[dict]) -> dict:
    """mIoU over `rows` of each way of choosing a span."""
    def miou(pick) -> float:  # pick(row) -> a span or None
        return sum(temporal_iou(pick(row), as_span(row["truth"])) for row in rows) / len(rows)

    def top(key):  # the span of the row's window of highest key(window, row)
        return lambda row: max(((key(c, row), (c["start"], c["end"])) for c in row["candidates"]), default=(0, None))[1]

    def iou(c, row) -> float:
        return temporal_iou((c["start"], c["end"]), as_span(row["truth"]))

    return {"greedy": miou(lambda row: as_span(row["greedy"])),
            "prior_mbr": miou(lambda row: consensus_span([as_span(p) for p in row["prior"]])[0]),
            "prior_best": miou(lambda row: max((as_span(p) for p in row["prior"]),
                                               key=lambda p: temporal_iou(p, as_span(row["truth"])))),
            "best_window": miou(top(iou)),
            "support_only": miou(top(lambda c, row: c["support"])),
            **{f"search_weight_{w:g}": miou(top(lambda c, row, w=w: c["consensus"] + w * c["support"]))
               for w in PRIOR_WEIGHTS}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a TimeViper directory (default: the embedded model)")
    parser.add_argument("--frames", type=int, default=64, help="video length in seconds")
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--window", type=float, help="seconds (default: a quarter of the video, at least 16)")
    parser.add_argument("--stride", type=float, help="seconds (default: a quarter of a window)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    config = SearchConfig(args.window, args.stride, args.samples)
    model = load_model(argparse.Namespace(model=args.model, device=args.device, logn_length="default", transv=None))
    out, rows = Path(args.out), []
    settings = {"model": args.model, "frames": args.frames, "split": args.split, "seed_offset": args.seed_offset,
                "search": asdict(config)}
    out.parent.mkdir(parents=True, exist_ok=True)
    for spec, item in tqdm(sweep_items("tvg", args.frames, args.items, args.seed_offset, 64, args.split),
                           desc=f"tvg {args.frames} s", file=sys.stderr):
        rows.append(probe(model, spec, item, config))
        runner.write_atomic(out, json.dumps({"settings": settings, "rows": rows}) + "\n")
    table = summary(rows)
    runner.write_atomic(out, json.dumps({"settings": settings, "summary": table, "rows": rows}) + "\n")
    for name, value in table.items():
        print(f"{name:<22} {value:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
