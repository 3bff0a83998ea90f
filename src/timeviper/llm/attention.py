"""Grouped-query self-attention (NemotronH: no positions; Qwen: RoPE, Qwen2 q/k/v bias, Qwen3 q/k norm)."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right

from timeviper.llm.cache import KVCache
from timeviper.llm.config import LMConfig
from timeviper.llm.layers import RMSNorm


def rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Rotary embedding (rotate-half layout). x [B, H, T, D]; positions [B, T] long."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)  # [D/2]
    angles = positions[:, None, :, None].float() * inv_freq  # [B, 1, T, D/2]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def logn_scale(positions: Tensor, length: int) -> Tensor:
    """max(1, log(n) / log(length)) for the query at position n - 1: [B, T] long -> [B, T] float32.

    A query over n keys spreads its softmax over more of them as n grows (its entropy can grow like
    log n), so attention trained on sequences of a few thousand tokens blurs on a million. Multiplying
    the logits by log n / log length makes the gap between a relevant key and the rest grow with the
    crowd of others (Chiang & Cholak 2022; Qwen's logn attention). Queries within `length` are untouched,
    and no retraining is needed: `length` is set at inference, at the training length or below it.
    """
    return ((positions + 1).float().log() / math.log(length)).clamp(min=1.0)


@dataclass(frozen=True)
class VideoQueries:
    """Marks a call whose queries are video tokens (of one row, in prefill); the video begins at position `start`.

    With a `window`, each attends to the keys before `start` (the prompt before the video) and to those of the
    last `window` positions up to its own: within `start + window` positions that is plain causal attention;
    past it a token's context and its softmax's crowd stay the size training showed, however long the video.
    Queries that are not video tokens (the text after the video) read the whole video either way.
    """

    start: int
    window: int | None = None

    def logn_positions(self, positions: Tensor) -> Tensor:
        """The positions to logn-scale by: a windowed query spans `start + window` positions at most."""
        return positions if self.window is None else positions.clamp(max=self.start + self.window - 1)

    def mask(self, query_positions: Tensor, key_positions: Tensor) -> Tensor:
        """[T] and [L] long -> bool [T, L], True where the query sees the key (`window` set)."""
        q, k = query_positions[:, None], key_positions[None, :]
        return (k <= q) & ((k < self.start) | (k > q - self.window))


def _varlen_flash(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_len: int) -> Tensor:
    """Flash attention over packed sequences (CUDA). q [1, H, T, D]; k, v [1, Hkv, T, D]."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    if "enable_gqa" not in params and k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    kwargs = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    cu = cu_seqlens.to(torch.int32)
    out = varlen_attn(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu, max_len, max_len, **kwargs)
    return out.transpose(0, 1)[None]  # [1, H, T, D]


def packed_causal_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor) -> Tensor:
    """Causal attention that never crosses the boundaries of packed sequences. q [1, H, T, D]."""
    lengths = cu_seqlens.diff()
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return _varlen_flash(q, k, v, cu_seqlens, int(lengths.max()))
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=q.device), lengths)  # [T]
    mask = (segment[:, None] == segment[None, :]).tril()  # [T, T] block-diagonal causal
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


class Attention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.rope_theta, self.logn_length = cfg.rope_theta, cfg.logn_attention_length
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)

    def qkv(self, x: Tensor, positions: Tensor | None,
            video: VideoQueries | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, C] -> q [B, H, T, D], k and v [B, Hkv, T, D] (normed, rotated, q logn-scaled)."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.rope_theta is not None:
            q, k = rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)
        if self.logn_length is not None:
            scaled = positions if video is None else video.logn_positions(positions)
            q = q * logn_scale(scaled, self.logn_length)[:, None, :, None].to(q.dtype)
        return q, k, v

    def forward(self, x: Tensor, positions: Tensor | None = None, cu_seqlens: Tensor | None = None,
                state: KVCache | None = None, video: VideoQueries | None = None) -> Tensor:
        """x [B, T, C] -> [B, T, C]. With `state` (inference), `video` marks video tokens (see VideoQueries)."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x, positions, video)
        if video is not None and video.window is not None:
            out = _windowed(q, k, v, positions[0], state, video)
        elif state is not None:
            past = state.length
            k, v, key_mask = state.append(k, v, positions)
            if key_mask is not None:  # one new token per row, rows of different lengths
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, enable_gqa=True)
            elif past == 0 or t == 1:  # plain causal, or one token that sees everything before it
                out = F.scaled_dot_product_attention(q, k, v, is_causal=past == 0 and t > 1, enable_gqa=True)
            else:  # a chunk after earlier chunks: causal aligned to the bottom-right corner
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(t, k.shape[2]),
                                                     enable_gqa=True)
        elif cu_seqlens is not None:
            out = packed_causal_attention(q, k, v, cu_seqlens)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


def _windowed(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, state: KVCache, video: VideoQueries) -> Tensor:
    """A chunk of video tokens of one row (positions [T], increasing) appended to `state`, attending within
    `video.window`. Only the prompt's keys and those from the chunk's first window on are read, so a long video
    costs O(T * window)."""
    keys, values, _ = state.append(k, v, positions[None])
    key_positions = state.positions[0, : state.length]  # [L], increasing
    prompt = int(torch.searchsorted(key_positions, video.start))
    first = max(prompt, int(torch.searchsorted(key_positions, positions[:1] - video.window + 1)))
    keys = torch.cat([keys[:, :, :prompt], keys[:, :, first:]], dim=2)  # [1, Hkv, L', D]
    values = torch.cat([values[:, :, :prompt], values[:, :, first:]], dim=2)
    mask = video.mask(positions, torch.cat([key_positions[:prompt], key_positions[first:]]))  # [T, L']
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
