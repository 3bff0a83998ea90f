"""Quality on the synthetic world's test (or validation) split across video lengths and TransV settings; no video
files.

    python -m timeviper.eval.synth_sweep --tasks mcq,tvg,needle --frames 256,2000,10000 --items 50 \
        --transv default,none,uni_7_0.5 --out runs/sweep.json --plot runs/sweep.png [--model DIR] [--max-frames 1024] \
        [--logn-length none|N] [--video-window all|N] [--time-past-period wrap|none] [--instruction-before-video on|off]

A cell (transv, task, length) asks the model about the first --items usable seeds of --split from its start +
--seed-offset (test, from 1,100,000, for the numbers reported; validation, from 1,000,000, for choosing settings
before they are measured on test seeds; needle: mcq questions about the needle scene, so seeds whose video has
none are passed over), the same seeds under every TransV setting, so settings compare paired. Frames are rendered
in memory at 1 fps, exactly those load_video would decode from the item's MP4, with their timestamps
(sample_video). `default` is the model's TransV as loaded, `none` turns it off, anything else is a spec for
TimeViper.set_transv; the model is loaded afresh for each setting, so trained TransV weights are never lost by
switching.

OUT is JSON, rewritten after each cell and every half minute within one, so a sweep stopped mid-cell keeps the
items it answered (such a cell's `n` is below the settings' `items`), and a rerun with the same OUT skips the cells
it holds and finishes the one it stopped in (its settings must match; a larger --items asks each held cell only
the items it lacks, the next seeds, and grows it, to narrow its interval):

    {"settings": {"model", "items", "seed_offset", "max_frames", "size"[, "logn_length"][, "video_window"]
                  [, "time_past_period"][, "split"][, "tvg_search"][, "tvg_shots"][, "caption_shots"]
                  [, "instruction_before_video"]},
     "cells": [{"transv", "spec", "task", "frames", "n", "metrics", "seconds", "seconds_per_item",
                "frames_per_item", "seeds", "responses"}, ...]}

`spec` is the TransV spec in effect, `metrics` what timeviper.eval.metrics.score returns, `seconds` the
model's time (runner.predict's, rendering excluded), `frames_per_item` the frames it read per item,
`responses` the model's raw answers (in the order of `seeds`).

`--workers N` answers a cell's items in N processes, each with a model of its own on the same device, for a GPU
that one small model leaves mostly idle (on a CPU, one process using every core does about as well: on 2 cores, 8
items of 256 s took 12.7 s in one process and 17.1 s in two, ~6 s of it starting them). The answers are those of one
process; `seconds` is then model time measured while the workers share the device.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from timeviper.cli import long_video_args
from timeviper.data.synth_source import sample_video
from timeviper.errors import ConfigError, TimeViperError
from timeviper.eval import runner
from timeviper.eval.metrics import accuracy_interval, score
from timeviper.grounding import SearchConfig
from timeviper.model import TimeViperConfig
from timeviper.shots import ShotConfig
from timeviper.synth import make_item, make_video, split_range
from timeviper.synth.world import MIN_SIZE, NEEDLE_MIN_FRAMES, check_int
from timeviper.transv import parse_transv

HEADLINE = {"mcq": "accuracy", "needle": "accuracy", "tvg": "miou", "caption": "scene_f1"}  # task -> metric
SAVE_EVERY_S = 30.0  # a cell's answers so far are written to OUT at least this often


def parse_list(text: str, flag: str) -> list[str]:
    values = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not values:
        raise ConfigError(f"{flag} is empty")
    return values


def parse_grid(args) -> tuple[list[str], list[str], list[int]]:
    """(transv settings, tasks, lengths) of the arguments, checked."""
    tasks = parse_list(args.tasks, "--tasks")
    unknown = [t for t in tasks if t not in HEADLINE]
    if unknown:
        raise ConfigError(f"unknown task {unknown[0]!r} in --tasks; expected some of {', '.join(HEADLINE)}")
    words = parse_list(args.frames, "--frames")
    if not all(w.isdecimal() and int(w) > 0 for w in words):
        raise ConfigError(f"--frames must be positive whole seconds, comma separated; got {args.frames!r}")
    lengths = [int(w) for w in words]
    if "needle" in tasks and min(lengths) < NEEDLE_MIN_FRAMES:
        raise ConfigError(f"needle cells need videos of at least {NEEDLE_MIN_FRAMES} frames (shorter ones have "
                          f"no needle scene); got {min(lengths)}")
    transv = parse_list(args.transv, "--transv")
    for spec in transv:
        if spec != "default":
            parse_transv(spec)
    for flag, value, least in (("--items", args.items, 1), ("--seed-offset", args.seed_offset, 0),
                               ("--size", args.size, MIN_SIZE), ("--workers", args.workers, 1)):
        check_int(flag, value, least)
    if args.tvg_search and args.tvg_shots:
        raise ConfigError("--tvg-search and --tvg-shots are two ways to ground: pick one")
    if args.max_frames is not None:
        check_int("--max-frames", args.max_frames, 1)
        if args.tvg_search or args.tvg_shots or args.caption_shots:
            flag = "--tvg-search" if args.tvg_search else "--tvg-shots" if args.tvg_shots else "--caption-shots"
            raise ConfigError(f"{flag} reads every frame (its windows and shots are seconds of video): "
                              "drop --max-frames")
    return transv, tasks, lengths


def task_item(task: str, seed: int, frames: int, size: int) -> tuple:
    """(spec, item) of one seed for a sweep task (needle: a multiple-choice question about the needle scene)."""
    if task == "needle":
        return make_item("mcq", seed, frames, size, kind="needle")
    return make_item(task, seed, frames, size)


def sweep_items(task: str, frames: int, count: int, offset: int, size: int, split: str = "test") -> list:
    """(spec, item) of the first `count` seeds of `split` from its start + offset that can ask `task`."""
    start = split_range(split).start + offset
    if task == "needle":  # only seeds whose video has a needle scene
        seeds = itertools.islice((s for s in itertools.count(start) if make_video(s, frames, size).needle), count)
    else:
        seeds = range(start, start + count)
    return [task_item(task, seed, frames, size) for seed in seeds]


def load_sweep_model(args: argparse.Namespace, instruction_before_video: bool | None):
    from timeviper.cli import load_model

    model = load_model(args)
    if instruction_before_video is not None:
        model.config.instruction_before_video = instruction_before_video
    return model


def predict(model, spec, item: dict, max_frames: int | None, tvg_search: bool, tvg_shots: bool,
            caption_shots: bool) -> dict:
    """The model's prediction record for one sweep item, its frames rendered in memory."""
    by_shots = caption_shots if item["task"] == "caption" else tvg_shots
    return runner.predict(model, sample_video(spec, max_frames, "uniform"), item,
                          search=SearchConfig() if tvg_search else None, shots=ShotConfig() if by_shots else None)


def predict_options(args) -> tuple:
    """predict's arguments after the item, from the sweep's."""
    return args.max_frames, args.tvg_search, args.tvg_shots, args.caption_shots


def model_answer(model, args):
    """answer(items): the records of `model`, in this process, for (spec, item) pairs in order."""
    options = predict_options(args)
    return lambda items: (predict(model, spec, item, *options) for spec, item in items)


_worker: tuple | TimeViperError | None = None  # a --workers process's (model, predict options), or why it has none


def _start_worker(model_args: argparse.Namespace, before: bool | None, options: tuple, threads: int) -> None:
    import torch

    global _worker
    torch.set_num_threads(threads)
    try:
        _worker = load_sweep_model(model_args, before), options
    except TimeViperError as e:  # raised again by the first job, so that the sweep reports it
        _worker = e


def _worker_state() -> tuple:
    if isinstance(_worker, TimeViperError):
        raise _worker
    return _worker


def _worker_predict(job: tuple) -> dict:
    model, options = _worker_state()
    return predict(model, *job, *options)


def _worker_spec() -> str:
    return _worker_state()[0].config.transv


@contextlib.contextmanager
def answerer(args, setting: str, before: bool | None):
    """(answer, spec): answer(items) yields runner.predict records of (spec, item) pairs in order, from one model
    in this process or from `args.workers` processes with a model each; spec is the TransV spec in effect."""
    model_args = argparse.Namespace(model=args.model, device=args.device, logn_length=args.logn_length,
                                    video_window=args.video_window, time_past_period=args.time_past_period,
                                    transv=None if setting == "default" else setting)
    if args.workers == 1:
        model = load_sweep_model(model_args, before)
        yield model_answer(model, args), model.config.transv
        return
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    with ProcessPoolExecutor(args.workers, multiprocessing.get_context("spawn"), initializer=_start_worker,
                             initargs=(model_args, before, predict_options(args), threads)) as pool:
        yield (lambda items: pool.map(_worker_predict, items)), pool.submit(_worker_spec).result()


def run_cell(answer, spec_in_effect: str, task: str, frames: int, args, bar, held: dict | None = None,
             save=None) -> dict:
    """The metrics and timings of one (task, length) under the TransV spec in effect; with `held`, a cell of the
    same key asked about fewer items, only the items it lacks are asked, and the cell returned holds them all.
    `save(cell)` is given the cell of the items answered so far every SAVE_EVERY_S seconds."""
    items = sweep_items(task, frames, args.items, args.seed_offset, args.size, args.split)
    held = held or {"spec": spec_in_effect, "seeds": [], "responses": [], "seconds": 0.0, "frames_per_item": 0.0}
    n_held = len(held["seeds"])
    if held["seeds"] != [item["seed"] for _, item in items[:n_held]] or held["spec"] != spec_in_effect:
        raise ConfigError(f"the cell {task} {frames} of --out (TransV {held['spec']}, seeds from {held['seeds'][0]}) "
                          f"is not the start of this one (TransV {spec_in_effect}): it cannot be grown")
    records = [runner.answer_record(item, raw) for (_, item), raw in zip(items, held["responses"])]

    def cell() -> dict:  # of the items answered so far
        asked, new = [item for _, item in items[:len(records)]], records[n_held:]
        seconds = held["seconds"] + sum(r["seconds"] for r in new)
        return {"spec": spec_in_effect, "task": task, "frames": frames, "n": len(records),
                "metrics": score(asked[0]["task"], records, asked),
                "seconds": round(seconds, 3), "seconds_per_item": round(seconds / len(records), 3),
                "frames_per_item": (held["frames_per_item"] * n_held + sum(r["frames"] for r in new)) / len(records),
                "seeds": [item["seed"] for item in asked], "responses": [r["raw"] for r in records]}

    saved = time.monotonic()
    for record in answer(items[n_held:]):
        records.append(record)
        bar.update()
        if save is not None and time.monotonic() - saved >= SAVE_EVERY_S:
            save(cell())
            saved = time.monotonic()
    return cell()


def load_results(path: Path, settings: dict) -> dict:
    """The sweep file at `path` (or a new one), refused if it was made with other settings; more `items` than it
    was made with are not other settings: its cells are grown to that many (the file then says so)."""
    if not path.exists():
        return {"settings": settings, "cells": []}
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read --out {path}: {e}") from None
    if not (isinstance(results, dict) and isinstance(results.get("settings"), dict)
            and isinstance(results.get("cells"), list)):
        raise ConfigError(f"--out {path} is not a sweep file (it lacks settings or cells)")
    old = results["settings"]
    if {**old, "items": settings["items"]} != settings:
        changed = ", ".join(f"{k} {old.get(k)!r} -> {settings[k]!r}" for k in settings
                            if k != "items" and old.get(k) != settings[k])
        raise ConfigError(f"--out {path} holds a sweep with other settings ({changed or old}); "
                          "use those settings or another --out")
    if not isinstance(old.get("items"), int) or old["items"] > settings["items"]:
        raise ConfigError(f"--out {path} holds cells of {old.get('items')!r} items: ask as many (or more, which "
                          "grows them) or use another --out")
    results["settings"] = settings
    return results


def cell_key(cell: dict) -> tuple[str, str, int]:
    return cell["transv"], cell["task"], cell["frames"]


def sweep(args) -> list[dict]:
    """Run the cells of the grid that `args.out` lacks; return every cell of the grid."""
    from tqdm import tqdm

    transv, tasks, lengths = parse_grid(args)
    settings = {"model": args.model and str(Path(args.model).resolve()), "items": args.items,
                "seed_offset": args.seed_offset, "max_frames": args.max_frames, "size": args.size}
    if args.logn_length != "default":  # (files of the model's own setting hold no such key)
        settings["logn_length"] = args.logn_length
    if args.video_window != "default":
        settings["video_window"] = args.video_window
    if args.time_past_period != "default":
        settings["time_past_period"] = args.time_past_period
    if args.split != "test":  # (nor do files of test seeds)
        settings["split"] = args.split
    if args.tvg_search:  # (nor do files of single-pass grounding)
        settings["tvg_search"] = asdict(SearchConfig())
    if args.tvg_shots:
        settings["tvg_shots"] = asdict(ShotConfig())
    if args.caption_shots:  # (nor do files of single-pass captions)
        settings["caption_shots"] = asdict(ShotConfig())
    if args.instruction_before_video != "default":  # (nor do files of the model's own prompt layout)
        settings["instruction_before_video"] = args.instruction_before_video == "on"
    out = Path(args.out)
    results = load_results(out, settings)
    found = {cell_key(cell): cell for cell in results["cells"]}
    grid = list(itertools.product(transv, tasks, lengths))
    todo = [key for key in grid if key not in found or found[key]["n"] < args.items]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=sum(args.items - found[key]["n"] if key in found else args.items for key in todo),
              unit="item", file=sys.stderr) as bar:
        for setting, keys in itertools.groupby(todo, key=lambda key: key[0]):
            with answerer(args, setting, settings.get("instruction_before_video")) as (answer, spec):
                for key in keys:
                    bar.set_description(" ".join(map(str, key)))

                    def keep(cell: dict, key=key) -> None:  # write OUT with `cell` in place of key's
                        cell = {"transv": key[0], **cell}
                        if key in found:  # grown or finished: in place of the cell it grew from
                            results["cells"][results["cells"].index(found[key])] = cell
                        else:
                            results["cells"].append(cell)
                        found[key] = cell
                        runner.write_atomic(out, json.dumps(results, indent=1) + "\n")

                    keep(run_cell(answer, spec, *key[1:], args, bar, found.get(key), save=keep))
            del answer  # and with it this setting's model, before the next setting's is loaded
    return [found[key] for key in grid]


def print_table(cells: list[dict]) -> None:
    print(f"{'task':<8} {'frames':>7}  {'transv':<24} {'metric':<9} {'value':>6} {'n':>5} {'s/item':>8}")
    for c in cells:
        metric = HEADLINE[c["task"]]
        print(f"{c['task']:<8} {c['frames']:>7}  {c['transv']:<24} {metric:<9} {c['metrics'][metric]:>6.3f} "
              f"{c['n']:>5} {c['seconds_per_item']:>8.3f}")


def plot(cells: list[dict], path, trained_frames: int | None = None):
    """The headline metric of each task against video length, one line per TransV setting (accuracies with their 95%
    Wilson intervals, from each cell's `n`), and a dotted line at `trained_frames` (the most frames of one video the
    model was trained on), saved to `path`; returns the Figure."""
    from matplotlib.figure import Figure  # no pyplot: the figure renders through Agg

    tasks = list(dict.fromkeys(c["task"] for c in cells))
    fig = Figure(figsize=(4 * len(tasks), 3.5), layout="constrained")
    for ax, task in zip(fig.subplots(1, len(tasks), squeeze=False)[0], tasks):
        metric, mine = HEADLINE[task], [c for c in cells if c["task"] == task]
        intervals = metric == "accuracy" and all(c.get("n") for c in mine)  # (mIoU and F1 would need item scores)
        for setting in dict.fromkeys(c["transv"] for c in mine):
            frames, values, counts = zip(*sorted((c["frames"], c["metrics"][metric], c.get("n")) for c in mine
                                                 if c["transv"] == setting))
            bars = None
            if intervals:
                lows, highs = zip(*(accuracy_interval(round(v * n), n) for v, n in zip(values, counts)))
                bars = [[v - low for v, low in zip(values, lows)], [high - v for v, high in zip(values, highs)]]
            ax.errorbar(frames, values, yerr=bars, marker="o", capsize=3, label=setting)
        if trained_frames is not None:
            ax.axvline(trained_frames, color="gray", linestyle=":", label=f"trained on ≤ {trained_frames:,} frames")
        ax.set(title=task, xscale="log", xlabel="video length (frames at 1 fps)",
               ylabel=metric + (" (bars: 95% Wilson interval)" if intervals else ""),
               ylim=(-0.02, 1.02))
        lengths = sorted({c["frames"] for c in mine})
        ax.set_xticks(lengths, [f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n) for n in lengths])
        ax.minorticks_off()
        ax.legend(fontsize="small")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m timeviper.eval.synth_sweep",
                                     description="Quality on synthetic test videos by length and TransV setting.")
    parser.add_argument("--model", help="a TimeViper directory (default: the embedded model)")
    parser.add_argument("--tasks", default="mcq,tvg,caption,needle", help="comma list of mcq, tvg, caption, needle")
    parser.add_argument("--frames", default="256,2000,10000", help="comma list of video lengths in seconds (1 fps)")
    parser.add_argument("--items", type=int, default=20,
                        help="items per (task, length); more than the cells of --out hold grows them")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="seeds to ask about: test (report) or validation (choose settings on these)")
    parser.add_argument("--seed-offset", type=int, default=0, help="first seed: the split's start + this")
    parser.add_argument("--transv", default="default,none",
                        help="comma list of TransV specs; default: the model's own, none: off")
    long_video_args(parser)
    parser.add_argument("--max-frames", type=int, help="frames read per video, spread uniformly (default: all)")
    parser.add_argument("--tvg-search", action="store_true",
                        help="ground tvg items by timeviper.grounding.search (its default settings), not one answer")
    parser.add_argument("--tvg-shots", action="store_true",
                        help="ground tvg items shot by shot (timeviper.grounding.ground_by_shots, its default settings)")
    parser.add_argument("--caption-shots", action="store_true",
                        help="caption caption items shot by shot (timeviper.captioning, its default settings)")
    parser.add_argument("--instruction-before-video", choices=("default", "on", "off"), default="default",
                        help="also ask the instruction before the video (on) or only after it (off); default: "
                             "as the model was trained")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes answering a cell's items, each with a model of its own on the device")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels")
    parser.add_argument("--device", help="default: cuda if available (bf16), else cpu (fp32)")
    parser.add_argument("--out", required=True, help="results JSON; a rerun skips the cells it holds")
    parser.add_argument("--plot", help="PNG of the headline metric per task against video length")
    args = parser.parse_args(argv)
    try:
        cells = sweep(args)
    except TimeViperError as e:
        print(f"timeviper: error: {e}", file=sys.stderr)
        return 1
    print_table(cells)
    if args.plot:
        plot(cells, args.plot, TimeViperConfig.from_pretrained(args.model).trained_frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
