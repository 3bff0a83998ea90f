"""Streaming staged prefill equals the unchunked forward; decoding and sampling."""

import pytest
import torch

from timeviper.engine import decode, prefill, sample
from timeviper.llm import HybridLM, KVCache, LMConfig
from timeviper.transv import Span, TransV, parse_transv, run_packed

HYBRID = LMConfig(vocab_size=53, hidden_size=32, pattern="M-M*-M-*-M-", num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=48, mamba_num_heads=4, mamba_head_dim=8, mamba_groups=2, ssm_state_size=8,
                  chunk_size=8)
QWEN = LMConfig(model_type="qwen3", vocab_size=53, hidden_size=32, pattern="*-*-*-*-", num_heads=4, num_kv_heads=2,
                head_dim=8, intermediate_size=48, mlp_act="swiglu", qk_norm=True, rope_theta=100.0)
HYBRID_LOGN = HYBRID.replace(logn_attention_length=8)  # every query past the 8th token scaled, TransV's too
SPECS = ["none", "uni_2_0.5", "td_2_0.5", "uni_2_0.5-attn_7_0.75", "uni_1_0.3-attn_3_0.5-tdattn_7_0.5",
         "td_2_1", "uni_1_0.5-tdattn_7_1"]  # p = 1: every vision token leaves


def build(cfg, spec):
    torch.manual_seed(0)
    llm = HybridLM(cfg).eval()
    transv = {s.layer: TransV(cfg, s) for s in parse_transv(spec, cfg)}
    with torch.no_grad():
        for m in transv.values():
            if m.spec.transfers:
                m.alpha.fill_(0.6)
    return llm, transv


def unchunked_logits(llm, transv, prefix, vision, instruction, extra=None):
    parts = [prefix, vision, instruction] + ([] if extra is None else [extra])
    h = torch.cat(parts, 1)
    s, v, m = prefix.shape[1], vision.shape[1], instruction.shape[1]
    positions = torch.arange(h.shape[1])[None]
    out, _ = run_packed(llm, transv, h, positions, [Span(0, s, s + v, s + v + m, h.shape[1])])
    return llm.head(out)[1]


@pytest.mark.parametrize("cfg", [HYBRID, QWEN, HYBRID_LOGN], ids=["hybrid", "qwen3", "hybrid-logn"])
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("chunk", [7, 64])
def test_chunked_staged_prefill_matches_unchunked(cfg, spec, chunk):
    if "attn_7" in spec and cfg is QWEN:
        spec = spec.replace("attn_7", "attn_6").replace("attn_3", "attn_2")
    llm, transv = build(cfg, spec)
    torch.manual_seed(1)
    prefix, vision, instruction = torch.randn(1, 3, 32), torch.randn(1, 45, 32), torch.randn(1, 5, 32)
    with torch.no_grad():
        cache = llm.new_cache(1)
        got = prefill(llm, transv, prefix, vision.split(chunk, dim=1), instruction, cache)
        ref = unchunked_logits(llm, transv, prefix, vision, instruction)
        assert (got - ref[:, -1]).abs().max() < 1e-4
        # one decoded token continues the same sequence
        token = torch.randn(1, 1, 32)
        step = llm(inputs_embeds=token, cache=cache).logits[:, -1]
        ref_step = unchunked_logits(llm, transv, prefix, vision, instruction, token)[:, -1]
        assert (step - ref_step).abs().max() < 1e-4
        assert int(cache.next_position) == 3 + 45 + 5 + 1


def test_caches_shrink_after_transv_layers():
    llm, transv = build(HYBRID, "uni_2_0.5-attn_7_0.75")
    with torch.no_grad():
        cache = llm.new_cache(1)
        prefill(llm, transv, torch.randn(1, 3, 32), torch.randn(1, 40, 32).split(16, 1), torch.randn(1, 5, 32), cache)
    lengths = {i: c.length for i, c in enumerate(cache.layers) if isinstance(c, KVCache)}
    assert lengths == {3: 3 + 20 + 5, 7: 3 + 5 + 5}  # layer 3 sees half the vision, layer 7 a quarter of that


def test_sampling():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])
    assert sample(logits).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    draws = {int(sample(logits[:1], temperature=1.0, top_p=0.5, generator=g)) for _ in range(50)}
    assert draws == {1}  # top-p 0.5 keeps only the dominant token
    draws = {int(sample(logits[:1], temperature=5.0, generator=g)) for _ in range(200)}
    assert draws == {0, 1, 2}


def test_decode_stops_per_row():
    llm, _ = build(HYBRID, "none")
    ids = torch.randint(0, 53, (2, 6), generator=torch.Generator().manual_seed(3))

    def run(stop_ids):
        with torch.no_grad():
            cache = llm.new_cache(2)
            first = llm(input_ids=ids, cache=cache).logits[:, -1]
            return decode(llm, cache, first, max_new_tokens=5, stop_ids=stop_ids)

    greedy = run(set())
    assert [len(r) for r in greedy] == [5, 5]
    stop = greedy[0][2]
    stopped = run({stop})
    assert stopped[0] == greedy[0][:greedy[0].index(stop)]
    assert stopped[1] == (greedy[1][:greedy[1].index(stop)] if stop in greedy[1] else greedy[1])
