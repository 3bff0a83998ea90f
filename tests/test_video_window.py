"""The video window (attention.VideoQueries): a naive masked softmax reference, chunked prefill with TransV,
videos within the window read exactly as without it, and the setting."""

import json
import math

import pytest
import torch
from attention_reference import naive_attention
from test_engine import HYBRID, build

from timeviper.engine import prefill
from timeviper.errors import ConfigError
from timeviper.llm import KVCache
from timeviper.llm.attention import Attention, VideoQueries

CFG = HYBRID.replace(logn_attention_length=4)  # every query past the 4th token logn-scaled


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
    assert mask.sum(1)[-1] == 3 + 5  # the window binds: the last token sees the prompt, itself and 4 others
    assert cache.positions[0, : cache.length].tolist() == p


@pytest.mark.parametrize("spec", ["none", "uni_2_0.5", "uni_2_0.5-attn_7_0.75"])
def test_prefill_within_the_window_is_unchanged_and_chunking_never_matters(spec):
    llm, transv = build(CFG, spec)
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
    config = tmp_path / "config.json"
    config.write_text(config.read_text().replace('"video_window": 4', '"video_window": 0'))
    with pytest.raises(ConfigError, match="video_window must be a number of frames"):
        TimeViper.from_pretrained(tmp_path)

