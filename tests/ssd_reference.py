"""Naive token-by-token references for the SSD scan and the causal conv, in float64 (tests only)."""

import torch


def ssd_naive(x, dt, A, B, C, initial_state=None):
    """x [b,T,H,P], dt [b,T,H], A [H], B/C [b,T,G,N], initial_state [b,H,P,N] -> y [b,T,H,P], h [b,H,P,N] (float64)."""
    b, T, H, P = x.shape
    x, dt, A = x.double(), dt.double(), A.double()
    B, C = (t.double().repeat_interleave(H // t.shape[2], dim=2) for t in (B, C))  # [b,T,H,N]
    h = x.new_zeros(b, H, P, B.shape[-1]) if initial_state is None else initial_state.double()
    ys = []
    for t in range(T):
        decay = torch.exp(dt[:, t] * A)[..., None, None]  # [b,H,1,1]
        h = decay * h + dt[:, t, :, None, None] * x[:, t, :, :, None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))
    return torch.stack(ys, 1), h


def conv_naive(x, weight, bias=None, initial_state=None, activation="silu"):
    """x [b,T,C], weight [C,K], initial_state [b,C,K-1] -> y [b,T,C], last K-1 inputs [b,C,K-1] (float64)."""
    b, T, C = x.shape
    K = weight.shape[1]
    h = x.new_zeros(b, C, K - 1) if initial_state is None else initial_state
    xs = torch.cat([h.double(), x.double().transpose(1, 2)], -1)  # [b, C, K-1+T]
    y = torch.stack([(xs[..., t : t + K] * weight.double()).sum(-1) for t in range(T)], 1)  # [b,T,C]
    if bias is not None:
        y = y + bias.double()
    if activation == "silu":
        y = torch.nn.functional.silu(y)
    return y, xs[..., T:]
