"""Mamba-2 state-space duality (SSD) scan, as in NemotronH's Mamba-2 mixer (no D skip, no gate).

    h_t = exp(dt_t * A) h_{t-1} + dt_t * x_t B_t^T      h [H, P, N]
    y_t = h_t C_t

Shapes: b batch, T time, H heads, P head dim, G groups of B/C (head h uses group h // (H // G)),
N state size.  `ssd_scan` runs fla's `chunk_simple_gla` on CUDA (SSD is gated linear attention with
q=C, k=B, v=x*dt and log-decay dt*A) and the pure PyTorch `ssd_chunked` elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    from fla.ops.simple_gla import chunk_simple_gla
except ImportError:
    chunk_simple_gla = None


def fla_backward_supported() -> bool:
    """fla refuses the backward of gated chunked kernels on Hopper with Triton in [3.4, 3.7.1) (wrong results
    there) unless tilelang provides another backend; then gradients go through the PyTorch path."""
    if chunk_simple_gla is None:
        return False
    import importlib.util

    from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_4_0, TRITON_ABOVE_3_7_1

    broken = IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1
    return not broken or importlib.util.find_spec("tilelang") is not None


def map_sequences(fn, cu_seqlens: Tensor, seqs: tuple[Tensor, ...], initial_state: Tensor | None):
    """Run `fn(*seq_slices, state)` on each packed sequence of a batch-1 input.

    seqs are [1, T, ...]; initial_state is [S, ...] or None.  Returns outputs concatenated along T
    and final states stacked along dim 0 ([S, ...])."""
    bounds = cu_seqlens.tolist()
    ys, states = [], []
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        y, h = fn(*(t[:, s:e] for t in seqs), None if initial_state is None else initial_state[i : i + 1])
        ys.append(y)
        states.append(h)
    return torch.cat(ys, 1), torch.cat(states, 0)


def segsum(a: Tensor) -> Tensor:
    """a [..., L] -> [..., L, L] with out[i, j] = a[j+1] + ... + a[i] for j <= i, -inf above the diagonal."""
    L = a.size(-1)
    a = a[..., None].expand(*a.shape, L)  # [..., i, j] = a[i]
    a = a.masked_fill(~torch.tril(torch.ones(L, L, dtype=torch.bool, device=a.device), -1), 0)
    out = a.cumsum(-2)
    return out.masked_fill(~torch.tril(torch.ones(L, L, dtype=torch.bool, device=a.device)), -torch.inf)


def _ssd_chunked(x, dt, A, B, C, initial_state, chunk_size):
    b, T, H, P = x.shape
    G, N = B.shape[-2:]
    L, pad = chunk_size, -T % chunk_size
    c = (T + pad) // L
    f = torch.promote_types(x.dtype, torch.float32)
    dt = dt.to(f)
    # discretize and split into chunks; padded steps have dt = 0: no input and no decay
    X = F.pad(x.to(f) * dt[..., None], (0, 0, 0, 0, 0, pad)).view(b, c, L, G, H // G, P)  # [b,c,l,g,r,p]
    a = F.pad(dt * A.to(f), (0, 0, 0, pad)).view(b, c, L, G, H // G).permute(0, 3, 4, 1, 2)  # [b,g,r,c,l]
    B, C = (F.pad(t.to(f), (0, 0, 0, 0, 0, pad)).view(b, c, L, G, N) for t in (B, C))  # [b,c,l,g,n]
    a_cs = a.cumsum(-1)  # [b,g,r,c,l]

    # 1. within chunks: causal "attention" C_l.B_s with decay exp(a_{s+1} + ... + a_l)
    CB = torch.einsum("bclgn,bcsgn->bgcls", C, B)
    y_diag = torch.einsum("bgcls,bgrcls,bcsgrp->bclgrp", CB, torch.exp(segsum(a)), X)

    # 2. each chunk's contribution to the state at its end
    decay_to_end = torch.exp(a_cs[..., -1:] - a_cs)  # [b,g,r,c,l]
    states = torch.einsum("bclgn,bgrcl,bclgrp->bcgrpn", B, decay_to_end, X)

    # 3. recurrence over chunks: the state at every chunk boundary
    h0 = x.new_zeros(b, H, P, N, dtype=f) if initial_state is None else initial_state.to(f)
    states = torch.cat([h0.reshape(b, 1, G, H // G, P, N), states], 1)  # [b,c+1,g,r,p,n]
    decay_chunk = torch.exp(segsum(F.pad(a_cs[..., -1], (1, 0))))  # [b,g,r,c+1,c+1]
    states = torch.einsum("bgrzc,bcgrpn->bzgrpn", decay_chunk, states)
    states, final = states[:, :-1], states[:, -1]

    # 4. the state at each chunk's start, read out by C and decayed to each position
    y_off = torch.einsum("bclgn,bcgrpn,bgrcl->bclgrp", C, states, torch.exp(a_cs))

    y = (y_diag + y_off).reshape(b, c * L, H, P)[:, :T]
    return y.to(x.dtype), final.reshape(b, H, P, N).clone()  # clone: not a view into all chunk states


def ssd_chunked(x, dt, A, B, C, initial_state=None, cu_seqlens=None, chunk_size=128):
    """Pure PyTorch chunked SSD (the ssd_minimal algorithm); same contract as `ssd_scan`.

    Math in float32 (float64 for float64 inputs), differentiable, O(T * chunk_size) memory."""
    if cu_seqlens is None:
        return _ssd_chunked(x, dt, A, B, C, initial_state, chunk_size)
    return map_sequences(lambda x, dt, B, C, h0: _ssd_chunked(x, dt, A, B, C, h0, chunk_size),
                         cu_seqlens, (x, dt, B, C), initial_state)


def _ssd_fla(x, dt, A, B, C, initial_state, cu_seqlens):
    R = x.shape[2] // B.shape[2]
    q, k = (t.repeat_interleave(R, dim=2).to(x.dtype) for t in (C, B))  # [b,T,H,N]
    v = (x.float() * dt.float()[..., None]).to(x.dtype)  # [b,T,H,P]
    g = dt.float() * A.float()  # [b,T,H] log decay
    h0 = None if initial_state is None else initial_state.float().transpose(-1, -2)  # fla keeps [.., N, P]
    y, h = chunk_simple_gla(q=q, k=k, v=v, g=g, scale=1.0, initial_state=h0, output_final_state=True,
                            cu_seqlens=None if cu_seqlens is None else cu_seqlens.long())
    return y.to(x.dtype), h.float().transpose(-1, -2).contiguous()


def ssd_scan(x, dt, A, B, C, initial_state=None, cu_seqlens=None, chunk_size=128):
    """Mamba-2 SSD over a sequence.

    x  [b, T, H, P]   any float dtype
    dt [b, T, H]      already softplus'ed and clamped
    A  [H]            negative
    B, C [b, T, G, N]
    initial_state [b, H, P, N] ([S, H, P, N] with cu_seqlens) or None for zeros
    cu_seqlens [S+1] cumulative lengths of S sequences packed into a batch of 1; no state crosses them
    chunk_size: chunk length of the PyTorch path
    returns y [b, T, H, P] (dtype of x), final_state [b or S, H, P, N] float32
    """
    if cu_seqlens is not None and x.shape[0] != 1:
        raise ValueError(f"cu_seqlens needs a batch of 1, got {x.shape[0]}")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, dt, A, B, C, initial_state))
    if x.is_cuda and chunk_simple_gla is not None and (not needs_grad or fla_backward_supported()):
        return _ssd_fla(x, dt, A, B, C, initial_state, cu_seqlens)
    return ssd_chunked(x, dt, A, B, C, initial_state, cu_seqlens, chunk_size)


def ssd_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """One decode token.  state [b, H, P, N] float32, updated in place; x [b, H, P]; dt [b, H];
    B, C [b, G, N].  Returns y [b, H, P] (dtype of x)."""
    b, H, P = x.shape
    G = B.shape[1]
    s = state.view(b, G, H // G, P, -1)  # shares memory with state
    dt = dt.float().unflatten(1, (G, -1))[..., None, None]  # [b,g,r,1,1]
    s.mul_(torch.exp(dt * A.float().view(G, -1, 1, 1)))
    s.add_(dt * x.float().unflatten(1, (G, -1))[..., None] * B.float()[:, :, None, None, :])
    y = s @ C.float()[:, :, None, :, None]  # [b,g,r,p,1]
    return y.reshape(b, H, P).to(x.dtype)
