"""HybridLM against transformers' own NemotronH / Qwen2 / Qwen3 classes: same weights, same logits."""

import json

import pytest
import torch
from transformers import (NemotronHConfig, NemotronHForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

from timeviper.llm import HybridLM

PATTERN = "M-*M-M*-"


def _randomize(model):
    """Random values everywhere (HF initialises A_log, D, dt_bias and norms to constants)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.rand_like(p) * 2)
            elif name.endswith("dt_bias"):
                p.copy_(torch.randn_like(p) * 0.5)
            else:
                p.copy_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 0.1) + (1.0 if "norm" in name else 0.0))
    return model.eval()


def nemotron_reference():
    cfg = NemotronHConfig(vocab_size=97, hidden_size=64, hybrid_override_pattern=PATTERN, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=16, intermediate_size=96, mamba_num_heads=8,
                          mamba_head_dim=16, n_groups=2, ssm_state_size=16, conv_kernel=4, chunk_size=8,
                          layer_norm_epsilon=1e-5)
    return _randomize(NemotronHForCausalLM(cfg))


def qwen2_reference():
    cfg = Qwen2Config(vocab_size=97, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=96, rms_norm_eps=1e-6, rope_theta=1000.0,
                      tie_word_embeddings=False)
    return _randomize(Qwen2ForCausalLM(cfg))


def qwen3_reference():
    cfg = Qwen3Config(vocab_size=97, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, intermediate_size=96, rms_norm_eps=1e-6,
                      rope_theta=1000.0, tie_word_embeddings=True)
    return _randomize(Qwen3ForCausalLM(cfg))


REFERENCES = {"nemotron_h": nemotron_reference, "qwen2": qwen2_reference, "qwen3": qwen3_reference}


@pytest.fixture(scope="module", params=list(REFERENCES))
def pair(request, tmp_path_factory):
    torch.manual_seed(1)
    ref = REFERENCES[request.param]()
    path = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(path)
    return ref, HybridLM.from_pretrained(path), path


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("batch,length", [(1, 21), (3, 19)])
def test_logits_match_transformers(pair, batch, length):
    ref, ours, _ = pair
    ids = torch.randint(0, 97, (batch, length))
    assert (_logits(ours, ids) - _logits(ref, ids)).abs().max() <= 1e-4


def test_saved_checkpoint_loads_in_transformers(pair, tmp_path):
    ref, ours, _ = pair
    ours.save_pretrained(tmp_path)
    back = type(ref).from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 97, (2, 13))
    assert (_logits(back, ids) - _logits(ours, ids)).abs().max() <= 1e-5
    again = HybridLM.from_pretrained(tmp_path)
    assert torch.equal(_logits(again, ids), _logits(ours, ids))


@pytest.mark.parametrize("spelling", ["hybrid_override_pattern", "mamba", "linear_attention"])
def test_nemotron_layer_spellings(tmp_path, spelling):
    ref = nemotron_reference()
    ref.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    names = {"M": "mamba", "*": "attention", "-": "mlp"} if spelling == "mamba" else \
        {"M": "linear_attention", "*": "full_attention", "-": "mlp"}
    for key in ("hybrid_override_pattern", "layers_block_type", "layer_types"):
        raw.pop(key, None)
    if spelling == "hybrid_override_pattern":
        raw["hybrid_override_pattern"] = PATTERN
    else:
        raw["layers_block_type"] = [names[s] for s in PATTERN]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    ours = HybridLM.from_pretrained(tmp_path)
    assert ours.config.pattern == PATTERN
    ids = torch.randint(0, 97, (1, 11))
    assert (_logits(ours, ids) - _logits(ref, ids)).abs().max() <= 1e-4


def test_sharded_checkpoint_roundtrip(pair, tmp_path):
    _, ours, _ = pair
    ours.save_pretrained(tmp_path, max_shard_bytes=20_000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    back = HybridLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 97, (1, 9))
    assert torch.equal(_logits(back, ids), _logits(ours, ids))


def test_load_in_bf16(pair):
    _, ours, path = pair
    half = HybridLM.from_pretrained(path, dtype=torch.bfloat16)
    assert half.embed_tokens.weight.dtype == torch.bfloat16
    ids = torch.randint(0, 97, (1, 16))
    ref = _logits(ours, ids)
    assert ((_logits(half, ids) - ref).norm() / ref.norm()) < 5e-2
