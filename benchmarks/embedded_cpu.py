"""CPU benchmark of the embedded-scale model on long synthetic videos: one question, end to end.

A test-split synthetic video of --frames seconds (1 fps, 64 px) is written as MP4, then asked a
multiple-choice question as `timeviper ask VIDEO QUESTION --options ...` asks it: decoding at 1 fps,
streamed chunks through SigLIP, ToMe, the projector and the hybrid LM with TransV, then the answer. Also
timed from frames already in memory (the model alone). The embedded model if installed, else the same
shape with random weights (configs/embedded.yaml): speed does not depend on the values. `--video-window`
times each length with each window (TimeViper.set_video_window; `all`: none).

    python benchmarks/embedded_cpu.py                      # 3,600 frames: a 1-hour video
    python benchmarks/embedded_cpu.py --frames 600,3600,10000 --video-window all,256
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table, write_results  # noqa: E402

from timeviper.data.synth_source import sample_frames, task_prompt  # noqa: E402
from timeviper.errors import CheckpointError  # noqa: E402
from timeviper.eval.runner import MAX_NEW_TOKENS  # noqa: E402
from timeviper.model import TimeViper  # noqa: E402
from timeviper.synth import make_item, split_range, write_mp4  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "embedded.yaml"


def load() -> tuple[TimeViper, str]:
    try:
        return TimeViper.from_pretrained(), "embedded"
    except CheckpointError:
        from timeviper.train import load_config
        from timeviper.train.build import build_model

        return build_model(load_config(RECIPE)).eval(), "random weights, embedded shape"


def ask(model: TimeViper, video, item: dict) -> tuple[str, float]:
    start = time.perf_counter()
    answer = model.chat(video, task_prompt(item), max_new_tokens=MAX_NEW_TOKENS["mcq"])
    return answer, time.perf_counter() - start


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="3600", help="comma list of video lengths in seconds")
    ap.add_argument("--video-window", default="all", help="comma list of windows in frames, or all (none)")
    ap.add_argument("--out", default="benchmarks/results/embedded_cpu.json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model, weights = load()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for frames in map(int, args.frames.split(",")):
            spec, item = make_item("mcq", split_range("test").start, frames)
            video = write_mp4(spec, Path(tmp) / f"{frames}.mp4")
            for window in args.video_window.split(","):
                model.set_video_window(None if window == "all" else int(window))
                ask(model, torch.from_numpy(sample_frames(spec, 16)), item)  # warm-up
                _, from_memory = ask(model, torch.from_numpy(sample_frames(spec)), item)
                answer, from_file = ask(model, str(video), item)
                rows.append({"frames": frames, "video_window": window,
                             "vision_tokens": frames * model.config.tokens_per_frame, "from_mp4_s": from_file,
                             "from_memory_s": from_memory, "frames_per_s": frames / from_file, "answer": answer,
                             "truth": item["answer"]})
                print(rows[-1])
    write_results(args.out, "embedded_cpu", rows, weights=weights, transv=model.config.transv,
                  threads=torch.get_num_threads())
    print_table(rows, ["frames", "video_window", "vision_tokens", "from_mp4_s", "from_memory_s", "frames_per_s"])


if __name__ == "__main__":
    main()
