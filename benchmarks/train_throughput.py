"""Training throughput: Nemotron-Nano-9B-v2 + SigLIP-so400m shapes (random weights, SigLIP frozen), TransV
uni_7_0.5-attn_39_0.9, trained as `timeviper train` trains stage 2 (projector, LLM and TransV; AdamW;
activation checkpointing; bf16 compute; FSDP2 over several GPUs).

    torchrun --standalone --nproc_per_node 2 benchmarks/train_throughput.py                # FSDP2, 2 GPUs
    torchrun --standalone --nproc_per_node 1 benchmarks/train_throughput.py --bf16-weights  # 1 GPU
    torchrun --standalone --nproc_per_node 2 benchmarks/train_throughput.py --tiny         # CPU smoke run

A case is one micro-batch per GPU: a synthetic sample of 4k, 8k or 16k tokens, or two 8k samples packed
(`8192x2`), made with timeviper.data.packing.collate: system tokens, F x 16 vision tokens of F random uint8
frames at the encoder's 384 px, an instruction and an answer (the loss tokens). Each GPU trains on its own
micro-batch (data parallel); after `--warmup` steps, `--steps` optimizer steps are timed one by one
(median reported). Batches sit on the GPU before timing: their copy is left out.

Memory. AdamW over fp32 master weights takes 16 bytes per trained parameter (weights, gradients, two
moments): 144 GB for the 9.0B trained here, more than one H200 holds; FSDP2 over N GPUs puts 1/N on each.
`--bf16-weights` keeps weights, gradients and AdamW moments in bf16 (8 bytes per parameter) so that one GPU
fits: the same computation per step, for measuring throughput only (bf16 weights lose small updates). The
script refuses a setup whose parameter states alone take more than 70% of a GPU's memory.

MFU: model FLOPs per GPU and second (TimeViper.flops_per_token with each sample's shape: the frozen SigLIP
forward, the sequence TransV shortens, the LM head over the answer; no recomputation) over the dense bf16
spec (989 TFLOP/s on H100/H200) and over the ~790 TFLOP/s measured on the H200. Where fla refuses the SSD
backward (Hopper with Triton 3.4-3.7.0) the Mamba layers train through the pure PyTorch chunked SSD.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from capacity import SO400M, TINY_LLM, TINY_VISION  # noqa: E402
from common import peak_memory_gib, print_table, reset_peak_memory, timer, write_results  # noqa: E402

from timeviper.data.packing import collate  # noqa: E402
from timeviper.data.records import IGNORE_INDEX, VISION_SLOT_ID, Sample  # noqa: E402
from timeviper.llm import LMConfig  # noqa: E402
from timeviper.llm.ssd import fla_backward_supported  # noqa: E402
from timeviper.model import TimeViper, TimeViperConfig  # noqa: E402
from timeviper.train.config import STAGE_TRAINABLE, OptimConfig  # noqa: E402
from timeviper.train.distributed import (  # noqa: E402
    all_reduce_sum,
    close_distributed,
    init_distributed,
    parallelize,
    print0,
)
from timeviper.train.logger import peak_flops  # noqa: E402
from timeviper.train.optim import build_optimizer, scale_and_clip_grads_, set_trainable  # noqa: E402

MEASURED_PEAK = 790e12  # bf16 dense FLOP/s measured on the H200 (DESIGN.md)
TOKENS_PER_FRAME = 16
STATE_SHARE = 0.7  # the largest share of a GPU's memory the parameter states may take
SHAPES = {  # llm, vision, TransV, (system, instruction, least answer) tokens per sample, default cases
    "full": (LMConfig.nano_9b_v2(), SO400M, "uni_7_0.5-attn_39_0.9", (32, 64, 128), "4096,8192,16384,8192x2"),
    "tiny": (TINY_LLM, TINY_VISION, "uni_3_0.5-attn_14_0.9", (4, 8, 8), "256,512,256x2"),
}


def fake_sample(tokens: int, layout: tuple[int, int, int], size: int, vocab: int, g: torch.Generator) -> Sample:
    """`tokens` tokens: system, as many frames' vision tokens as fit, instruction, answer (the rest)."""
    system, instruction, least_answer = layout
    frames = (tokens - system - instruction - least_answer) // TOKENS_PER_FRAME
    vision = frames * TOKENS_PER_FRAME
    ids = torch.randint(1, vocab, (tokens,), generator=g)
    ids[system:system + vision] = VISION_SLOT_ID
    labels = torch.full_like(ids, IGNORE_INDEX)
    answer = slice(system + vision + instruction, tokens)
    labels[answer] = ids[answer]
    video = torch.randint(0, 256, (frames, size, size, 3), dtype=torch.uint8, generator=g)
    return Sample(f"{tokens}-{frames}", ids, labels, (system, system + vision), answer.start, video)


def build(shape: str, device, dtype) -> TimeViper:
    llm, vision, transv, *_ = SHAPES[shape]
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = TimeViper(TimeViperConfig(llm, vision, TOKENS_PER_FRAME, transv))
    finally:
        torch.set_default_dtype(default)
    set_trainable(model, STAGE_TRAINABLE[2])
    return model


def check_memory(shape: str, bf16_weights: bool, env) -> dict:
    """Parameter counts; exits when the states of the parameters do not fit the GPUs."""
    probe = build(shape, "meta", torch.float32)
    trained = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in probe.parameters()) - trained
    # weights + gradients + 2 AdamW moments per trained parameter; weights only for the frozen SigLIP
    state = ((8 * trained + 2 * frozen) if bf16_weights else (16 * trained + 4 * frozen)) / env.world_size
    if env.device.type == "cuda":
        memory = torch.cuda.get_device_properties(env.device).total_memory
        if state > STATE_SHARE * memory:
            hint = "" if bf16_weights else ", or pass --bf16-weights (8 bytes per parameter)"
            sys.exit(f"refused: {trained / 1e9:.1f}B trained parameters with "
                     f"{'bf16' if bf16_weights else 'fp32 master'} weights need {state / 2**30:.0f} GiB of "
                     f"parameter states per GPU over {env.world_size} GPU(s), more than {STATE_SHARE:.0%} of "
                     f"{memory / 2**30:.0f} GiB: use more GPUs (FSDP2 shards them){hint}")
    return {"trained_params": trained, "frozen_params": frozen, "param_state_gib_per_gpu": state / 2**30}


def precision(bf16_weights: bool, env) -> str:
    if bf16_weights:
        return "bf16 weights, gradients and AdamW moments"
    if env.device.type != "cuda":
        return "fp32"
    return "fp32 master weights, " + ("FSDP2 bf16 compute" if env.world_size > 1 else "bf16 autocast")


def make_batch(case: str, model: TimeViper, layout: tuple[int, int, int], env) -> tuple[dict, float]:
    """This rank's micro-batch for `case` ("8192" or "8192x2") on its device, and its model FLOPs."""
    tokens, _, count = case.partition("x")
    g = torch.Generator().manual_seed(env.rank)  # every rank its own data
    size, vocab = model.vision.config.image_size, model.config.llm.vocab_size
    samples = [fake_sample(int(tokens), layout, size, vocab, g) for _ in range(int(count or 1))]
    flops = sum(len(s) * model.flops_per_token(len(s), len(s.frames), int((s.labels != IGNORE_INDEX).sum()))
                for s in samples)
    batch = {key: [f.to(env.device) for f in value] if key == "frames" else
             value.to(env.device) if isinstance(value, torch.Tensor) else value
             for key, value in collate(samples).items()}
    return batch, flops


def train_step(model, optimizer, params, batch: dict, autocast: bool) -> float:
    """One optimizer step on one micro-batch per rank, as Trainer._train_step does; the mean token loss."""
    with torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=autocast):
        loss, count = model.forward_train(batch)
    loss.backward()
    loss_sum, tokens = all_reduce_sum(torch.stack([loss.detach().double(), count.double()])).tolist()
    scale_and_clip_grads_(params, 1.0 / tokens, OptimConfig().grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / tokens


def measure(step, batch: dict, flops: float, args, env) -> dict:
    """Time `args.steps` calls of `step(batch)` after `args.warmup` more: step time, rates, MFU."""
    row = {"tokens": batch["input_ids"].shape[1], "frames": sum(f.shape[0] for f in batch["frames"])}
    for _ in range(args.warmup):
        step(batch)
    times = []
    for _ in range(args.steps):
        with timer(row, "step_s"):
            row["loss"] = step(batch)
        times.append(row["step_s"])
    row["step_s"] = statistics.median(times)
    rate = flops / row["step_s"]
    row |= {"tokens_per_s_per_gpu": row["tokens"] / row["step_s"], "tflop_per_step_per_gpu": flops / 1e12,
            "tflops_per_gpu": rate / 1e12}
    if env.device.type == "cuda":
        spec = peak_flops(env.device)
        row |= {"mfu_spec": rate / spec if spec else None, "mfu_measured": rate / MEASURED_PEAK}
    return row


def max_over_ranks(value: float | None, device) -> float | None:
    if value is None or not dist.is_initialized():
        return value
    box = torch.tensor(value, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return box.item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=None, help="tokens per sample, xK for K packed samples "
                                                  "(default 4096,8192,16384,8192x2; tiny 256,512,256x2)")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per case")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    ap.add_argument("--bf16-weights", action="store_true", help="bf16 weights and AdamW moments (fits one GPU)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (smoke run on a CPU)")
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = ap.parse_args(argv)

    env = init_distributed()
    shape = "tiny" if args.tiny else "full"
    _, _, transv, layout, cases = SHAPES[shape]
    on_gpu = env.device.type == "cuda"
    meta = {"world_size": env.world_size, "shape": shape, "transv": transv,
            "precision": precision(args.bf16_weights, env), "activation_checkpointing": True,
            "ssd_backward": "fla" if on_gpu and fla_backward_supported() else "PyTorch chunked",
            "peak_flops_spec": peak_flops(env.device), "peak_flops_measured": MEASURED_PEAK if on_gpu else None,
            "steps": args.steps, "warmup": args.warmup, **check_memory(shape, args.bf16_weights, env)}
    print0(meta)

    torch.manual_seed(0)
    model = build(shape, env.device, torch.bfloat16 if args.bf16_weights else torch.float32)
    plan = {case: make_batch(case, model, layout, env) for case in (args.cases or cases).split(",")}
    model = parallelize(model, list(model.llm.layers), env, bf16=on_gpu, activation_checkpointing=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(model, OptimConfig())
    autocast = on_gpu and env.world_size == 1  # as the trainer: FSDP2's mixed precision computes in bf16 otherwise

    rows = []
    for case, (batch, flops) in plan.items():
        reset_peak_memory()
        try:
            row = {"case": case, **measure(lambda b: train_step(model, optimizer, params, b, autocast),
                                           batch, flops, args, env)}
        except torch.OutOfMemoryError:
            if env.world_size > 1:
                raise  # the other ranks wait in a collective: torchrun ends them all
            optimizer.zero_grad(set_to_none=True)
            row = {"case": case, "error": "out of memory"}
        row["peak_gib"] = max_over_ranks(peak_memory_gib(), env.device)
        rows.append(row)
        print0(row)
        if env.is_main:  # after every case: a run cut short keeps what it measured
            write_results(args.out, "train_throughput", rows, **meta)
    if env.is_main:
        print_table(rows, ["case", "tokens", "frames", "step_s", "tokens_per_s_per_gpu", "tflops_per_gpu", "mfu_spec",
                           "mfu_measured", "peak_gib", "loss", "error"])
    close_distributed()


if __name__ == "__main__":
    main()
