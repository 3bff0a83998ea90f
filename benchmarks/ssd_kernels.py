"""SSD scan on CUDA: fla's chunk_simple_gla (`ssd_scan`) against the PyTorch `ssd_chunked`.

A Nano-9B-shaped Mamba-2 mixer (128 heads x 80, 8 groups, state 128), batch 1, bf16, forward
(no grad) and forward+backward, median of CUDA-event timings after warm-up.

    python benchmarks/ssd_kernels.py [--lengths 8192 32768 65536] [--out benchmarks/results/ssd_kernels.json]
"""

import argparse
import importlib.metadata
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from timeviper.llm import ssd
from timeviper.llm.ssd import ssd_chunked, ssd_scan

H, P, G, N = 128, 80, 8, 128
IMPLS = {"fla": ssd_scan, "chunked": ssd_chunked}


def make_inputs(T: int) -> list[torch.Tensor]:
    x = torch.randn(1, T, H, P, device="cuda", dtype=torch.bfloat16)
    dt = F.softplus(torch.randn(1, T, H, device="cuda") - 3)  # float32
    A = -torch.arange(1, H + 1, device="cuda", dtype=torch.float32)  # NemotronH's A_log init
    B, C = (torch.randn(1, T, G, N, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return [t.requires_grad_() for t in (x, dt, A, B, C)]


def median_ms(fn, warmup=3, min_runs=5, max_runs=50, budget_ms=1500.0) -> float:
    for _ in range(warmup):  # includes Triton compilation and autotuning
        fn()
    times = []
    while len(times) < max_runs and (len(times) < min_runs or sum(times) < budget_ms):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def forward(scan, args):
    with torch.no_grad():
        return scan(*args)


def forward_backward(scan, args, dy):
    y, _ = scan(*args)
    return torch.autograd.grad(y, args, dy)


def measure(fn) -> dict:
    """Median time and peak memory of fn; None for both when it runs out of memory."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        ms = median_ms(fn)
    except torch.cuda.OutOfMemoryError:
        return {"ms": None, "peak_gib": None}
    return {"ms": ms, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 65536])
    parser.add_argument("--out", default="benchmarks/results/ssd_kernels.json")
    args = parser.parse_args()
    if not torch.cuda.is_available() or ssd.chunk_simple_gla is None:
        raise SystemExit("needs a CUDA device and fla (pip install fla-core)")
    torch.manual_seed(0)

    rows = []
    print(f"{'T':>6} {'impl':>8} {'mode':>8} {'ms':>9} {'Mtok/s':>8} {'peak GiB':>9} {'rel err':>8}")
    for T in args.lengths:
        inputs = make_inputs(T)
        dy = torch.randn_like(inputs[0])
        y_fla, y_ref = (forward(scan, inputs)[0].float() for scan in IMPLS.values())
        err = ((y_fla - y_ref).norm() / y_ref.norm()).item()  # fla against the float32 PyTorch path
        del y_fla, y_ref
        for impl, scan in IMPLS.items():
            for mode, fn in [("fwd", lambda: forward(scan, inputs)), ("fwd+bwd", lambda: forward_backward(scan, inputs, dy))]:
                r = {"T": T, "impl": impl, "mode": mode, **measure(fn), "rel_err": err}
                r["tokens_per_s"] = None if r["ms"] is None else T / r["ms"] * 1e3
                rows.append(r)
                ms, tps, mem = (("OOM",) * 3 if r["ms"] is None else
                                (f"{r['ms']:.2f}", f"{r['tokens_per_s'] / 1e6:.2f}", f"{r['peak_gib']:.1f}"))
                print(f"{T:>6} {impl:>8} {mode:>8} {ms:>9} {tps:>8} {mem:>9} {err:>8.1e}", flush=True)
        del inputs, dy

    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "fla": importlib.metadata.version("fla-core"),
            "shape": {"batch": 1, "heads": H, "head_dim": P, "groups": G, "state": N}, "dtype": "bfloat16"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
