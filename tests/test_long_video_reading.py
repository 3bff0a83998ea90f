"""Reading long videos at inference: the video window (attention.VideoQueries) and the text's top-k keys
(attention.top_k_attention), against naive masked softmaxes; chunked prefill with TransV; videos within either
read exactly as without; the settings."""

import json
import math

import pytest
import torch
from attention_reference import naive_attention

from timeviper.engine import prefill
from timeviper.errors import ConfigError
from timeviper.llm import HybridLM, KVCache, LMConfig
from timeviper.llm.attention import Attention, VideoQueries, top_k_attention
from timeviper.transv import TransV, parse_transv

CFG = LMConfig(vocab_size=61, hidden_size=32, pattern="M-M*-M-*-M-", num_heads=4, num_kv_heads=2, head_dim=8,
               intermediate_size=48, mamba_num_heads=4, mamba_head_dim=8, mamba_groups=2, ssm_state_size=8,
               chunk_size=4, logn_attention_length=4)


def test_windowed_chunks_match_a_naive_masked_softmax():
    # a prompt of 3 tokens, then 21 video tokens at every other position (as TransV leaves them), in chunks of 5
    torch.manual_seed(0)
    attn = Attention(CFG)
    video = VideoQueries(start=3, window=9)
    positions = torch.cat([torch.arange(3), 3 + 2 * torch.arange(21)])  # [24]
    x = torch.randn(1, 24, 32)
    cache = KVCache.allocate(1, 2, 8, 0, torch.float32, "cpu")
    with torch.no_grad():
        got = [attn(x[:, :3], positions[None, :3], state=cache)]
        got += [attn(x[:, i: i + 5], positions[None, i: i + 5], state=cache, video=video) for i in range(3, 24, 5)]
        got = torch.cat(got, dim=1)
        plain = Attention(CFG.replace(logn_attention_length=None))
        plain.load_state_dict(attn.state_dict())
        q, k, v = plain.qkv(x, None)
    k, v = (t.repeat_interleave(2, dim=1)[0] for t in (k, v))
    p = positions.tolist()
    # a video token at position a sees the prompt and positions a-8 .. a; it is scaled as one at position 11 would be
    mask = torch.tensor([[b <= a and (a < 3 or b < 3 or b > a - 9) for b in p] for a in p])
    scale = torch.tensor([max(1.0, math.log(min(a, 11) + 1) / math.log(4)) for a in p])
    with torch.no_grad():
        ref = attn.o_proj(naive_attention(q[0], k, v, scale, mask).transpose(0, 1).reshape(1, 24, -1))
    assert (got - ref).abs().max() < 1e-5
    assert mask.sum(1)[-1] == 3 + 5  # the window binds: the last token sees the prompt and 5 of the 20 before it
    assert cache.positions[0, : cache.length].tolist() == p


def build(spec):
    torch.manual_seed(0)
    llm = HybridLM(CFG).eval()
    transv = {s.layer: TransV(CFG, s) for s in parse_transv(spec, CFG)}
    with torch.no_grad():
        for m in transv.values():
            if m.spec.transfers:
                m.alpha.fill_(0.6)
    return llm, transv


@pytest.mark.parametrize("spec", ["none", "uni_2_0.5", "uni_2_0.5-attn_7_0.75"])
def test_prefill_within_the_window_is_unchanged_and_chunking_never_matters(spec):
    llm, transv = build(spec)
    torch.manual_seed(1)
    prefix, vision, instruction = torch.randn(1, 3, 32), torch.randn(1, 45, 32), torch.randn(1, 5, 32)

    def logits(window, chunk):
        cache = llm.new_cache(1)
        with torch.no_grad():
            out = prefill(llm, transv, prefix, vision.split(chunk, dim=1), instruction, cache, window=window)
            step = llm(inputs_embeds=torch.ones(1, 1, 32), cache=cache).logits[:, -1]  # decoding goes on
        return torch.cat([out, step])

    whole = logits(None, 64)
    assert (logits(45, 7) - whole).abs().max() < 1e-5  # the window holds the whole video
    local = logits(10, 64)
    assert (local - whole).abs().max() > 1e-3
    for chunk in (1, 7, 16):
        assert (logits(10, chunk) - local).abs().max() < 1e-5


def test_the_setting_is_checked_saved_and_reaches_the_prefill(tmp_path):
    from timeviper.model import TimeViper

    model = TimeViper.from_pretrained(dtype=torch.float32)
    frames = torch.randint(0, 256, (40, 64, 64, 3), dtype=torch.uint8)
    whole = model.prefill([frames], "What colour is the star?")[1]
    model.set_video_window(40)
    assert torch.allclose(model.prefill([frames], "What colour is the star?")[1], whole, atol=1e-5)
    model.set_video_window(4)
    assert (model.prefill([frames[:20], frames[20:]], "What colour is the star?")[1] - whole).abs().max() > 1e-3
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["video_window"] == 4
    assert TimeViper.from_pretrained(tmp_path).config.video_window == 4
    for bad in (0, -1, 2.5, True, "256"):
        with pytest.raises(ConfigError, match="window"):
            model.set_video_window(bad)
    model.set_video_window(None)
    assert "video_window" not in model.config.to_dict()


def test_top_k_attention_matches_a_naive_softmax_over_each_querys_best_keys():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 30, 8), torch.randn(1, 2, 30, 8)
    mask = torch.ones(3, 30, dtype=torch.bool).tril(27)  # the last 3 keys are the queries' own, causal
    got = top_k_attention(q, k, v, 5, mask)
    for h in range(4):
        kh, vh = k[0, h // 2], v[0, h // 2]
        for i in range(3):
            scores = (kh @ q[0, h, i]) / math.sqrt(8)
            scores[~mask[i]] = -torch.inf
            best = scores.topk(5).indices
            ref = scores[best].softmax(0) @ vh[best]
            assert (got[0, h, i] - ref).abs().max() < 1e-5
    assert torch.allclose(top_k_attention(q, k, v, 30, mask), torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, enable_gqa=True), atol=1e-5)  # all keys: plain attention


def test_the_text_reads_its_top_k_keys_in_prefill_transfers_and_decoding():
    from timeviper.model import TimeViper

    model = TimeViper.from_pretrained(dtype=torch.float32)
    frames = torch.randint(0, 256, (40, 64, 64, 3), dtype=torch.uint8)

    @torch.inference_mode()
    def answer(chunks):  # the first two tokens' logits
        cache, logits = model.prefill(chunks, "What colour is the star?")
        return torch.cat([logits, model.llm(input_ids=logits.argmax(-1, keepdim=True), cache=cache).logits[:, -1]])

    whole = answer([frames])
    model.set_read_top_k(10_000)  # more keys than the video has: nothing changes
    assert torch.allclose(answer([frames[:13], frames[13:]]), whole, atol=1e-4)
    model.set_read_top_k(16)
    few = answer([frames])
    assert (few - whole).abs().max() > 1e-3
    assert torch.allclose(answer([frames[:13], frames[13:]]), few, atol=1e-4)
    assert TimeViper(model.config, model.tokenizer).llm.layers[5].mixer.top_k == 16  # made from the config
    for bad in (0, 2.5, True):
        with pytest.raises(ConfigError, match="read_top_k"):
            model.set_read_top_k(bad)
