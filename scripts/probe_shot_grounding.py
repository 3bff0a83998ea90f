"""What grounding shot by shot can choose among, on synthetic videos (validation seeds by default): for every shot
(timeviper.shots), the consensus span of 16 sampled answers about the event, read as a video of its own, its
consensus and its support (mean IoU with 16 sampled answers of the whole video, as timeviper.grounding.search scores
windows), the log-likelihood of the query's words as the answer to the caption prompt, and the model's belief that the
event happens there (ground_by_shots' score: 1 - P(the answer begins as NO_EVENT)). The summary gives the mIoU of the
shot chosen each way, and of the best shot (an oracle).

    python scripts/probe_shot_grounding.py --frames 256 --items 30 --out runs/probe_shots_256.json [--model DIR]
        [--split validation|test] [--seed-offset K]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from timeviper.cli import load_model
from timeviper.clips import encode
from timeviper.data.synth_source import sample_video
from timeviper.eval.metrics import parse_time_span, temporal_iou
from timeviper.eval.synth_sweep import sweep_items
from timeviper.grounding import clipped, consensus_span, support
from timeviper.prompts import CAPTION_PROMPT, NO_EVENT, grounding_prompt
from timeviper.shots import ShotConfig, ShotCuts

SAMPLES = 16


@torch.inference_mode()
def query_loglik(model, clip, text: str) -> float:
    """log P(text | clip, the caption prompt): the query's words as the answer, summed over its tokens."""
    cache, first = model.prefill_tokens(clip, CAPTION_PROMPT)  # logits of the first answer token [1, V]
    ids = torch.tensor(model.tokenizer.encode(text), device=first.device)[None]  # [1, T]
    logits = torch.cat([first[:, None], model.llm(input_ids=ids[:, :-1], cache=cache).logits], 1)  # [1, T, V]
    return logits.float().log_softmax(-1).gather(-1, ids[..., None]).sum().item()


def probe(model, spec, item) -> dict:
    cuts = ShotCuts()
    encoded = encode(model, sample_video(spec), on_chunk=lambda chunk: cuts.update(chunk.frames))
    times, instruction = encoded.times.tolist(), grounding_prompt(item["query"])
    no_event = model.tokenizer.encode(NO_EVENT)[0]

    def sampled(a: int, b: int, origin: float, seed: int, max_frames: int | None = None):
        """(spans of SAMPLES answers about frames [a, b) timed from `origin`, P(the answer begins as NO_EVENT))."""
        prefilled = model.prefill_tokens(encoded.clip(model, a, b, origin, max_frames=max_frames), instruction)
        p_none = prefilled[1].float().softmax(-1)[0, no_event].item()
        return [parse_time_span(t) for t in model.decode([prefilled] * SAMPLES, 24, temperature=1.0, seed=seed)], p_none

    prior, _ = sampled(0, len(times), 0.0, 0)
    shots, read = [], ShotConfig().max_frames  # frames of a shot read at most, as ground_by_shots reads them
    for i, (a, b) in enumerate(cuts.shots()):
        origin, length = times[a], times[b - 1] + 1 - times[a]
        spans, p_none = sampled(a, b, origin, 1 + i, read)
        span, consensus = consensus_span([clipped(s, length) for s in spans])
        span = span and (span[0] + origin, span[1] + origin)
        shots.append({"shot": [origin, origin + length], "span": span, "consensus": consensus,
                      "support": support(span, prior) if span else 0.0, "belief": 1 - p_none,
                      "query_loglik": query_loglik(model, encoded.clip(model, a, b, origin, max_frames=read),
                                                   item["query"])})
    return {"seed": item["seed"], "truth": [item["start"], item["end"]], "shots": shots}


def summary(rows: list[dict]) -> dict:
    """mIoU over `rows` of the shot chosen by each score (its consensus span), and of the best shot."""
    def iou(shot, row) -> float:
        return temporal_iou(shot["span"] and tuple(shot["span"]), tuple(row["truth"]))

    def chosen(score):
        return sum(iou(max(row["shots"], key=score), row) for row in rows) / len(rows)

    return {"n": len(rows), "best_shot": sum(max(iou(s, row) for s in row["shots"]) for row in rows) / len(rows),
            "consensus": chosen(lambda s: s["consensus"]),
            "consensus_plus_support": chosen(lambda s: s["consensus"] + s["support"]),
            "query_loglik": chosen(lambda s: s["query_loglik"]), "belief": chosen(lambda s: s["belief"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a TimeViper directory (default: the embedded model)")
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--items", type=int, default=30)
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model = load_model(argparse.Namespace(model=args.model, device="cpu", transv=None, logn_length="default"))
    rows = []
    for spec, item in tqdm(sweep_items("tvg", args.frames, args.items, args.seed_offset, 64, args.split)):
        rows.append(probe(model, spec, item))
        Path(args.out).write_text(json.dumps({"settings": vars(args), "rows": rows}))
    result = {"settings": vars(args), "summary": summary(rows), "rows": rows}
    Path(args.out).write_text(json.dumps(result))
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
