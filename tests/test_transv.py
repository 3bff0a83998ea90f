"""TransV: spec strings, which tokens drop, transfer, shrinking sequences and caches, gradients."""

import itertools

import pytest
import torch

from timeviper.errors import ConfigError
from timeviper.llm import HybridLM, KVCache, LMConfig
from timeviper.transv import (Span, TransV, TransVSpec, apply_packed, attention_drop, attention_logits,
                              attention_scores, parse_transv, run_packed, uniform_drop)

CFG = LMConfig(vocab_size=53, hidden_size=32, pattern="M-M*-M-*-M-", num_heads=4, num_kv_heads=2, head_dim=8,
               intermediate_size=48, mamba_num_heads=4, mamba_head_dim=8, mamba_groups=2, ssm_state_size=8,
               chunk_size=8)


def test_parse_paper_spec():
    specs = parse_transv("uni_7_0.5-attn_39_0.9", LMConfig.nano_9b_v2())
    assert specs == [TransVSpec("uni", 7, 0.5), TransVSpec("attn", 39, 0.9)]
    assert [s.strategy for s in specs] == ["uniform", "attention"] and all(s.transfers for s in specs)
    assert parse_transv("none") == [] and parse_transv(None) == []
    assert not parse_transv("td_7_0.5")[0].transfers


@pytest.mark.parametrize("spec,message", [
    ("uni_7", "expected kind_layer_p"), ("foo_7_0.5", "expected kind_layer_p"), ("uni_7_1.5", "in \\[0, 1\\]"),
    ("attn_7_0.9", "layer 7 is 'mamba'"), ("uni_99_0.5", "outside"), ("uni_3_0.5-td_3_0.2", "twice"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_transv(spec, LMConfig.nano_9b_v2())


def test_uniform_drop_is_even_exact_and_chunk_invariant():
    whole = uniform_drop(0, 101, 0.5)
    assert whole.sum() == 50 and whole[1::2].all() and not whole[0::2].any()
    assert uniform_drop(0, 100, 0.9).sum() == 90
    for p in (0.3, 0.5, 0.9):
        full = uniform_drop(0, 97, p)
        pieces = torch.cat([uniform_drop(s, min(13, 97 - s), p) for s in range(0, 97, 13)])
        assert torch.equal(full, pieces)


def test_attention_drop_removes_the_least_attended():
    scores = torch.tensor([0.5, 0.1, 0.9, 0.05, 0.3])
    assert attention_drop(scores, 0.4).tolist() == [False, True, False, True, False]
    assert not attention_drop(scores, 0.0).any() and attention_drop(scores, 1.0).all()


def test_scores_and_drops_of_several_samples_are_each_sample_s_own():
    torch.manual_seed(0)
    lengths = [3, 1, 6, 4]
    sample = torch.repeat_interleave(torch.arange(4), torch.tensor(lengths))
    logits, scores = torch.randn(2, 14), torch.rand(14)
    torch.testing.assert_close(attention_scores(logits, sample),
                               torch.cat([attention_scores(part) for part in logits.split(lengths, 1)]))
    for p in (0.0, 0.4, 0.5, 0.9, 1.0):
        assert torch.equal(attention_drop(scores, p, sample),
                           torch.cat([attention_drop(part, p) for part in scores.split(lengths)]))


def test_attention_logits_are_the_layers_own():
    torch.manual_seed(0)
    llm = HybridLM(CFG)
    block = llm.layers[3]
    h = torch.randn(1, 9, 32)
    logits = attention_logits(block.mixer, block.norm, h[:, -1:], None, h[:, :6], None)[:, 0]
    q, k, _ = block.mixer.qkv(block.norm(h), None)
    k = k.repeat_interleave(2, dim=1)
    expected = torch.einsum("hd,hnd->hn", q[0, :, -1], k[0, :, :6]) / 8 ** 0.5
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(attention_scores(logits).sum(), torch.tensor(1.0))


def _span(s, v, m, r=0):
    return Span(0, s, s + v, s + v + m, s + v + m + r)


@pytest.mark.parametrize("kind", ["uni", "attn"])
def test_alpha_zero_equals_plain_dropping(kind):
    torch.manual_seed(0)
    llm = HybridLM(CFG)
    h = torch.randn(1, 3 + 20 + 5, 32)
    with_transfer = TransV(CFG, TransVSpec(kind, 3, 0.5))
    without = TransV(CFG, TransVSpec("td" if kind == "uni" else "tdattn", 3, 0.5))
    a = apply_packed(with_transfer, llm.layers[3], h, None, [_span(3, 20, 5)])
    b = apply_packed(without, llm.layers[3], h, None, [_span(3, 20, 5)])
    assert torch.equal(a[0], b[0]) and a[2] == b[2] and a[0].shape[1] == 28 - 10
    assert a[2][0] == Span(0, 3, 13, 18, 18)


def test_transfer_changes_only_the_instruction():
    torch.manual_seed(0)
    llm = HybridLM(CFG)
    module = TransV(CFG, TransVSpec("uni", 3, 0.5))
    with torch.no_grad():
        module.alpha.fill_(0.7)
    h = torch.randn(1, 3 + 10 + 4 + 2, 32)
    out, _, spans, keep = apply_packed(module, llm.layers[3], h, None, [_span(3, 10, 4, 2)])
    kept = h[:, keep]
    sp = spans[0]
    assert torch.equal(out[:, :sp.vision_end], kept[:, :sp.vision_end])  # system + kept vision untouched
    assert not torch.allclose(out[:, sp.vision_end:sp.instruction_end], kept[:, sp.vision_end:sp.instruction_end])
    assert torch.equal(out[:, sp.instruction_end:], kept[:, sp.instruction_end:])  # response untouched


def test_packed_samples_drop_and_transfer_separately():
    """Samples packed together give what each gives alone, also one without vision tokens and one whose
    single vision token is never dropped (floor(1 * 0.5) = 0)."""
    torch.manual_seed(0)
    llm = HybridLM(CFG)
    transv = {2: TransV(CFG, TransVSpec("uni", 2, 0.5)), 7: TransV(CFG, TransVSpec("attn", 7, 0.5))}
    with torch.no_grad():
        for m in transv.values():
            m.alpha.fill_(0.5)
    layouts = [(2, 8, 3, 2), (1, 0, 4, 2), (1, 12, 4, 1), (2, 1, 3, 1)]  # system, vision, instruction, response
    alone, spans, start = [], [], 0
    for layout in layouts:
        h = torch.randn(1, sum(layout), 32)
        out, index = run_packed(llm, transv, h, None, [_span(*layout)])
        alone.append((h, out, index + start))
        spans.append(Span(*(start + x for x in (0, *itertools.accumulate(layout)))))
        start += sum(layout)
    out, index = run_packed(llm, transv, torch.cat([h for h, *_ in alone], 1), None, spans)
    assert torch.allclose(out, torch.cat([o for _, o, _ in alone], 1), atol=1e-5)
    assert torch.equal(index, torch.cat([i for *_, i in alone]))


def test_packed_samples_drop_their_own_shares():
    """Per-sample drop shares at a uniform layer (training with drawn shares) give what each sample gives alone
    with that share as its spec's p; the attention-guided layer keeps its own p."""
    torch.manual_seed(0)
    llm = HybridLM(CFG)
    uni, attn = TransV(CFG, TransVSpec("uni", 2, 0.5)), TransV(CFG, TransVSpec("attn", 7, 0.5))
    with torch.no_grad():
        for m in (uni, attn):
            m.alpha.fill_(0.5)
    layouts, shares = [(2, 12, 3, 2), (1, 12, 4, 2), (1, 9, 4, 1)], [0.25, 0.75, 0.0]
    alone, spans, start = [], [], 0
    for layout, p in zip(layouts, shares):
        own = TransV(CFG, TransVSpec("uni", 2, p))
        own.load_state_dict(uni.state_dict())
        h = torch.randn(1, sum(layout), 32)
        alone.append((h, *run_packed(llm, {2: own, 7: attn}, h, None, [_span(*layout)])))
        spans.append(Span(*(start + x for x in (0, *itertools.accumulate(layout)))))
        start += sum(layout)
    assert len(alone[0][2]) != len(alone[1][2])  # the shares differ in what they keep
    out, index = run_packed(llm, {2: uni, 7: attn}, torch.cat([h for h, *_ in alone], 1), None, spans,
                            {2: shares})
    assert torch.allclose(out, torch.cat([o for _, o, _ in alone], 1), atol=1e-5)
    assert len(index) == sum(len(i) for *_, i in alone)


def test_gradients_reach_alpha_and_cross_attention():
    torch.manual_seed(0)
    llm = HybridLM(CFG)
    module = TransV(CFG, TransVSpec("uni", 3, 0.5))
    h = torch.randn(1, 3 + 10 + 4, 32)
    out, *_ = apply_packed(module, llm.layers[3], h, None, [_span(3, 10, 4)])
    out.square().sum().backward()
    assert module.alpha.grad.abs() > 0  # at alpha = 0 only alpha moves first
    with torch.no_grad():
        module.alpha.fill_(0.3)
    module.zero_grad()
    out, *_ = apply_packed(module, llm.layers[3], h, None, [_span(3, 10, 4)])
    out.square().sum().backward()
    for p in (module.q_proj.weight, module.k_proj.weight, module.v_proj.weight, module.o_proj.weight):
        assert p.grad.abs().sum() > 0
