"""Mamba-2 state-space duality (SSD) scan, as in NemotronH's Mamba-2 mixer (no D skip, no gate).

    h_t = exp(dt_t * A) h_{t-1} + dt_t * x_t B_t^T      h [H, P, N]
    y_t = h_t C_t

Shapes: b batch, T time, H heads, P head dim, G groups of B/C (head h uses group h // (H // G)),
N state size.  `ssd_scan` runs fla's `chunk_simple_gla` on CUDA (SSD is gated linear attention with
q=C, k=B, v=x*dt and log-decay dt*A) and the pure PyTorch `ssd_chunked` elsewhere.
"""

from __future__ import annotations

import torch
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


def segments(cu_seqlens: Tensor | None, T: int, device) -> tuple[list[int], Tensor, Tensor]:
    """Lengths (a list), sequence index of every token [T] and start of every sequence [S] of a packed
    batch, or of one sequence of T tokens when `cu_seqlens` is None."""
    if cu_seqlens is None:
        return [T], torch.zeros(T, dtype=torch.long, device=device), torch.zeros(1, dtype=torch.long, device=device)
    lengths = cu_seqlens.diff().tolist()
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    return lengths, seq, cu_seqlens[:-1].to(device, torch.long)


def segsum(a: Tensor) -> Tensor:
    """a [..., L] -> [..., L, L] with out[i, j] = a[j+1] + ... + a[i] for j <= i, -inf above the diagonal."""
    L = a.size(-1)
    a = a[..., None].expand(*a.shape, L)  # [..., i, j] = a[i]
    a = a.masked_fill(~torch.tril(torch.ones(L, L, dtype=torch.bool, device=a.device), -1), 0)
    out = a.cumsum(-2)
    return out.masked_fill(~torch.tril(torch.ones(L, L, dtype=torch.bool, device=a.device)), -torch.inf)


@torch.autocast("cuda", enabled=False)
@torch.autocast("cpu", enabled=False)
def ssd_chunked(x, dt, A, B, C, initial_state=None, cu_seqlens=None, chunk_size=128):
    """Pure PyTorch chunked SSD (the ssd_minimal algorithm); same contract as `ssd_scan`.

    Packed sequences are laid out so that each starts a new chunk; the recurrence over chunk states then
    runs over "slots" (each sequence's initial state, then its chunks) and never crosses a sequence.
    Math in float32 (float64 for float64 inputs), also under autocast; differentiable, O(T * chunk_size)
    memory."""
    b, T, H, P = x.shape
    G, N = B.shape[-2:]
    L, R, dev = chunk_size, H // G, x.device
    f = torch.promote_types(x.dtype, torch.float32)
    lengths, seq, starts = segments(cu_seqlens, T, dev)
    S = len(lengths)
    chunks = torch.tensor([-(-n // L) for n in lengths], device=dev)  # [S] chunks of each sequence
    c = int(chunks.sum())
    first = chunks.cumsum(0) - chunks  # [S] first chunk of each sequence
    at = torch.arange(T, device=dev) - starts[seq] + first[seq] * L  # [T] place of each token

    def spread(t: Tensor) -> Tensor:  # [b, T, ...] -> [b, c, L, ...], zeros (no input, no decay) between
        out = t.new_zeros(b, c * L, *t.shape[2:])
        out[:, at] = t
        return out.view(b, c, L, *t.shape[2:])

    dt = dt.to(f)
    X = spread(x.to(f) * dt[..., None]).unflatten(3, (G, R))  # [b,c,l,g,r,p]
    a = spread(dt * A.to(f)).unflatten(3, (G, R)).permute(0, 3, 4, 1, 2)  # [b,g,r,c,l]
    B, C = spread(B.to(f)), spread(C.to(f))  # [b,c,l,g,n]
    a_cs = a.cumsum(-1)  # [b,g,r,c,l]

    # 1. within chunks: causal "attention" C_l.B_s with decay exp(a_{s+1} + ... + a_l)
    CB = torch.einsum("bclgn,bcsgn->bgcls", C, B)
    y_diag = torch.einsum("bgcls,bgrcls,bcsgrp->bclgrp", CB, torch.exp(segsum(a)), X)

    # 2. each chunk's contribution to the state at its end
    decay_to_end = torch.exp(a_cs[..., -1:] - a_cs)  # [b,g,r,c,l]
    states = torch.einsum("bclgn,bgrcl,bclgrp->bcgrpn", B, decay_to_end, X)

    # 3. recurrence over slots: each sequence's initial state, then its chunks' contributions
    seq_of_chunk = torch.repeat_interleave(torch.arange(S, device=dev), chunks)  # [c]
    slot = torch.arange(c, device=dev) + seq_of_chunk + 1  # [c] slot of each chunk
    init_slot = first + torch.arange(S, device=dev)  # [S]
    slots = X.new_zeros(b, c + S, G, R, P, N)
    slots[:, slot] = states
    if initial_state is not None:
        slots[:, init_slot] = initial_state.to(f).reshape(b, S, G, R, P, N)
    totals = a_cs.new_zeros(b, G, R, c + S)
    totals[..., slot] = a_cs[..., -1]
    seq_of_slot = torch.repeat_interleave(torch.arange(S, device=dev), chunks + 1)  # [c+S]
    apart = seq_of_slot[:, None] != seq_of_slot[None]
    decay = torch.exp(segsum(totals).masked_fill(apart, -torch.inf))  # [b,g,r,c+S,c+S]
    slots = torch.einsum("bgrzs,bsgrpn->bzgrpn", decay, slots)  # the state at the end of each slot

    # 4. the state each chunk starts from, read out by C and decayed to each position
    y_off = torch.einsum("bclgn,bcgrpn,bgrcl->bclgrp", C, slots[:, slot - 1], torch.exp(a_cs))

    y = (y_diag + y_off).reshape(b, c * L, H, P)[:, at]
    final = slots[:, init_slot + chunks]  # [b,S,g,r,p,n] the end of each sequence's last chunk
    return y.to(x.dtype), final.reshape(b * S, H, P, N)


def heads_of_groups(t: Tensor, heads: int) -> Tensor:
    """[b, T, G, N] -> [b, T, H, N], head h reading group h // (H // G). A batched matmul with a 0/1 matrix (exact
    for finite values): on an H200 it writes the result in half the time of a broadcasting copy."""
    b, T, G, N = t.shape
    pick = torch.eye(G, dtype=t.dtype, device=t.device).repeat_interleave(heads // G, dim=0)  # [H, G]
    return torch.bmm(pick.expand(b * T, heads, G), t.reshape(b * T, G, N)).view(b, T, heads, N)


def _ssd_fla(x, dt, A, B, C, initial_state, cu_seqlens):
    H = x.shape[2]
    q, k = (heads_of_groups(t.to(x.dtype), H) for t in (C, B))  # [b,T,H,N]: fla's kernels want them per head
    v = x * dt.to(x.dtype)[..., None]  # [b,T,H,P], contiguous
    g = dt.float() * A.float()  # [b,T,H] log decay
    h0 = None if initial_state is None else initial_state.float()  # [b,H,P,N]: fla's "state_v_first" layout
    y, h = chunk_simple_gla(q=q, k=k, v=v, g=g, scale=1.0, initial_state=h0, output_final_state=True,
                            state_v_first=True, cu_seqlens=None if cu_seqlens is None else cu_seqlens.long())
    return y, h


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
    s.addcmul_(dt * x.float().unflatten(1, (G, -1))[..., None], B.float()[:, :, None, None, :])  # += dt x B^T
    y = s @ C.float()[:, :, None, :, None]  # [b,g,r,p,1]
    return y.reshape(b, H, P).to(x.dtype)
