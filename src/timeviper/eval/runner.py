"""Benchmark evaluation: sharded, resumable predictions, then metrics.

    python -m timeviper.eval.runner make-synth --task mcq --seeds 1100000:1100200 --frames 256 --out data/synth-mcq
    timeviper eval synth-mcq --data-root data/synth-mcq --output runs/eval/synth-mcq [--shard 0/2]
    timeviper eval synth-tvg --data-root data/synth-tvg --output runs/eval/synth-tvg-search --search
    timeviper eval synth-caption --data-root data/synth-caption --output runs/eval/synth-caption-shots --shots

A benchmark directory holds `items.jsonl`, one item per line: `id`, `video` (a path relative to the
directory), `task` and the task's fields (FIELDS) — mcq: `question`, `options`, `answer` (a letter);
tvg: `query`, `start`, `end` (seconds); caption: `caption` — as timeviper.synth makes them. make-synth
writes such a directory from test-split seeds (`--task needle`: mcq items about the needle scene; seeds
whose video has none are left out).

Shard I of N takes items I, I + N, ...; its predictions go to OUTPUT/predictions.I-of-N.jsonl (just
predictions.jsonl when N is 1), one line per item (id, answer | start, end | caption, the raw text,
frames read, seconds), appended as they come, so a rerun skips the items already there. `--search` grounds tvg
items by timeviper.grounding.search, `--shots` grounds tvg items (timeviper.grounding.ground_by_shots) or captions
caption items (timeviper.captioning) shot by shot, all over every frame (--max-frames aside); their records add
`search` or `shots`, and an output holds predictions of one mode only. A run prints
its shard's metrics (timeviper.eval.metrics.score) and writes them to metrics.I-of-N.json; once the
shards together cover every item, metrics.json holds the metrics of all (for N = 1, at once).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from timeviper.data.synth_source import task_prompt
from timeviper.errors import ConfigError, TimeViperError
from timeviper.eval.metrics import load_records, parse_option_letter, parse_time_span, score
from timeviper.grounding import SearchConfig
from timeviper.shots import ShotConfig

BENCHMARKS = {"synth-mcq": "mcq", "synth-tvg": "tvg", "synth-caption": "caption", "synth-needle": "mcq"}
FIELDS = {"mcq": ("question", "options", "answer"), "tvg": ("query", "start", "end"), "caption": ("caption",)}
MAX_NEW_TOKENS = {"mcq": 12, "tvg": 24, "caption": 512}
WHOLE_VIDEO_MODES = {"search": ("tvg",), "shots": ("tvg", "caption")}  # modes over every frame (flag and record
# key) -> the tasks they are for


def parse_answer(task: str, text: str) -> dict:
    """A response as a prediction's fields: `answer` (letter or None), `start`/`end` (or None), `caption`."""
    if task == "mcq":
        return {"answer": parse_option_letter(text)}
    if task == "tvg":
        span = parse_time_span(text)
        return {"start": span and span[0], "end": span and span[1]}
    return {"caption": text}


def answer_record(item: dict, text: str) -> dict:
    """The prediction record of `text`, a response to `item`: its `id`, the fields parse_answer reads, and `raw`."""
    return {"id": item["id"], **parse_answer(item["task"], text), "raw": text}


def predict(model, video, item: dict, max_frames: int | None = None, sampling: str = "uniform",
            search=None, shots=None) -> dict:
    """Ask `model` the item's question about `video` (a path, a decoded timeviper.sampling.Video or uint8 frames
    shown once a second): its prediction record. With `search` (a timeviper.grounding.SearchConfig) a tvg item
    is grounded by timeviper.grounding.search, over every frame; its record adds the best window's `search`
    scores, and `raw` is the span it found. With `shots` (a timeviper.shots.ShotConfig) a caption item is
    captioned shot by shot (timeviper.captioning), over every frame; its record adds `shots`, each shot's
    [start, end] seconds, and `raw` is the joined caption; a tvg item (without `search`) is grounded shot by shot
    (timeviper.grounding.ground_by_shots), its record adds `shots` ([start, end, belief] of each shot) and `shot`
    (the chosen one's index), and `raw` is the span it found."""
    from timeviper.model import frame_chunks

    frames = 0

    def count(n: int) -> None:
        nonlocal frames
        frames += n

    start = time.perf_counter()
    if search is not None and item["task"] == "tvg":
        from timeviper.grounding import search as ground

        best = ground(model, video, item["query"], search, on_frames=count).best
        text = f"{best.start:.1f} - {best.end:.1f} seconds" if best else ""
        found = {"search": best and best.report()}
    elif shots is not None and item["task"] == "tvg":
        from timeviper.grounding import ground_by_shots

        grounded = ground_by_shots(model, video, item["query"], shots, on_frames=count)
        text = f"{grounded.start:.1f} - {grounded.end:.1f} seconds" if grounded.start is not None else grounded.raw
        found = {"shots": [[s.start, s.end, round(s.happens, 4)] for s in grounded.shots], "shot": grounded.shot}
    elif shots is not None and item["task"] == "caption":
        from timeviper.captioning import caption_by_shots

        captioned = caption_by_shots(model, video, shots, max_new_tokens=MAX_NEW_TOKENS["caption"], on_frames=count)
        text = captioned.caption
        found = {"shots": [[shot.start, shot.end] for shot in captioned.shots]}
    else:
        chunks = frame_chunks(video, max_frames=max_frames, sampling=sampling)
        text = model.generate([(chunks, task_prompt(item))], max_new_tokens=MAX_NEW_TOKENS[item["task"]],
                              progress=count)[0]
        found = {}
    return {**answer_record(item, text), **found, "frames": frames,
            "seconds": round(time.perf_counter() - start, 3)}


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        index = count = -1
    if not 0 <= index < count:
        raise ConfigError(f"--shard must be I/N with 0 <= I < N, got {text!r}")
    return index, count


def load_items(root, task: str) -> list[dict]:
    """The items of a benchmark directory, checked: ids unique, task fields present, videos found."""
    root = Path(root)
    file = root / "items.jsonl"
    if not file.is_file():
        raise ConfigError(f"{file} not found: a benchmark directory holds items.jsonl and the videos it names")
    items, seen = load_records(file), set()
    for n, item in enumerate(items, 1):
        missing = [key for key in ("id", "video", *FIELDS[task]) if not isinstance(item, dict) or key not in item]
        if missing:
            raise ConfigError(f"{file}:{n}: the item lacks {', '.join(missing)}")
        if item.setdefault("task", task) != task:
            raise ConfigError(f"{file}:{n}: a {item['task']} item in a {task} benchmark")
        if item["id"] in seen:
            raise ConfigError(f"{file}:{n}: repeat id {item['id']!r}")
        seen.add(item["id"])
        if not (root / item["video"]).is_file():
            raise ConfigError(f"{file}:{n}: video {root / item['video']} not found")
    if not items:
        raise ConfigError(f"{file} holds no items")
    return items


def read_predictions(path: Path, ids: set) -> dict:
    """id -> prediction of the records in `path` whose id is in `ids` (torn lines are left out)."""
    records = {}
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("id") in ids:
            records[record["id"]] = record
    return records


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_benchmark(args) -> None:
    """`timeviper eval BENCHMARK --data-root DIR [--output DIR] [--shard I/N] ...` (see the module docstring)."""
    from tqdm import tqdm

    if args.benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {args.benchmark!r}; expected one of {', '.join(BENCHMARKS)}")
    task, (index, count) = BENCHMARKS[args.benchmark], parse_shard(args.shard)
    for flag, tasks in WHOLE_VIDEO_MODES.items():
        if getattr(args, flag) and task not in tasks:
            raise ConfigError(f"--{flag} is for {' and '.join(tasks)} benchmarks; {args.benchmark} is {task}")
    if args.search and args.shots:
        raise ConfigError("--search and --shots are two ways to ground: pick one")
    mode = next((flag for flag in WHOLE_VIDEO_MODES if getattr(args, flag)), None)  # None: one pass
    items = load_items(args.data_root, task)
    mine = items[index::count]
    out = Path(args.output or Path("runs/eval") / args.benchmark)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if count == 1 else f".{index}-of-{count}"
    path = out / f"predictions{suffix}.jsonl"
    done = read_predictions(path, {item["id"] for item in mine})
    for record in done.values():
        made = next((flag for flag in WHOLE_VIDEO_MODES if flag in record), None)
        if made != mode:
            raise ConfigError(f"{path} holds predictions made {f'with --{made}' if made else 'in one pass'}, not "
                              f"{f'with --{mode}' if mode else 'in one pass'}: use the same mode or another --output")
    on = mode is not None
    search = SearchConfig() if args.search else None
    shots = ShotConfig() if args.shots else None
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in done.values()))  # drop a torn last line
    todo = [item for item in mine if item["id"] not in done]
    if todo:
        from timeviper.cli import load_model

        model = load_model(args)
        root = Path(args.data_root)
        with open(path, "a") as f:
            for item in tqdm(todo, desc=args.benchmark, total=len(mine), initial=len(done), file=sys.stderr):
                record = predict(model, str(root / item["video"]), item, None if on else args.max_frames,
                                 args.sampling, search, shots)
                f.write(json.dumps(record) + "\n")
                f.flush()
                done[item["id"]] = record
    metrics = {"task": task, "n": 0}  # an empty shard: more shards than items
    if mine:
        metrics = score(task, list(done.values()), mine)
        write_atomic(out / f"metrics{suffix}.json", json.dumps(metrics, indent=2) + "\n")
    if count > 1:
        ids, everything = {item["id"] for item in items}, {}
        for i in range(count):
            everything.update(read_predictions(out / f"predictions.{i}-of-{count}.jsonl", ids))
        if len(everything) == len(items):
            metrics = score(task, list(everything.values()), items)
            write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


# --- benchmark directories of the synthetic world ------------------------------------------------------------
def make_synth(task: str, seeds: range, frames, out, size: int = 64) -> int:
    """Write OUT/items.jsonl and OUT/videos/ID.mp4 for test-split `seeds`; return the number of items.

    `task` is mcq, tvg, caption or needle (mcq items about the needle scene; seeds without one are left out).
    """
    from tqdm import tqdm

    from timeviper.synth import iter_items, split_of, write_mp4

    if task not in (*FIELDS, "needle"):
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(FIELDS)}, needle")
    if not seeds or split_of(seeds.start) != "test":
        raise ConfigError(f"seeds {seeds.start}:{seeds.stop} must be a non-empty range of the test split "
                          "(from 1100000): training and validation use the others")
    out = Path(out)
    items = []
    for seed in tqdm(seeds, desc=f"synth {task}", file=sys.stderr):
        try:
            ((spec, item),) = iter_items("mcq" if task == "needle" else task, [seed], frames, size,
                                         kind="needle" if task == "needle" else None)
        except ConfigError:  # a needle item on a video without a needle scene
            continue
        item["video"] = f"videos/{item['id']}.mp4"
        write_mp4(spec, out / item["video"])
        items.append(item)
    if not items:
        raise ConfigError(f"no seed of {seeds.start}:{seeds.stop} has a needle scene (needles need videos "
                          "of at least 120 frames)")
    write_atomic(out / "items.jsonl", "".join(json.dumps(item) + "\n" for item in items))
    return len(items)


def _span(text: str) -> tuple[int, int]:
    """'A:B' -> (A, B); 'N' -> (N, N)."""
    try:
        parts = [int(x) for x in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or A:B, got {text!r}")
    return parts[0], parts[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m timeviper.eval.runner")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-synth", help="write a benchmark directory of synthetic test items")
    p.add_argument("--task", choices=(*FIELDS, "needle"), required=True)
    p.add_argument("--seeds", type=_span, required=True, help="A:B, the seeds [A, B) (test split: >= 1100000)")
    p.add_argument("--frames", type=_span, required=True, help="N seconds, or LO:HI drawn per seed")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    lo, hi = args.frames
    try:
        n = make_synth(args.task, range(*args.seeds), lo if lo == hi else (lo, hi), args.out, args.size)
    except TimeViperError as e:
        print(f"timeviper: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {n} items to {Path(args.out) / 'items.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
