"""Inference cache: prefill + decode equals the full forward, in every arrangement the engine uses."""

import pytest
import torch

from timeviper.llm import Cache, HybridLM, LMConfig
from timeviper.train.distributed import apply_activation_checkpointing

CONFIGS = {
    "hybrid": LMConfig(vocab_size=61, hidden_size=48, pattern="M-*M-M*-", num_heads=4, num_kv_heads=2, head_dim=12,
                       intermediate_size=64, mamba_num_heads=6, mamba_head_dim=8, mamba_groups=2, ssm_state_size=8,
                       chunk_size=4),
    "qwen3": LMConfig(model_type="qwen3", vocab_size=61, hidden_size=48, pattern="*-*-", num_heads=4, num_kv_heads=2,
                      head_dim=12, intermediate_size=64, mlp_act="swiglu", qk_norm=True, rope_theta=100.0),
}
CONFIGS.update({f"{name}-logn": cfg.replace(logn_attention_length=6) for name, cfg in CONFIGS.items()})


@pytest.fixture(params=list(CONFIGS))
def model(request):
    torch.manual_seed(0)
    m = HybridLM(CONFIGS[request.param]).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def full_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def prefill_then_decode(model, ids, prefix, chunk=None):
    """Logits of every position, computed by chunked prefill of `prefix` tokens and then one token at a time."""
    cache = model.new_cache(ids.shape[0])
    out = []
    with torch.no_grad():
        step = chunk or prefix
        for s in range(0, prefix, step):
            out.append(model(input_ids=ids[:, s:min(s + step, prefix)], cache=cache).logits)
        for t in range(prefix, ids.shape[1]):
            out.append(model(input_ids=ids[:, t:t + 1], cache=cache).logits)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("prefix,chunk", [(1, None), (9, None), (9, 4), (16, 5)])
def test_decode_matches_full_forward(model, prefix, chunk):
    ids = torch.randint(0, 61, (2, 20))
    assert (prefill_then_decode(model, ids, prefix, chunk) - full_logits(model, ids)).abs().max() < 1e-4


def test_packed_sequences_do_not_see_each_other(model):
    a, b = torch.randint(0, 61, (1, 7)), torch.randint(0, 61, (1, 12))
    cu = torch.tensor([0, 7, 19], dtype=torch.int32)
    with torch.no_grad():
        packed = model(input_ids=torch.cat([a, b], 1), cu_seqlens=cu).logits
    assert (packed[:, :7] - full_logits(model, a)).abs().max() < 1e-4
    assert (packed[:, 7:] - full_logits(model, b)).abs().max() < 1e-4


def test_stacked_requests_of_different_lengths_decode_like_alone(model):
    prompts = [torch.randint(0, 61, (1, n)) for n in (5, 11, 8)]
    nxt = torch.randint(0, 61, (3, 3))
    alone, caches = [], []
    with torch.no_grad():
        for i, p in enumerate(prompts):
            cache = model.new_cache(1)
            model(input_ids=p, cache=cache)
            caches.append(cache)
            alone.append(full_logits(model, torch.cat([p, nxt[i:i + 1]], 1))[:, -3:])
        batch = Cache.stack(caches, extra=3)
        steps = [model(input_ids=nxt[:, t:t + 1], cache=batch).logits for t in range(3)]
    assert (torch.cat(steps, 1) - torch.cat(alone)).abs().max() < 1e-4


def test_layer_may_see_fewer_tokens_than_the_one_before(model):
    """Dropping tokens between layers (as TransV does): later layers and their caches just see fewer."""
    ids = torch.randint(0, 61, (1, 12))
    keep = torch.tensor([0, 1, 2, 5, 8, 10, 11])
    cut = 3
    with torch.no_grad():
        h = model.embed_tokens(ids)
        pos = model.positions_for(1, 12, None, h.device)
        h = model.run_layers(h, 0, cut, pos)
        ref = model.run_layers(h[:, keep], cut, len(model.layers), pos[:, keep])
        # the same with a cache, then one decode step
        cache = model.new_cache(1)
        h2 = model.run_layers(model.embed_tokens(ids), 0, cut, pos, cache=cache)
        out = model.run_layers(h2[:, keep], cut, len(model.layers), pos[:, keep], cache=cache)
        cache.next_position += 12
        step = model(input_ids=torch.tensor([[7]]), cache=cache).logits
    assert torch.allclose(out, ref, atol=1e-5)
    for i in model.config.attention_layers:  # every token seen, plus the decoded one
        assert cache.layers[i].length == (12 if i < cut else len(keep)) + 1
    assert step.shape == (1, 1, 61)


def test_backward_and_activation_checkpointing_agree(model):
    ids = torch.randint(0, 61, (2, 10))
    model.train()

    def grads():
        model.zero_grad()
        model(input_ids=ids).logits.logsumexp(-1).mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    apply_activation_checkpointing(model.layers)
    checkpointed = grads()
    assert all(g.abs().sum() > 0 for g in plain[1:])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))
