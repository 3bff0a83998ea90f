"""Where the attention-guided TransV layer looks, and whether looking elsewhere would change the answer.

    python scripts/probe_selection.py mass [--task tvg|needle] [--frames 64] [--items 40] [--model DIR]
    python scripts/probe_selection.py swap [--frames 64] [--items 100] [--model DIR]

An attention-guided layer keeps the vision tokens that the instruction's last token attends to most (the mean over
heads of its softmax over the vision tokens still there: the selection's scores). `mass` asks test-split questions
and prints, per item and on average, the share of those scores on the evidence (grounding: the event's frames;
needle: the needle scene) against the evidence's share of the frames, and the share on the video's first quarter.
`swap` grounds events with the model's own selection, with an oracle one that keeps the event's tokens first, and
with a random one, and prints the mIoU of each.
"""

import argparse
import statistics
from contextlib import contextmanager

import torch

import timeviper.engine as engine
from timeviper import TimeViper
from timeviper.data.synth_source import sample_video
from timeviper.eval import runner
from timeviper.eval.metrics import score
from timeviper.eval.synth_sweep import sweep_items


@contextmanager
def selection_probe(tokens_per_frame: int, rescore=None):
    """Record each attention-guided selection's scores [n] and frame index [n] of the vision tokens it chooses
    among; `rescore(scores, frames)`, if given, replaces the scores the selection acts on."""
    seen, select, drop = {}, engine._select_and_transfer, engine.attention_drop

    def recording_select(llm, module, layer, kept, instruction):
        first = max(int(c.positions.max()) for c in kept if not c.is_vision) + 1  # the first vision token
        positions = torch.cat([c.positions[0] for c in kept if c.is_vision])
        seen["frames"] = torch.div(positions - first, tokens_per_frame, rounding_mode="floor")
        return select(llm, module, layer, kept, instruction)

    def recording_drop(scores, p, sample=None):
        seen["scores"] = scores.detach().float().clone()
        return drop(scores if rescore is None else rescore(scores, seen["frames"]), p, sample)

    engine._select_and_transfer, engine.attention_drop = recording_select, recording_drop
    try:
        yield seen
    finally:
        engine._select_and_transfer, engine.attention_drop = select, drop


def evidence(spec, item) -> tuple[int, int]:
    """[start, end) frames that answer the item: the event's, or the needle scene's."""
    if item["task"] == "tvg":
        return int(item["start"]), int(item["end"])
    return spec.needle.start, spec.needle.end


def mass(model, args) -> None:
    rows = []
    with selection_probe(model.config.tokens_per_frame) as seen:
        for spec, item in sweep_items(args.task, args.frames, args.items, 0, 64):
            record = runner.predict(model, sample_video(spec, None, "uniform"), item)
            start, end = evidence(spec, item)
            frames, scores = seen["frames"], seen["scores"] / seen["scores"].sum()
            row = {"on_evidence": float(scores[(frames >= start) & (frames < end)].sum()),
                   "evidence_share": (end - start) / args.frames,
                   "first_quarter": float(scores[frames < args.frames // 4].sum())}
            rows.append(row)
            print(f"seed {item['seed']}: evidence {start}-{end} s, answer {record['raw']!r}, "
                  + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    print("mean:", ", ".join(f"{k} {statistics.mean(r[k] for r in rows):.3f}" for k in rows[0]))


def swap(model, args) -> None:
    items = sweep_items("tvg", args.frames, args.items, 0, 64)
    span = {}
    choices = {
        "model": None,
        "oracle": lambda scores, frames: ((frames >= span["start"]) & (frames < span["end"])).float()
        + 1e-3 * torch.rand_like(scores),
        "random": lambda scores, frames: torch.rand_like(scores),
    }
    for name, rescore in choices.items():
        records = []
        with selection_probe(model.config.tokens_per_frame, rescore):
            for spec, item in items:
                span["start"], span["end"] = evidence(spec, item)
                records.append(runner.predict(model, sample_video(spec, None, "uniform"), item))
        print(f"{name} selection: mIoU {score('tvg', records, [item for _, item in items])['miou']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("probe", choices=("mass", "swap"))
    parser.add_argument("--model", help="a TimeViper directory (default: the embedded model)")
    parser.add_argument("--task", choices=("tvg", "needle"), default="tvg")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--items", type=int, default=40)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = TimeViper.from_pretrained(args.model).eval()
    if not any(m.spec.strategy == "attention" for m in model.transv.values()):
        parser.error(f"the model's TransV ({model.config.transv}) has no attention-guided layer")
    (mass if args.probe == "mass" else swap)(model, args)


if __name__ == "__main__":
    main()
