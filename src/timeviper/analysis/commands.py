"""`timeviper analyze blocking|redundancy|attention --out DIR`: JSON data and PNG figures of the analyses on
synthetic items."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from timeviper.eval.runner import MAX_NEW_TOKENS, write_atomic
from timeviper.eval.synth_sweep import parse_list, sweep_items
from timeviper.errors import ConfigError
from timeviper.synth.world import check_int
from timeviper.transv import parse_transv

TASKS = tuple(MAX_NEW_TOKENS)  # mcq, tvg, caption
MATRIX_BYTES = 16 * 2**30  # explicit mixing: a few [heads, T, T] float32 tensors alive at once must fit in this
TEXT_TOKENS = 512  # a bound on the prompt's and the answer's text tokens
FRAME_SIZE = 64  # side of the rendered synthetic frames, in pixels (synth_sweep's default)


def load(args):
    """The model (TransV off: the backbone is analysed) and its layers' kinds."""
    import argparse

    from timeviper.cli import load_model

    model = load_model(argparse.Namespace(model=args.model, device=args.device, transv="none",
                                          logn_length="default"))
    return model, dict(enumerate(model.config.llm.mixers))


def check_explicit_size(model, frames: int, kept_maps: int = 0) -> None:
    """Refuse videos whose explicit mixing matrices would not fit in MATRIX_BYTES: a layer's work takes a few
    [heads, T, T] float32 tensors, and `kept_maps` [T, T] maps are kept besides."""
    blocks = [model.llm.layers[i] for i in model.config.llm.mixing_layers]
    heads = max(b.mixer.heads if b.kind == "mamba" else b.mixer.num_heads for b in blocks)
    square = 4 * (4 * heads + kept_maps)  # bytes per entry of a [T, T]
    tokens = frames * model.config.tokens_per_frame + TEXT_TOKENS
    if square * tokens**2 > MATRIX_BYTES:
        most = int(((MATRIX_BYTES / square) ** 0.5 - TEXT_TOKENS) // model.config.tokens_per_frame)
        raise ConfigError(f"--frames {frames}: this analysis holds [T, T] mixing matrices of {tokens:,} tokens "
                          f"(~{square * tokens**2 / 2**30:.0f} GiB); use at most {most} frames")


def settings_of(args, **more) -> dict:
    return {"model": args.model and str(Path(args.model).resolve()), "frames": args.frames, "split": args.split,
            "seed_offset": args.seed_offset, **more}


def report(stem: Path, settings: dict, results: dict, kinds: dict[int, str], plot, baseline: str, cell_name) -> None:
    """STEM.json (settings and results), STEM.png (`plot`), and each task's cells printed."""
    write_atomic(stem.with_suffix(".json"), json.dumps({"settings": settings, "results": results}, indent=1) + "\n")
    plot(results, kinds, stem.with_suffix(".png"))
    for task, r in results.items():
        print(f"{task}: {baseline} {r['baseline']}")
        for c in r["cells"]:
            print(f"  {cell_name(c)} layer {c['layer']:>2} ({kinds[c['layer']]}): {c['value']:.3f}")


def parse_tasks(args) -> list[str]:
    tasks = parse_list(args.tasks, "--tasks")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"unknown task {unknown[0]!r} in --tasks; expected some of {', '.join(TASKS)}")
    check_int("--items", args.items, 1)
    return tasks


def parse_drops(spec: str | None, cfg) -> dict[int, float]:
    """{layer: share} of a --drop spec: TransV's uniform drops without transfer, e.g. td_2_0.5."""
    if spec is None:
        return {}
    specs = parse_transv(spec, cfg)
    wrong = [str(s) for s in specs if s.kind != "td"]
    if wrong:
        raise ConfigError(f"--drop takes even drops without transfer (td_LAYER_P, '-' between several), got {wrong[0]}")
    return {s.layer: s.p for s in specs}


def run_blocking(args, out: Path) -> None:
    from tqdm import tqdm

    from timeviper.analysis.blocking import PAIRS, block_items, plot

    tasks = parse_tasks(args)
    model, kinds = load(args)
    check_explicit_size(model, args.frames)
    drops = parse_drops(args.drop, model.config.llm)
    mixers = len(model.config.llm.mixing_layers)
    results = {}
    with tqdm(total=len(tasks) * args.items * (1 + len(PAIRS) * mixers), unit="answer", file=sys.stderr) as bar:
        for task in tasks:
            bar.set_description(task)
            items = sweep_items(task, args.frames, args.items, args.seed_offset, FRAME_SIZE, args.split)
            results[task] = block_items(model, task, items, args.window, on_answer=bar.update, drops=drops)
    report(out / "blocking", settings_of(args, items=args.items, window=args.window, drop=args.drop), results,
           kinds, plot, "unblocked", lambda c: f"{c['pair']} from")


def run_redundancy(args, out: Path) -> None:
    import argparse

    from tqdm import tqdm

    from timeviper.analysis.redundancy import plot, specs, sweep

    tasks = parse_tasks(args)
    rates = [float(r) for r in parse_list(args.rates, "--rates")]
    model, kinds = load(args)
    cells = specs(kinds, rates, parse_list(args.strategies, "--strategies"))
    cell_args = argparse.Namespace(items=args.items, seed_offset=args.seed_offset, size=FRAME_SIZE, split=args.split,
                                   frames=args.frames, max_frames=None, tvg_search=False, tvg_shots=False,
                                   caption_shots=False)
    results = {}
    with tqdm(total=len(tasks) * args.items * (1 + len(cells)), unit="answer", file=sys.stderr) as bar:
        for task in tasks:
            bar.set_description(task)
            results[task] = sweep(model, task, cells, cell_args, bar)
    report(out / "redundancy", settings_of(args, items=args.items, rates=rates, strategies=args.strategies),
           results, kinds, plot, "all kept", lambda c: f"{c['strategy']} p={c['p']:g} at")


def run_attention(args, out: Path) -> None:
    from timeviper.analysis.attention import attention_maps, evidence_received, plot_maps, plot_received, summarize
    from timeviper.analysis.sequence import GROUPS
    from timeviper.data.synth_source import sample_video, task_prompt
    from timeviper.sampling import frames_within

    if args.tasks not in TASKS:
        raise ConfigError(f"analyze attention takes one task of {', '.join(TASKS)}, got {args.tasks!r}")
    model, kinds = load(args)
    check_explicit_size(model, args.frames, kept_maps=len(model.config.llm.mixing_layers))
    drops = parse_drops(args.drop, model.config.llm)
    (spec, item), = sweep_items(args.tasks, args.frames, 1, args.seed_offset, FRAME_SIZE, args.split)
    video = sample_video(spec)
    answer, groups, maps = attention_maps(model, video.frames, video.timestamps, task_prompt(item),
                                          MAX_NEW_TOKENS[args.tasks], drops)
    summary = {layer: summarize(*m) for layer, m in maps.items()}
    evidence = frames_within(video.timestamps, item.get("evidence", ())).repeat_interleave(
        model.config.tokens_per_frame)  # bool [V]
    share = round(float(evidence.float().mean()), 4) if evidence.any() else None
    for layer, (m, g) in maps.items():
        summary[layer]["evidence"] = None if share is None else evidence_received(m, g, evidence)
    data = {"settings": settings_of(args, task=args.tasks, drop=args.drop), "item": item, "answer": answer,
            "tokens": {name: int((groups == g).sum()) for g, name in enumerate(GROUPS)}, "evidence_share": share,
            "layers": [{"layer": l, "kind": kinds[l], **s} for l, s in summary.items()]}
    write_atomic(out / "attention.json", json.dumps(data, indent=1) + "\n")
    plot_maps(maps, kinds, out / "attention_maps.png")
    plot_received(summary, kinds, out / "attention_received.png", share)
    truth = {"mcq": lambda: item["answer"], "tvg": lambda: f"{item['start']:g} - {item['end']:g} seconds",
             "caption": lambda: item["caption"]}[args.tasks]()
    print(f"answer: {answer!r} (truth: {truth!r})")
    if share is not None:
        print(f"evidence: {share:.3f} of the video's tokens")
    for l, s in summary.items():
        on = "" if s.get("evidence") is None else f", on evidence {s['evidence']:.3f}"
        print(f"  layer {l:>2} ({kinds[l]}): sink {s['sink']:.3f}, received {s['received']}{on}")


def run_analysis(args) -> None:
    check_int("--frames", args.frames, 1)
    check_int("--seed-offset", args.seed_offset, 0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    {"blocking": run_blocking, "redundancy": run_redundancy, "attention": run_attention}[args.analysis](args, out)
    print(f"wrote {out}")
