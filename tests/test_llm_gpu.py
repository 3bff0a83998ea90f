"""HybridLM on CUDA (fla kernels, flash attention) against the CPU float32 reference path."""

import pytest
import torch

from timeviper.llm import HybridLM, LMConfig
from timeviper.transv import Span, TransV, parse_transv, run_packed

pytestmark = pytest.mark.gpu

CFG = LMConfig(vocab_size=101, hidden_size=256, pattern="M-M*-M-M*-", num_heads=8, num_kv_heads=2, head_dim=32,
               intermediate_size=512, mamba_num_heads=8, mamba_head_dim=32, mamba_groups=2, ssm_state_size=64,
               chunk_size=64)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cpu = HybridLM(CFG).eval()
    gpu = HybridLM(CFG).to("cuda", torch.bfloat16).eval()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


@pytest.mark.parametrize("length", [1, 100, 777])
def test_bf16_cuda_matches_fp32_cpu(models, length):
    cpu, gpu = models
    ids = torch.randint(0, 101, (2, length))
    with torch.no_grad():
        assert rel(gpu(input_ids=ids.cuda()).logits.cpu(), cpu(input_ids=ids).logits) < 2e-2


def test_cuda_decode_matches_full_forward(models):
    _, gpu = models
    ids = torch.randint(0, 101, (2, 300), device="cuda")
    with torch.no_grad():
        full = gpu(input_ids=ids).logits
        cache = gpu.new_cache(2)
        parts = [gpu(input_ids=ids[:, :128], cache=cache).logits, gpu(input_ids=ids[:, 128:290], cache=cache).logits]
        parts += [gpu(input_ids=ids[:, t:t + 1], cache=cache).logits for t in range(290, 300)]
    assert rel(torch.cat(parts, 1), full) < 2e-2


def test_cuda_packed_matches_separate(models):
    _, gpu = models
    a, b = torch.randint(0, 101, (1, 150), device="cuda"), torch.randint(0, 101, (1, 333), device="cuda")
    cu = torch.tensor([0, 150, 483], dtype=torch.int32, device="cuda")
    with torch.no_grad():
        packed = gpu(input_ids=torch.cat([a, b], 1), cu_seqlens=cu).logits
        assert rel(packed[:, :150], gpu(input_ids=a).logits) < 2e-2
        assert rel(packed[:, 150:], gpu(input_ids=b).logits) < 2e-2


def test_cuda_training_step_with_transv(models):
    _, gpu = models
    gpu.train()
    transv = {s.layer: TransV(CFG, s).to("cuda", torch.bfloat16) for s in parse_transv("uni_2_0.5-attn_8_0.5", CFG)}
    h = gpu.embed_tokens(torch.randint(0, 101, (1, 400), device="cuda"))
    spans = [Span(0, 4, 200, 210, 240), Span(240, 242, 380, 390, 400)]
    out, index = run_packed(gpu, transv, h, None, spans)
    out.float().square().mean().backward()
    assert all(p.grad is not None for p in gpu.layers.parameters())
    assert transv[2].alpha.grad is not None and index.shape[0] == out.shape[1]
    gpu.eval()


def test_cuda_graph_decoding_matches_eager(models):
    from timeviper.engine import DecodeStep

    _, gpu = models
    prompts = [torch.randint(0, 101, (1, n), device="cuda") for n in (37, 90)]
    tokens = torch.randint(0, 101, (6, 2), device="cuda")

    def run(use_graph):
        caches = []
        with torch.no_grad():
            for p in prompts:
                caches.append(gpu.new_cache(1))
                gpu(input_ids=p, cache=caches[-1])
            from timeviper.llm import Cache
            step = DecodeStep(gpu, Cache.stack(caches, extra=6), 6, use_graph=use_graph)
            return torch.stack([step(t).clone() for t in tokens], 1)

    assert rel(run(True), run(False)) < 1e-3
