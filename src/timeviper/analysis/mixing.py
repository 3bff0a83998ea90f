"""Token mixing made explicit: an attention or Mamba-2 layer as the [T, T] matrix through which its tokens read
each other, with chosen (reader, source) pairs cut.

Attention: out = softmax(Q K^T / sqrt(d), causal) V, the matrix its weights. Mamba-2's SSD is the same shape of
computation (Dao & Gu 2024; its "hidden attention", Ali et al. 2024):

    y_t = sum_{s <= t} M[t, s] x_s + D x_t,      M[t, s] = C_t . B_s  exp(A sum_{s < k <= t} dt_k)  dt_s

per head, after a causal depthwise conv of kernel K that also lets token t read tokens t-K+1 .. t-1.

Cutting the pairs `cut` [T, T] (bool, cut[t, s]: token t may not read token s) blocks information flow as Zhang
et al. (2024) do in Transformers: an attention row renormalises over the keys left to it (their scores are -inf
before the softmax), an SSD entry is zeroed and so is the conv tap from s to t. Quadratic in T: for analysing
prompts of a few thousand tokens, not for inference; uncut, it computes what the layers' own forward does (tested
against it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from timeviper.llm.attention import Attention
from timeviper.llm.mamba import Mamba2
from timeviper.llm.ssd import segsum


def attention_mixing(attn: Attention, x: Tensor, positions: Tensor | None,
                     cut: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """x [B, T, C] (normed) -> (output [B, T, C], weights [B, H, T, T] float32, each row summing to 1)."""
    b, t, _ = x.shape
    q, k, v = attn.qkv(x, positions)  # [B, H, T, D], [B, Hkv, T, D] x2
    k = k.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=1)
    v = v.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=1)
    hidden = ~torch.ones(t, t, dtype=torch.bool, device=x.device).tril()  # [T, T] the future
    if cut is not None:
        hidden = hidden | cut
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(attn.head_dim)  # [B, H, T, T]
    weights = scores.masked_fill(hidden, -torch.inf).softmax(-1)
    out = (weights @ v.float()).to(x.dtype)  # [B, H, T, D]
    return attn.o_proj(out.transpose(1, 2).reshape(b, t, -1)), weights


def causal_conv_cut(x: Tensor, weight: Tensor, bias: Tensor | None, cut: Tensor | None) -> Tensor:
    """SiLU(depthwise causal conv) of x [B, T, C] with weight [C, K], as K shifted taps; a tap from token s to
    token t is left out where cut[t, s]."""
    t, k = x.shape[1], weight.shape[1]
    y = x.new_zeros(x.shape) if bias is None else bias.expand_as(x).clone()
    for lag in range(k):  # token t reads token t - lag through weight[:, k - 1 - lag]
        shifted = F.pad(x, (0, 0, lag, 0))[:, :t]
        if cut is not None and lag:
            reads = torch.ones(t, dtype=x.dtype, device=x.device)
            reads[lag:] = (~cut.diagonal(-lag)).to(x.dtype)  # cut[lag + i, i]
            shifted = shifted * reads[:, None]
        y = y + weight[:, k - 1 - lag] * shifted
    return F.silu(y)


def mamba_mixing(mixer: Mamba2, x: Tensor, cut: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """x [B, T, C] (normed) -> (output [B, T, C], the SSD matrix M [B, H, T, T] float32)."""
    b, t, _ = x.shape
    z, xbc, dt = mixer._in_proj(x)  # [B, T, inner], [B, T, conv_dim], [B, T, H]
    xbc = causal_conv_cut(xbc.float(), mixer.conv1d.weight[:, 0].float(),
                          None if mixer.conv1d.bias is None else mixer.conv1d.bias.float(), cut)
    gn = mixer.groups * mixer.state_size
    xs, B, C = xbc.split([mixer.inner, gn, gn], dim=-1)
    xs = xs.view(b, t, mixer.heads, mixer.head_dim)  # [B, T, H, P]
    per_group = mixer.heads // mixer.groups
    B = B.view(b, t, mixer.groups, -1).repeat_interleave(per_group, dim=2)  # [B, T, H, N]
    C = C.view(b, t, mixer.groups, -1).repeat_interleave(per_group, dim=2)
    dt = mixer._dt(dt)  # [B, T, H] float32
    A = -torch.exp(mixer.A_log.float())  # [H]
    decay = segsum((dt * A).transpose(1, 2)).exp()  # [B, H, T, T], 0 above the diagonal
    M = torch.einsum("bthn,bshn->bhts", C, B) * decay * dt.transpose(1, 2)[:, :, None, :]
    if cut is not None:
        M = M.masked_fill(cut, 0.0)
    y = torch.einsum("bhts,bshp->bthp", M, xs) + mixer.D.float()[:, None] * xs  # [B, T, H, P]
    return mixer.out_proj(mixer.norm(y.reshape(b, t, -1).to(x.dtype), z)), M


def mixing(block, x: Tensor, positions: Tensor | None, cut: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """A HybridLM block (attention or Mamba-2) on hidden states x [B, T, C] entering it, by its explicit matrix:
    (hidden states leaving it [B, T, C], the matrix [B, H, T, T])."""
    h = block.norm(x)
    if block.kind == "attention":
        out, weights = attention_mixing(block.mixer, h, positions, cut)
    elif block.kind == "mamba":
        out, weights = mamba_mixing(block.mixer, h, cut)
    else:
        raise ValueError(f"a {block.kind} block mixes no tokens")
    return x + out, weights
