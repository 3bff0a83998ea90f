"""How many frames one GPU reads: Nemotron-Nano-9B-v2 + SigLIP-so400m shapes, random bf16 weights.

For each TransV setting and frame count, frames are fed as uint8 tensors (384x384, made on the GPU
chunk by chunk, never all in memory) through preprocessing, the ViT, ToMe (16 tokens per frame), the
projector and the streaming staged prefill, then a few tokens are decoded. Reports seconds (vision
and LLM separately), peak GPU memory and the KV tokens cached. `--vision tokens` skips the ViT and feeds
random vision tokens (the LLM side alone).

    python benchmarks/capacity.py --frames 2000,10000,100000 --transv none,uni_7_0.5,uni_7_0.5-attn_39_0.9
    python benchmarks/capacity.py --tiny --frames 64 --vision frames        # CPU smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_memory_gib, print_table, reset_peak_memory, sync, write_results  # noqa: E402

from timeviper import engine  # noqa: E402
from timeviper.llm import LMConfig  # noqa: E402
from timeviper.model import TimeViper, TimeViperConfig  # noqa: E402
from timeviper.prompts import TextTokenizer, encode_prompt  # noqa: E402
from timeviper.synth.tokenizer import train_tokenizer  # noqa: E402

SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
              image_size=384, patch_size=14)
WARMUP_FRAMES = 64
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
                   patch_size=14)
TINY_LLM = LMConfig(vocab_size=1024, hidden_size=64, pattern="M-M-M-M*-M-M-M*-", num_heads=4, num_kv_heads=2,
                    head_dim=16, intermediate_size=128, mamba_num_heads=4, mamba_head_dim=16, mamba_groups=2,
                    ssm_state_size=16)


def build(tiny: bool, device, dtype) -> TimeViper:
    llm, vision = (TINY_LLM, TINY_VISION) if tiny else (LMConfig.nano_9b_v2(), SO400M)
    tok = TextTokenizer(train_tokenizer(vocab_size=1024), "timeviper")
    cfg = TimeViperConfig(llm.replace(vocab_size=max(llm.vocab_size, tok.vocab_size)), vision, 16, "none",
                          chat_template="timeviper")
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = TimeViper(cfg, tok).eval()
    finally:
        torch.set_default_dtype(default)
    model.vision.model.config._attn_implementation = "sdpa"
    return model


def run(model: TimeViper, frames: int, chunk: int, vision: str, new_tokens: int) -> dict:
    size, device = model.vision.config.image_size, model.device
    gen = torch.Generator(device).manual_seed(0)
    timing = {"vision_s": 0.0}

    def frame_chunks():
        for start in range(0, frames, chunk):
            n = min(chunk, frames - start)
            yield torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, device=device, generator=gen)

    def vision_chunks():
        shown = 0
        for f in frame_chunks():
            sync()
            t = time.perf_counter()
            tokens = model.embed_frames(f, shown + torch.arange(len(f)))[None]  # frames shown once a second
            shown += len(f)
            sync()
            timing["vision_s"] += time.perf_counter() - t
            yield tokens

    def token_chunks():
        for start in range(0, frames, chunk):
            n = min(chunk, frames - start) * model.config.tokens_per_frame
            yield torch.randn(1, n, model.config.llm.hidden_size, device=device, dtype=model.dtype, generator=gen)

    tok = model.tokenizer
    enc = encode_prompt(tok, "What happens in the video?")
    embed = model.llm.embed_tokens(torch.tensor(enc.ids, device=device)[None])
    cache = model.llm.new_cache(1)
    sync()
    start = time.perf_counter()
    logits = engine.prefill(model.llm, model.transv_layers, embed[:, :enc.vision_at],
                            vision_chunks() if vision == "frames" else token_chunks(), embed[:, enc.vision_at:], cache)
    sync()
    prefill_s = time.perf_counter() - start
    out = engine.decode(model.llm, cache, logits, new_tokens, set())
    sync()
    total_s = time.perf_counter() - start
    return {"prefill_s": prefill_s, "vision_s": timing["vision_s"] if vision == "frames" else None,
            "llm_s": prefill_s - timing["vision_s"], "decode_s": total_s - prefill_s, "total_s": total_s,
            "frames_per_s": frames / prefill_s, "kv_tokens": cache.kv_tokens(), "cache_gib": cache.nbytes() / 2**30,
            "generated": len(out[0])}


def predict_seconds(done: list[dict], frames: int) -> float:
    """Seconds a run of `frames` takes, from the runs before it: t = b n + c n^2 (attention grows with n^2)
    through the last two, or all of it quadratic from a single run (pessimistic)."""
    n2, t2 = done[-1]["frames"], done[-1]["total_s"]
    if len(done) == 1:
        return t2 * (frames / n2) ** 2
    n1, t1 = done[-2]["frames"], done[-2]["total_s"]
    c = max(0.0, (t2 / n2 - t1 / n1) / (n2 - n1))  # from t/n = b + c n at both points
    b = max(0.0, t2 / n2 - c * n2)
    return b * frames + c * frames**2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="2000,10000,100000")
    ap.add_argument("--transv", default="none,uni_7_0.5,uni_7_0.5-attn_39_0.9")
    ap.add_argument("--vision", choices=("frames", "tokens"), default="frames")
    ap.add_argument("--chunk", type=int, default=1024, help="frames per streamed chunk")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip runs predicted to end after this many seconds")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/capacity.json")
    args = ap.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build(args.tiny, device, dtype)
    began, rows = time.perf_counter(), []
    for spec in args.transv.split(","):
        if args.tiny:
            spec = spec.replace("_7_", "_3_").replace("_39_", "_14_")
        model.set_transv(spec)
        with torch.inference_mode():  # compiles and autotunes the kernels of this setting, untimed
            run(model, WARMUP_FRAMES, args.chunk, args.vision, 2)
        done = []
        for frames in map(int, args.frames.split(",")):
            row = {"transv": spec, "frames": frames, "vision": args.vision}
            predicted = predict_seconds(done, frames) if done else 0.0
            if time.perf_counter() - began + predicted > args.budget_s:
                row["error"] = f"skipped: predicted {predicted:.0f} s exceeds the time budget"
            else:
                reset_peak_memory()
                try:
                    with torch.inference_mode():
                        row.update(run(model, frames, args.chunk, args.vision, args.new_tokens))
                    row["peak_gib"] = peak_memory_gib()
                    done.append(row)
                except torch.OutOfMemoryError:
                    row["error"] = "out of memory"
            rows.append(row)
            print(row, flush=True)
            write_results(args.out, "capacity", rows, chunk=args.chunk, tiny=args.tiny)  # kept if cut short
    print_table(rows, ["transv", "frames", "vision_s", "llm_s", "total_s", "frames_per_s", "kv_tokens", "peak_gib",
                       "error"])


if __name__ == "__main__":
    main()
