"""Prefill and decode throughput: Nemotron-Nano-9B-v2 shape vs Qwen3-8B shape, random bf16 weights,
through HybridLM and through transformers' own classes.

    python benchmarks/llm_throughput.py                       # the full table on a GPU
    python benchmarks/llm_throughput.py --tiny --impl ours    # a smoke run on a CPU

Decode rows start from a cache filled with random keys, values and states of the given context
length (decode speed does not depend on their values), then time `--new-tokens` greedy steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_memory_gib, print_table, reset_peak_memory, timer, write_results  # noqa: E402

from timeviper.engine import DecodeStep  # noqa: E402
from timeviper.llm import HybridLM, KVCache, LMConfig  # noqa: E402
from timeviper.llm.hf_io import config_to_hf  # noqa: E402

TINY = {
    "nano": LMConfig(vocab_size=512, hidden_size=128, pattern="M-M*-M-", num_heads=4, num_kv_heads=2, head_dim=32,
                     intermediate_size=256, mamba_num_heads=8, mamba_head_dim=16, mamba_groups=2, ssm_state_size=16),
    "qwen3": LMConfig(model_type="qwen3", vocab_size=512, hidden_size=128, pattern="*-*-", num_heads=4,
                      num_kv_heads=2, head_dim=32, intermediate_size=256, mlp_act="swiglu", qk_norm=True,
                      rope_theta=1e6),
}
FULL = {"nano": LMConfig.nano_9b_v2(), "qwen3": LMConfig.qwen3_8b()}


def build(cfg: LMConfig, impl: str, device, dtype):
    """Random-weight model built directly on the device in `dtype`."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if impl == "ours":
                return HybridLM(cfg).eval()
            import transformers

            raw = config_to_hf(cfg, dtype)
            hf_cfg = transformers.AutoConfig.for_model(**raw)
            return transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa").eval()
    finally:
        torch.set_default_dtype(default)


def bench_prefill(model, impl, tokens, vocab, device, repeats, profile_to: Path | None = None) -> dict:
    ids = torch.randint(0, vocab, (1, tokens), device=device)
    row = {"tokens": tokens}

    def once():
        if impl == "ours":
            model(input_ids=ids, cache=model.new_cache(1, capacity=tokens), num_logits=1)
        else:
            model(input_ids=ids, use_cache=True, logits_to_keep=1)

    once()  # warm-up: kernel autotuning and compilation stay out of the numbers
    reset_peak_memory()
    times = []
    for _ in range(repeats):
        with timer(row):
            once()
        times.append(row["seconds"])
    row["seconds"] = sorted(times)[len(times) // 2]
    row["tokens_per_s"] = tokens / row["seconds"]
    row["peak_gib"] = peak_memory_gib()
    if profile_to is not None:  # one more prefill, its operators by time on the device
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            once()
        profile_to.parent.mkdir(parents=True, exist_ok=True)
        key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
        by_op, by_shape = prof.key_averages(), prof.key_averages(group_by_input_shape=True)
        profile_to.write_text(f"{by_op.table(sort_by=key, row_limit=30)}\n\nby input shapes:\n"
                              f"{by_shape.table(sort_by=key, row_limit=40, max_name_column_width=40)}\n")
    return row


def random_cache(model, batch, context, new_tokens):
    """A decode state as if `context` tokens had been prefilled (values random)."""
    cache = model.new_cache(batch, capacity=context + new_tokens)
    for state in cache.layers:
        if isinstance(state, KVCache):
            state.k[:, :, :context].normal_()
            state.v[:, :, :context].normal_()
            state.length = context
        elif state is not None:
            state.conv.normal_()
            state.ssm.normal_()
    cache.next_position.fill_(context)
    return cache


def bench_decode(model, impl, batch, context, new_tokens, vocab, device, graphs=True) -> dict:
    row = {"batch": batch, "context": context, "new_tokens": new_tokens,
           "cuda_graph": graphs and impl == "ours" and device == "cuda"}
    if impl == "ours":  # greedy steps through the engine's decoding step (a CUDA graph on GPUs)
        warmup = 4  # two eager steps, the capture and one replay: autotuning and capture stay out of the time
        step = DecodeStep(model, random_cache(model, batch, context, warmup + new_tokens), warmup + new_tokens,
                          use_graph=graphs)
        tok = torch.randint(0, vocab, (batch,), device=device)
        for _ in range(warmup):
            tok = step(tok).argmax(-1)
        reset_peak_memory()
        with timer(row):
            for _ in range(new_tokens):
                tok = step(tok).argmax(-1)
    else:  # transformers builds its own cache by prefilling the context: time generate with 1 and
        def run(steps):  # with new_tokens + 1 tokens, and subtract
            ids = torch.randint(0, vocab, (batch, context), device=device)
            model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)

        run(4)
        reset_peak_memory()
        first, total = {}, {}
        with timer(first):
            run(1)
        with timer(total):
            run(new_tokens + 1)
        row["seconds"] = total["seconds"] - first["seconds"]
    row["tokens_per_s"] = batch * new_tokens / row["seconds"]
    row["peak_gib"] = peak_memory_gib()
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="nano,qwen3")
    ap.add_argument("--impl", default="ours,hf", help="ours, hf or both (comma separated)")
    ap.add_argument("--prefill", default="8192,32768")
    ap.add_argument("--decode", default="8x4096,32x4096,8x32768,32x32768", help="BATCHxCONTEXT list")
    ap.add_argument("--hf-prefill", default="8192", help="prefill sizes for transformers' classes")
    ap.add_argument("--hf-decode", default="8x4096", help="decode cases for transformers' classes")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (smoke run on a CPU)")
    ap.add_argument("--no-graphs", action="store_true", help="decode eagerly, without CUDA graphs")
    ap.add_argument("--out", default="benchmarks/results/llm_throughput.json")
    ap.add_argument("--profile", type=Path, help="write DIR/prefill-MODEL-IMPL-TOKENS.txt: each prefill's operators "
                                                 "by time on the device, also split by input shapes (torch.profiler)")
    args = ap.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shapes = TINY if args.tiny else FULL
    rows = []
    for name in args.models.split(","):
        cfg = shapes[name]
        for impl in args.impl.split(","):
            model = build(cfg, impl, device, dtype)
            prefill = args.prefill if impl == "ours" else args.hf_prefill
            decode = args.decode if impl == "ours" else args.hf_decode
            cases = [("prefill", int(t)) for t in prefill.split(",") if t] + \
                    [("decode", tuple(map(int, d.split("x")))) for d in decode.split(",") if d]
            for kind, size in cases:
                row = {"model": name, "impl": impl, "phase": kind}
                try:
                    with torch.inference_mode():
                        if kind == "prefill":
                            profile_to = args.profile and args.profile / f"prefill-{name}-{impl}-{size}.txt"
                            row.update(bench_prefill(model, impl, size, cfg.vocab_size, device, args.repeats,
                                                     profile_to))
                        else:
                            row.update(bench_decode(model, impl, *size, args.new_tokens, cfg.vocab_size, device,
                                                        graphs=not args.no_graphs))
                except torch.OutOfMemoryError:
                    row.update({"tokens": size} if kind == "prefill" else {"batch": size[0], "context": size[1]})
                    row["error"] = "out of memory"
                rows.append(row)
                print(row, flush=True)
                reset_peak_memory()
            del model
            reset_peak_memory()
    print_table(rows, ["model", "impl", "phase", "tokens", "batch", "context", "cuda_graph", "tokens_per_s", "peak_gib",
                       "error"])
    write_results(args.out, "llm_throughput", rows, dtype=str(dtype), new_tokens=args.new_tokens, tiny=args.tiny)


if __name__ == "__main__":
    main()
