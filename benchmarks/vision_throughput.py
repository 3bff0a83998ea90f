"""GPU benchmark of the vision path: frames/s of preprocessing, the SigLIP encoder and the projector.

Random weights at SigLIP so400m-patch14-384 shape (hidden 1152, 27 layers, 16 heads, MLP 4304, 729
patches) in bfloat16 with SDPA attention, then the projector (ToMe to 16 tokens, MLP to 4480). Preprocessing
resizes 1280x720 uint8 frames already on the GPU. Takes well under 2 minutes on an H100.

    python benchmarks/vision_throughput.py            # CUDA
    python benchmarks/vision_throughput.py --tiny     # CPU smoke run at a tiny shape
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from transformers import SiglipVisionConfig

from timeviper.vision import Projector, VisionEncoder, preprocess_frames

SHAPES = {  # encoder config, projector width and tokens per frame, source frame (height, width)
    "so400m": dict(encoder=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                num_attention_heads=16, image_size=384, patch_size=14),
                   llm_dim=4480, num_tokens=16, frame=(720, 1280)),
    "tiny": dict(encoder=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              image_size=56, patch_size=14),
                 llm_dim=96, num_tokens=4, frame=(48, 64)),
}


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn, device: torch.device, min_seconds: float) -> float:
    """Warm up twice, time one call to size the run, then average over enough calls to fill min_seconds."""
    for _ in range(2):
        fn()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    calls = max(3, math.ceil(min_seconds / (time.perf_counter() - start)))
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - start) / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny float32 shape on CPU: a smoke run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per stage and batch size")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vision_throughput.json"))
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("vision_throughput: needs a CUDA device (use --tiny for a CPU smoke run)")

    began = time.perf_counter()
    shape = SHAPES["tiny" if args.tiny else "so400m"]
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    torch.manual_seed(0)
    config = SiglipVisionConfig(**shape["encoder"])
    config._attn_implementation = "sdpa"
    with torch.device(device):
        encoder = VisionEncoder(config).to(dtype)
        projector = Projector(config.hidden_size, shape["llm_dim"], shape["num_tokens"]).to(dtype).eval()

    rows = []
    for batch in args.batch_sizes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        frames = torch.randint(0, 256, (batch, *shape["frame"], 3), dtype=torch.uint8, device=device)
        pixels = preprocess_frames(frames, config.image_size, dtype=dtype)
        features = encoder.encode(pixels, chunk_size=batch)
        with torch.no_grad():
            stages = {
                "preprocess": lambda: preprocess_frames(frames, config.image_size, dtype=dtype),
                "encoder": lambda: encoder.encode(pixels, chunk_size=batch),
                "projector": lambda: projector(features),
            }
            seconds = {name: seconds_per_call(fn, device, args.seconds) for name, fn in stages.items()}
        row = dict(batch=batch, **{f"{name}_frames_per_s": round(batch / s, 1) for name, s in seconds.items()},
                   total_frames_per_s=round(batch / sum(seconds.values()), 1))
        if device.type == "cuda":
            row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del frames, pixels, features

    report = dict(
        shape="tiny" if args.tiny else "so400m-patch14-384", encoder=shape["encoder"], llm_dim=shape["llm_dim"],
        num_tokens=shape["num_tokens"], source_frame=shape["frame"], dtype=str(dtype).removeprefix("torch."),
        attention=encoder.config._attn_implementation,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__, results=rows, wall_seconds=round(time.perf_counter() - began, 1),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'batch':>6}{'preprocess':>12}{'encoder':>10}{'projector':>11}{'total':>9}   frames/s")
    for r in rows:
        print(f"{r['batch']:>6}{r['preprocess_frames_per_s']:>12}{r['encoder_frames_per_s']:>10}"
              f"{r['projector_frames_per_s']:>11}{r['total_frames_per_s']:>9}")
    print(f"wrote {args.out} after {report['wall_seconds']} s")


if __name__ == "__main__":
    main()
