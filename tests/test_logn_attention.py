"""Logn attention scaling: a naive softmax reference, no change within the length, config round trips."""

import math

import pytest
import torch
from attention_reference import naive_attention

from timeviper.errors import CheckpointError, ConfigError
from timeviper.llm import HybridLM, LMConfig
from timeviper.llm.attention import Attention, logn_scale
from timeviper.transv import TransV, TransVSpec

CFG = LMConfig(vocab_size=61, hidden_size=32, pattern="M-*-M*-", num_heads=4, num_kv_heads=2, head_dim=8,
               intermediate_size=48, mamba_num_heads=4, mamba_head_dim=8, mamba_groups=2, ssm_state_size=8,
               chunk_size=4)


def test_logn_scale_is_one_within_the_length_then_log_ratio():
    positions = torch.tensor([[0, 7, 15, 16, 63, 1023]])
    expected = [1.0, 1.0, 1.0, math.log(17) / math.log(16), math.log(64) / math.log(16), math.log(1024) / math.log(16)]
    assert torch.allclose(logn_scale(positions, 16), torch.tensor([expected]))


def test_causal_attention_matches_a_naive_scaled_softmax():
    torch.manual_seed(0)
    attn = Attention(CFG.replace(logn_attention_length=4))
    x, positions = torch.randn(1, 13, 32), torch.arange(13)[None]
    with torch.no_grad():
        got = attn(x, positions)
        plain = Attention(CFG)
        plain.load_state_dict(attn.state_dict())
        q, k, v = plain.qkv(x, None)
        k, v = (t.repeat_interleave(2, dim=1)[0] for t in (k, v))
        out = naive_attention(q[0], k, v, logn_scale(positions, 4)[0], torch.ones(13, 13, dtype=torch.bool).tril())
        ref = attn.o_proj(out.transpose(0, 1).reshape(1, 13, -1))
        unscaled = plain(x, positions)
    assert (got - ref).abs().max() < 1e-5
    assert (got - unscaled)[:, 4:].abs().max() > 1e-3  # scaled from the fifth token on, not before
    assert (got - unscaled)[:, :4].abs().max() < 1e-6


def test_transv_cross_attention_matches_a_naive_scaled_softmax():
    torch.manual_seed(0)
    module = TransV(CFG.replace(logn_attention_length=8), TransVSpec("uni", 2, 0.5))
    with torch.no_grad():
        module.alpha.fill_(0.5)
        x1, dropped = torch.randn(3, 32), torch.randn(10, 32)
        k, v = module.memory(dropped)
        positions = torch.tensor([[30, 31, 32]])
        got = module.delta(x1, k, v, positions=positions)
        q = module.q_proj(module.norm_q(x1)).view(3, 4, 8).transpose(0, 1)
        out = naive_attention(q, k.repeat_interleave(2, 0), v.repeat_interleave(2, 0), logn_scale(positions, 8)[0],
                              torch.ones(3, 10, dtype=torch.bool))
        ref = math.tanh(0.5) * module.o_proj(out.transpose(0, 1).reshape(3, -1))
    assert (got - ref).abs().max() < 1e-5


def test_a_model_within_its_length_is_unchanged_and_beyond_it_is_not():
    torch.manual_seed(0)
    llm = HybridLM(CFG.replace()).eval()  # a config of its own: set_logn_attention changes it
    ids = torch.randint(0, 61, (1, 24))
    with torch.no_grad():
        before = llm(input_ids=ids).logits
        llm.set_logn_attention(24)
        within = llm(input_ids=ids).logits
        llm.set_logn_attention(6)
        beyond = llm(input_ids=ids).logits
    assert torch.equal(before, within)
    assert (beyond - before)[:, 6:].abs().max() > 1e-4 and torch.equal(beyond[:, :6], before[:, :6])


@pytest.mark.parametrize("bad", [0, 1, -5, 2.5, True, "4096"])
def test_bad_lengths_are_refused(bad):
    with pytest.raises(ConfigError, match="logn_attention_length"):
        CFG.replace(logn_attention_length=bad)
    with pytest.raises(ConfigError, match="logn_attention_length"):
        HybridLM(CFG.replace()).set_logn_attention(bad)


def test_the_length_survives_save_and_load(tmp_path):
    llm = HybridLM(CFG.replace(logn_attention_length=4352))
    llm.save_pretrained(tmp_path / "a")
    loaded = HybridLM.from_pretrained(tmp_path / "a")
    assert loaded.config.logn_attention_length == 4352 and "logn_attention_length" not in loaded.config.extra
    loaded.set_logn_attention(None)  # turned off after loading, it stays off once saved
    loaded.save_pretrained(tmp_path / "c")
    assert HybridLM.from_pretrained(tmp_path / "c").config.logn_attention_length is None
    HybridLM(CFG).save_pretrained(tmp_path / "b")
    assert "logn_attention_length" not in (tmp_path / "b" / "config.json").read_text()  # written only when set
    config = tmp_path / "a" / "config.json"
    config.write_text(config.read_text().replace("4352", "0.5"))
    with pytest.raises(CheckpointError, match="logn_attention_length"):
        HybridLM.from_pretrained(tmp_path / "a")
