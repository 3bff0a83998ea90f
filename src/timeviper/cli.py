"""The `timeviper` command line: ask, ground, caption, demo, synth, score, train, export, eval, analyze.

Errors print one line on stderr and exit with 1 (usage errors: 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from timeviper.errors import TimeViperError

DTYPES = ("float32", "bfloat16")  # of exported weights
SHOTS_PAST_TRAINING = "; `{} --shots` reads it one shot at a time instead"


# --- questions about a video -------------------------------------------------------------------------------
def load_model(args):
    import torch

    from timeviper.model import TimeViper

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = TimeViper.from_pretrained(args.model, dtype=dtype, device=device)
    if args.transv is not None:
        model.set_transv(args.transv)
    # long_video_args (absent: the model's own settings)
    for name, setter in (("logn_length", model.set_logn_attention), ("video_window", model.set_video_window),
                         ("time_past_period", model.set_time_past_period)):
        if getattr(args, name, "default") != "default":
            setter(getattr(args, name))
    return model


def token_length(text: str) -> int:
    if not text.isdecimal() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"expected a whole number of tokens >= 2, got {text!r}")
    return int(text)


def logn_length(text: str) -> int | None | str:
    """--logn-length: 'default' (the model's own), 'none' (off) or a length of at least 2 tokens."""
    if text in ("default", "none"):
        return None if text == "none" else text
    return token_length(text)


def frames_or_all(text: str) -> int | None | str:
    """A number of frames >= 1, 'all' (None) or 'default'."""
    if text in ("all", "default"):
        return None if text == "all" else text
    if not text.isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of frames >= 1 or 'all', got {text!r}")
    return int(text)


TIME_PAST_PERIOD = ("wrap", "none")  # timeviper.vision.projector's, kept here so that the parser needs no torch


def long_video_args(p: argparse.ArgumentParser) -> None:
    """How videos longer than training's are read: logn attention, the video window and late frames' times."""
    p.add_argument("--logn-length", type=logn_length, default="default", metavar="N|none|default",
                   help="scale attention past N tokens (log n / log N) for videos longer than training's; "
                        "default: the model's own setting")
    p.add_argument("--video-window", type=frames_or_all, default="default", metavar="N|all|default",
                   help="vision tokens attend to the last N frames only (all: the whole video before them); the "
                        "instruction still reads the whole video; default: the model's own setting")
    p.add_argument("--time-past-period", choices=(*TIME_PAST_PERIOD, "default"), default="default",
                   help="what a frame past the time embedding's longest period is told of its time: wrap (its time "
                        "modulo the period, as trained), none; default: the model's own setting")


def answer(args, instruction: str, past_training: str = "") -> tuple[str, int, float]:
    """Run the model on args.video: (text, frames read, seconds). Reading more frames than the model was trained
    on a video is noted on stderr, followed by `past_training` (what to do instead)."""
    from tqdm import tqdm

    from timeviper.model import frame_chunks

    chunks = frame_chunks(args.video, args.fps, args.max_frames, args.sampling, args.chunk_frames)  # opens it
    model = load_model(args)
    start, frames = time.perf_counter(), 0
    with tqdm(desc="frames", unit="frame", disable=args.quiet, file=sys.stderr, leave=False) as bar:
        def read(n: int) -> None:  # a disabled bar counts nothing
            nonlocal frames
            frames += n
            bar.update(n)

        text = model.generate([(chunks, instruction)], max_new_tokens=args.max_new_tokens, progress=read)[0]
    seconds = time.perf_counter() - start
    trained = model.config.trained_frames
    if trained is not None and frames > trained:
        print(f"note: read {frames:,} frames in one pass; this model was trained on videos of at most {trained:,} "
              f"frames{past_training}", file=sys.stderr)
    return text, frames, seconds


def emit(args, result: dict, text: str) -> None:
    print(json.dumps(result) if args.json else text)


def cmd_ask(args) -> None:
    from timeviper.eval.metrics import parse_option_letter
    from timeviper.prompts import mcq_prompt

    instruction = mcq_prompt(args.question, args.options) if args.options else args.question
    text, frames, seconds = answer(args, instruction)
    result = {"answer": (parse_option_letter(text) or text) if args.options else text, "raw": text,
              "frames": frames, "seconds": round(seconds, 3)}
    emit(args, result, result["answer"])


def cmd_ground(args) -> None:
    from timeviper.eval.metrics import parse_time_span
    from timeviper.prompts import grounding_prompt

    if args.search and args.shots:
        from timeviper.errors import ConfigError

        raise ConfigError("ground: --search and --shots are two ways to ground: pick one")
    if args.search:
        return ground_by_search(args)
    if args.shots:
        return ground_shot_by_shot(args)
    text, frames, seconds = answer(args, grounding_prompt(args.query), SHOTS_PAST_TRAINING.format("ground"))
    span = parse_time_span(text)
    result = {"start": span and span[0], "end": span and span[1], "raw": text, "frames": frames,
              "seconds": round(seconds, 3)}
    emit(args, result, f"{span[0]:.1f} - {span[1]:.1f} seconds" if span else f"(no time span in: {text!r})")


@contextmanager
def whole_video(args, command: str, why: str, part: str):
    """For commands that read every frame at --fps: refuse --max-frames, open the video (a bad file fails before the
    model loads), load the model; yield (model, on_frames, on_part(done, total)): progress bars for the frames
    encoded and for the `part`s of the video (windows, shots) done."""
    from tqdm import tqdm

    from timeviper.errors import ConfigError
    from timeviper.model import frame_chunks

    if args.max_frames is not None:
        raise ConfigError(f"{command} reads every frame at --fps ({why}): drop --max-frames")
    frame_chunks(args.video, args.fps)
    model = load_model(args)
    with tqdm(desc="frames", unit="frame", disable=args.quiet, file=sys.stderr, leave=False) as frames, \
            tqdm(desc=f"{part}s", unit=part, disable=args.quiet, file=sys.stderr, leave=False) as parts:
        def done(count: int, total: int) -> None:
            parts.total = total
            parts.update(count - parts.n)

        yield model, frames.update, done


def ground_by_search(args) -> None:
    """`ground --search`: timeviper.grounding.search, with a bar for the frames and one for the windows."""
    from dataclasses import asdict

    from timeviper.grounding import SearchConfig, search

    config = SearchConfig(args.window, args.stride, args.samples, max_new_tokens=args.max_new_tokens,
                          scales=args.scales, agreement_weight=args.agreement_weight)
    reading = whole_video(args, "ground --search", "its windows are seconds of video", "window")
    with reading as (model, on_frames, on_window):
        start = time.perf_counter()
        found = search(model, args.video, args.query, config, args.fps, args.chunk_frames, on_frames, on_window)
    result = {"start": found.start, "end": found.end, "frames": found.frames,
              "seconds": round(time.perf_counter() - start, 3),
              "search": {**asdict(config), "window": found.window, "stride": found.stride},
              "best": found.best and found.best.report()}
    emit(args, result,
         f"{found.start:.1f} - {found.end:.1f} seconds" if found.best else "(no window's answers held a time span)")


def shot_config(args):
    """The timeviper.shots.ShotConfig of --cut-share, --min-shot-frames and --shot-frames."""
    from timeviper.shots import ShotConfig

    thinning = {} if args.shot_frames == "default" else {"max_frames": args.shot_frames}
    return ShotConfig(args.cut_share, min_frames=args.min_shot_frames, **thinning)


def ground_shot_by_shot(args) -> None:
    """`ground --shots`: timeviper.grounding.ground_by_shots, with a bar for the frames and one for the shots."""
    from dataclasses import asdict

    from timeviper.grounding import ground_by_shots

    config = shot_config(args)
    with whole_video(args, "ground --shots", "shots are runs of frames", "shot") as (model, on_frames, on_shot):
        start = time.perf_counter()
        found = ground_by_shots(model, args.video, args.query, config, args.fps, args.chunk_frames,
                                args.max_new_tokens, on_frames, on_shot)
    result = {"start": found.start, "end": found.end, "raw": found.raw, "frames": found.frames,
              "seconds": round(time.perf_counter() - start, 3), "shot": found.shot,
              "shots": [asdict(shot) for shot in found.shots], "cuts": asdict(config)}
    emit(args, result, f"{found.start:.1f} - {found.end:.1f} seconds" if found.start is not None
         else f"(no time span in the answer of shot {found.shot + 1}: {found.raw!r})")


def cmd_caption(args) -> None:
    from timeviper.prompts import CAPTION_PROMPT

    if args.shots:
        return caption_shot_by_shot(args)
    text, frames, seconds = answer(args, CAPTION_PROMPT, SHOTS_PAST_TRAINING.format("caption"))
    emit(args, {"caption": text, "frames": frames, "seconds": round(seconds, 3)}, text)


def caption_shot_by_shot(args) -> None:
    """`caption --shots`: timeviper.captioning.caption_by_shots, with a bar for the frames and one for the shots."""
    from dataclasses import asdict

    from timeviper.captioning import caption_by_shots

    config = shot_config(args)
    reading = whole_video(args, "caption --shots", "shots are runs of frames", "shot")
    with reading as (model, on_frames, on_shot):
        start = time.perf_counter()
        found = caption_by_shots(model, args.video, config, args.fps, args.chunk_frames, args.max_new_tokens,
                                 on_frames=on_frames, on_shot=on_shot)
    result = {"caption": found.caption, "frames": found.frames, "seconds": round(time.perf_counter() - start, 3),
              "shots": [asdict(shot) for shot in found.shots], "cuts": asdict(config)}
    emit(args, result, found.caption)


# --- the synthetic world, scoring -------------------------------------------------------------------------
def cmd_synth(args) -> None:
    from timeviper.synth import render_item

    item = render_item(args.task, args.seed, args.frames, args.out, size=args.size)
    print(json.dumps(item) if args.json else f"wrote {Path(args.out) / 'video.mp4'} and {Path(args.out) / 'item.json'}")


def cmd_score(args) -> None:
    from timeviper.eval.metrics import load_records, score

    print(json.dumps(score(args.task, load_records(args.predictions), load_records(args.references)), indent=2))


def cmd_demo(args) -> None:
    from timeviper.demo import run_demo

    run_demo(args)


# --- training and evaluation ---------------------------------------------------------------------------------
def cmd_train(args) -> None:
    from functools import partial

    import torch

    from timeviper.data import build_train_data
    from timeviper.prompts import encode_conversation
    from timeviper.train import Trainer, load_config
    from timeviper.train.build import build_model, export_checkpoint
    from timeviper.train.distributed import close_distributed, init_distributed

    config = load_config(args.config, args.set)
    env = init_distributed()
    try:
        torch.manual_seed(config.train.seed)  # the same random parts on every rank and in every run
        model = build_model(config, device=env.device)  # straight onto this rank's GPU, in float32
        data = build_train_data(config, tokenize=partial(
                                    encode_conversation, model.tokenizer, system=model.config.system_prompt,
                                    instruction_before_video=model.config.instruction_before_video),
                                tokens_per_frame=model.config.tokens_per_frame, rank=env.rank,
                                world_size=env.world_size)
        try:
            trainer = Trainer(config, model, data, args.output, blocks=list(model.llm.layers))
            trainer.fit(max_steps=args.max_steps, resume=args.resume, max_seconds=args.max_seconds)
        finally:
            data.close()
        if env.is_main and args.export:  # from the checkpoint written at the stop: no gathering of shards
            export_checkpoint(args.output, args.export, getattr(torch, args.export_dtype))
    finally:
        close_distributed()


def cmd_export(args) -> None:
    import torch

    from timeviper.train.build import export_checkpoint

    used = export_checkpoint(args.checkpoint, args.out, getattr(torch, args.dtype), args.logn_length,
                             args.time_past_period)
    print(f"wrote the model of {used} to {args.out}")


def cmd_eval(args) -> None:
    from timeviper.eval.runner import run_benchmark

    run_benchmark(args)


def cmd_analyze(args) -> None:
    from timeviper.analysis.commands import run_analysis

    run_analysis(args)


# --- the parser ------------------------------------------------------------------------------------------------
def video_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="a video or image file")
    p.add_argument("--model", default=None, help="a TimeViper directory (default: the embedded model)")
    p.add_argument("--max-frames", type=int, default=None, help="frames to read at most (default: all)")
    p.add_argument("--sampling", choices=("uniform", "first"), default="uniform")
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--transv", default=None, help="override the TransV spec, e.g. none or uni_7_0.5")
    long_video_args(p)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--chunk-frames", type=int, default=256, help="frames per streamed chunk")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def shot_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--shots", action="store_true", help=what)
    p.add_argument("--cut-share", type=float, default=0.2,
                   help="with --shots: share of pixels that must change between two frames for a cut (default 0.2)")
    p.add_argument("--min-shot-frames", type=int, default=1,
                   help="with --shots: no shot has fewer frames; nearer cuts are dropped (default 1)")
    p.add_argument("--shot-frames", type=frames_or_all, default="default", metavar="N|all",
                   help="with --shots: frames of a shot read at most, spread evenly (default: timeviper.shots."
                        "ShotConfig's, 32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="timeviper", description="Long-video understanding with a hybrid "
                                     "Mamba-Transformer vision-language model.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ask", help="answer a question about a video")
    video_args(p)
    p.add_argument("question")
    p.add_argument("--options", nargs=4, metavar="OPTION", help="four options: answer with a letter A-D")
    p.set_defaults(run=cmd_ask)

    p = sub.add_parser("ground", help="find when something happens (start and end in seconds)")
    video_args(p)
    p.add_argument("query")
    p.add_argument("--search", action="store_true",
                   help="coarse-to-fine: sample answers of the whole video and of short windows, and pick the window "
                        "answer that agrees with both (timeviper.grounding; slower, better on long videos)")
    p.add_argument("--window", type=float, default=None,
                   help="with --search: seconds a window reads (default: a quarter of the video, at least 16)")
    p.add_argument("--stride", type=float, default=None,
                   help="with --search: seconds between windows (default: a quarter of a window)")
    p.add_argument("--samples", type=int, default=16, help="with --search: answers sampled per window")
    p.add_argument("--scales", type=int, default=1,
                   help="with --search: window lengths, each half the one before, none under 16 s (default 1)")
    p.add_argument("--agreement-weight", type=float, default=0.0,
                   help="with --search: weight of a window's agreement with the other windows' spans (default 0; "
                        "on long videos --scales 2 --agreement-weight 8)")
    shot_args(p, "cut the video at its shots, ask each as a video of its own, and answer from the shot the model "
                 "most believes holds the event (timeviper.grounding.ground_by_shots; needs a model trained to say "
                 "an event does not happen)")
    p.set_defaults(run=cmd_ground)

    p = sub.add_parser("caption", help="describe a video in detail")
    video_args(p)
    shot_args(p, "cut the video at its shots, caption each as a video of its own and join the captions "
                 "(timeviper.captioning; better on videos of several scenes)")
    p.set_defaults(run=cmd_caption)

    p = sub.add_parser("demo", help="render a sample video; answer, ground and caption it")
    p.add_argument("--model", default=None)
    p.add_argument("--out", default=None, help="where to write the sample video (default: a temporary folder)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("synth", help="render one synthetic video with its ground truth")
    p.add_argument("--task", choices=("mcq", "tvg", "caption"), required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--size", type=int, default=64, help="frame side in pixels")
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_synth)

    p = sub.add_parser("score", help="score predictions against references (JSON metrics)")
    p.add_argument("--task", choices=("mcq", "tvg", "caption"), required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--references", required=True)
    p.set_defaults(run=cmd_score)

    p = sub.add_parser("train", help="train from a YAML recipe (torchrun for several GPUs)")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=3000 (repeatable)")
    p.add_argument("--output", default="runs/train")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this step (the schedule is unchanged)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop after the first step that ends this long after the start (the schedule is unchanged)")
    p.add_argument("--export", default=None, help="also save the trained model as a TimeViper directory")
    p.add_argument("--export-dtype", choices=DTYPES, default="float32",
                   help="dtype of the exported weights (bfloat16: half the size)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("export", help="write a training checkpoint as a TimeViper model directory")
    p.add_argument("checkpoint", help="a checkpoint-STEP directory, or a run directory (its newest checkpoint)")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the weights")
    p.add_argument("--logn-length", type=token_length, default=None, metavar="N",
                   help="set the exported model's logn attention length (default: as trained)")
    p.add_argument("--time-past-period", choices=TIME_PAST_PERIOD, default=None,
                   help="set what the exported model tells frames past its time period (default: as trained)")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("eval", help="evaluate on a benchmark")
    p.add_argument("benchmark")
    p.add_argument("--data-root", required=True)
    p.add_argument("--output", default=None)
    p.add_argument("--shard", default="0/1", help="I/N: evaluate the I-th of N shards")
    p.add_argument("--model", default=None)
    p.add_argument("--max-frames", type=int, default=256)
    p.add_argument("--sampling", choices=("uniform", "first"), default="first")
    p.add_argument("--transv", default=None)
    long_video_args(p)
    p.add_argument("--device", default=None)
    p.add_argument("--search", action="store_true",
                   help="ground by timeviper.grounding.search (default settings; every frame at 1 fps)")
    p.add_argument("--shots", action="store_true",
                   help="ground or caption shot by shot (timeviper.grounding.ground_by_shots, timeviper.captioning; "
                        "default settings; every frame at 1 fps)")
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("analyze",
                       help="look inside the LM: information blocking, token redundancy, attention maps (JSON + PNG)")
    p.add_argument("analysis", choices=("blocking", "redundancy", "attention"),
                   help="blocking: scores with vision cut from the instruction (V2I) or the response (V2R) by layer; "
                        "redundancy: scores with a share of vision tokens dropped by layer; "
                        "attention: the maps of every attention and Mamba-2 layer for one item")
    p.add_argument("--out", required=True, help="directory for the JSON data and the figures")
    p.add_argument("--model", default=None)
    p.add_argument("--tasks", default="mcq", help="comma list of mcq, tvg, caption (attention: one task)")
    p.add_argument("--frames", type=int, default=16, help="length of the synthetic videos (seconds at 1 fps)")
    p.add_argument("--items", type=int, default=20, help="blocking, redundancy: items per task")
    p.add_argument("--window", type=int, default=1,
                   help="blocking: token-mixing layers cut from the starting layer on, within this many layers")
    p.add_argument("--drop", default=None,
                   help="blocking, attention: also drop vision tokens evenly without transfer, e.g. td_2_0.5 (the "
                        "density a model trained with TransV saw)")
    p.add_argument("--rates", default="0.5,0.9,1", help="redundancy: comma list of drop shares p")
    p.add_argument("--strategies", default="uni,attn", help="redundancy: uni (even) and/or attn (least attended)")
    p.add_argument("--split", choices=("test", "validation"), default="test")
    p.add_argument("--seed-offset", type=int, default=0, help="first seed: the split's start + this")
    p.add_argument("--device", default=None)
    p.set_defaults(run=cmd_analyze)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except TimeViperError as e:
        print(f"timeviper: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("timeviper: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
