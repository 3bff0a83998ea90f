"""Draw the figures of README.md and docs/ from the synthetic world and the committed benchmark results.

    python docs/figures.py        # writes docs/figures/*.png
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from timeviper.eval.synth_sweep import plot as plot_sweep
from timeviper.model import TimeViperConfig
from timeviper.synth import make_item, render_frames

HERE = Path(__file__).parent
RESULTS = HERE.parent / "benchmarks" / "results"
SEED, FRAMES = 1_100_002, 150  # the demo's video: a test-split seed with a needle scene


def synthetic_world(path: Path) -> None:
    """One frame per scene of a synthetic test video (the needle marked) above its MCQ item."""
    spec, item = make_item("mcq", SEED, FRAMES, 128, kind="needle")
    scenes = spec.scenes
    fig = Figure(figsize=(1.6 * len(scenes), 2.6), layout="constrained")
    for ax, scene in zip(fig.subplots(1, len(scenes)), scenes):
        shown = scene.actors[0] if scene.actors else scene  # a moment with an object on screen, if any
        middle = (shown.start + shown.end) // 2
        ax.imshow(render_frames(spec, middle, middle + 1, 128)[0])
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(f"{scene.start}-{scene.end} s (at {middle} s)" + ("\nneedle" if scene.is_needle else "\n"), fontsize=8,
                     color="crimson" if scene.is_needle else "black")
    options = "   ".join(f"({k}) {o}" for k, o in zip("ABCD", item["options"]))
    fig.suptitle(f"synthetic test video {SEED}, {FRAMES} s at 1 fps: {item['question']}\n{options}   "
                 f"answer: {item['answer']}", fontsize=8)
    fig.savefig(path, dpi=110)


def efficiency(path: Path) -> None:
    """Decode speed of the hybrid against the Transformer, and TransV's effect on reading 10,000 frames."""
    llm = json.loads((RESULTS / "llm_throughput.json").read_text())
    capacity = json.loads((RESULTS / "capacity_tokens.json").read_text())
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    decode, transv = fig.subplots(1, 2)
    rows = [r for r in llm["results"] if r["impl"] == "ours" and r["phase"] == "decode"]
    cases = sorted({(r["batch"], r["context"]) for r in rows})
    width = 0.38
    for shift, (model, label) in zip((-width / 2, width / 2), (("nano", "Nano-9B-v2 (hybrid)"),
                                                              ("qwen3", "Qwen3-8B (Transformer)"))):
        speed = {(r["batch"], r["context"]): r.get("tokens_per_s") for r in rows if r["model"] == model}
        heights = [speed.get(case) or 0 for case in cases]
        bars = decode.bar(np.arange(len(cases)) + shift, heights, width, label=label)
        for bar, h in zip(bars, heights):
            decode.annotate("out of\nmemory" if not h else f"{h:.0f}", (bar.get_x() + bar.get_width() / 2, h),
                            ha="center", va="bottom", fontsize=7)
    decode.set_xticks(range(len(cases)), [f"batch {b}\n{c // 1024}k context" for b, c in cases], fontsize=8)
    decode.set(ylabel="generated tokens / s", title=f"Decoding through TimeViper's engine\n({llm['device']}, bf16, random weights)")
    decode.legend(fontsize=8)
    runs = [r for r in capacity["results"] if r["frames"] == 10_000]
    names = [r["transv"] for r in runs]
    transv.barh(names, [r["llm_s"] for r in runs], color="tab:green")
    for i, r in enumerate(runs):
        transv.annotate(f" {r['llm_s']:.1f} s, {r['kv_tokens']:,} KV tokens", (r["llm_s"], i), va="center", fontsize=8)
    transv.set(xlabel="LLM prefill, seconds", xlim=(0, 1.7 * max(r["llm_s"] for r in runs)),
               title="Prefill of 10,000 frames (160k vision tokens)\nby TransV setting, Nano-9B-v2 shape")
    fig.savefig(path, dpi=110)


def embedded_quality(path: Path) -> None:
    """The shipped embedded model's test scores against video length, TransV on and off; grounding and captions also
    shot by shot."""
    shots = [c for name in ("embedded_caption_shots.json", "embedded_grounding_shots.json")
             for c in json.loads((RESULTS / name).read_text())["cells"]]
    plot_sweep(json.loads((RESULTS / "embedded_quality.json").read_text())["cells"]
               + [dict(c, transv=f"{c['transv']}, shot by shot") for c in shots], path,
               TimeViperConfig.from_pretrained().trained_frames)


def embedded_logn(path: Path) -> None:
    """Needle accuracy by video length for each logn attention length (TransV as trained)."""
    cells = json.loads((RESULTS / "embedded_logn.json").read_text())["cells"]
    needles = [dict(c, transv=f"logn {c['logn_length'] or 'off'}") for c in cells
               if c["task"] == "needle" and c["transv"] == "default"]
    plot_sweep(needles, path, TimeViperConfig.from_pretrained().trained_frames)


if __name__ == "__main__":
    out = HERE / "figures"
    out.mkdir(exist_ok=True)
    synthetic_world(out / "synthetic_world.png")
    efficiency(out / "efficiency.png")
    embedded_quality(out / "embedded_quality.png")
    embedded_logn(out / "embedded_logn.png")
    print(f"wrote {out}")
