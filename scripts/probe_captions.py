"""Where captions lose scene-F1: the order of scenes, the order of objects within a scene, or what they hold.

    python scripts/probe_captions.py [--results FILE]   # default: the shipped model's test cells

Needs no model: it reads the captions a synth_sweep results file holds and scores each cell three ways, from strict
to lenient: scene-F1 as the benchmark scores it (scenes matched in order, each with its objects in order), then with
the scenes' order forgiven (a multiset of scenes), then with the objects' order within a scene forgiven too. What
the last leaves short of 1 is content: scenes or objects missed, added or named wrong.
"""

import argparse
import json
from collections import Counter
from pathlib import Path

from timeviper.eval.metrics import caption_scene_f1
from timeviper.synth import make_item
from timeviper.synth.tasks import parse_caption

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "embedded_quality.json"


def unordered_f1(pred: list, ref: list) -> float:
    """F1 of two lists matched as multisets."""
    if not pred and not ref:
        return 1.0
    return 2 * sum((Counter(pred) & Counter(ref)).values()) / (len(pred) + len(ref))


def order_forgiven(pred_caption: str, ref_caption: str) -> tuple[float, float]:
    """(scene-F1 with the scenes' order forgiven, with the objects' order within each scene forgiven too)."""
    pred, ref = parse_caption(pred_caption), parse_caption(ref_caption)
    as_sets = [[(background, tuple(sorted(actors))) for background, actors in scenes] for scenes in (pred, ref)]
    return unordered_f1(pred, ref), unordered_f1(*as_sets)


def caption_cells(results: dict) -> list[dict]:
    """Each caption cell's mean scene-F1 three ways."""
    size = results["settings"]["size"]
    rows = []
    for cell in results["cells"]:
        if cell["task"] != "caption":
            continue
        refs = [make_item("caption", seed, cell["frames"], size)[1]["caption"] for seed in cell["seeds"]]
        pairs = list(zip(cell["responses"], refs))
        scenes, objects = zip(*(order_forgiven(p, r) for p, r in pairs))
        rows.append({"frames": cell["frames"], "transv": cell["transv"], "n": len(pairs),
                     "scene_f1": sum(caption_scene_f1(p, r) for p, r in pairs) / len(pairs),
                     "scene_order_forgiven": sum(scenes) / len(pairs),
                     "object_order_forgiven": sum(objects) / len(pairs)})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS, help="a synth_sweep results file")
    args = p.parse_args()
    print(f"{'frames':>6}  {'transv':8} {'n':>4}  scene-F1  scenes' order forgiven  objects' order too")
    for r in caption_cells(json.loads(args.results.read_text())):
        print(f"{r['frames']:6d}  {r['transv']:8} {r['n']:4d}  {r['scene_f1']:8.3f}  {r['scene_order_forgiven']:22.3f}  "
              f"{r['object_order_forgiven']:18.3f}")


if __name__ == "__main__":
    main()
