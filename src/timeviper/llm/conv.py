"""Mamba-2's depthwise causal conv1d over [b, T, C] sequences, with a carried state of the last K-1 inputs.

    y_t = act(bias + sum_k weight[:, k] * x_{t-K+1+k})      (x_{<0} taken from the state)

CUDA uses fla's Triton kernel when fla is installed; otherwise F.conv1d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from timeviper.llm.ssd import segments

try:
    from fla.modules.convolution import causal_conv1d as fla_causal_conv1d
except ImportError:
    fla_causal_conv1d = None


def _activate(y: Tensor, activation: str | None) -> Tensor:
    if activation not in ("silu", None):
        raise ValueError(f"unsupported activation {activation!r}")
    return F.silu(y) if activation == "silu" else y


def _conv_torch(x, weight, bias, initial_state, cu_seqlens, activation):
    # every sequence is preceded by its K-1 initial inputs (zeros by default): one conv, nothing crosses
    b, T, C = x.shape
    K1 = weight.shape[1] - 1
    lengths, seq, starts = segments(cu_seqlens, T, x.device)
    S = len(lengths)
    before = starts + K1 * torch.arange(S, device=x.device)  # [S] place of each sequence's first initial input
    xs = x.new_zeros(b, T + K1 * S, C)
    xs[:, torch.arange(T, device=x.device) + K1 * (seq + 1)] = x
    window = before[:, None] + torch.arange(K1, device=x.device)  # [S, K-1]
    if initial_state is not None:
        xs[:, window] = initial_state.to(x.dtype).view(b, S, C, K1).transpose(-1, -2)
    y = F.conv1d(xs.transpose(1, 2).to(weight.dtype), weight[:, None], bias, groups=C)  # [b, C, T + K1 (S - 1)]
    y = y[..., torch.arange(T, device=x.device) + K1 * seq]  # output j covers inputs j .. j + K-1
    final = xs[:, window + torch.tensor(lengths, device=x.device)[:, None]]  # [b, S, K-1, C] the last K-1 inputs
    return _activate(y, activation).transpose(1, 2).to(x.dtype), final.transpose(-1, -2).reshape(b * S, C, K1)


def _conv_fla(x, weight, bias, initial_state, cu_seqlens, activation):
    # fla's state holds the last K inputs; its oldest one is never read
    h0 = None if initial_state is None else F.pad(initial_state.to(x.dtype), (1, 0))
    y, h = fla_causal_conv1d(x=x, weight=weight, bias=bias, initial_state=h0, output_final_state=True,
                             activation=activation, cu_seqlens=cu_seqlens)
    return y, h[..., 1:].contiguous()


def causal_conv1d(x, weight, bias=None, initial_state=None, cu_seqlens=None, activation="silu"):
    """Depthwise causal conv.

    x [b, T, C]; weight [C, K]; bias [C] or None
    initial_state [b or S, C, K-1]: the K-1 inputs before x, oldest first; None for zeros
    cu_seqlens [S+1] cumulative lengths of S sequences packed into a batch of 1; no input crosses them
    activation "silu" or None
    returns y [b, T, C] (dtype of x), final_state [b or S, C, K-1] (dtype of x): the last K-1 inputs,
    reaching back into the initial state (or zeros) for sequences shorter than K-1
    """
    if cu_seqlens is not None and x.shape[0] != 1:
        raise ValueError(f"cu_seqlens needs a batch of 1, got {x.shape[0]}")
    if x.is_cuda and fla_causal_conv1d is not None:
        return _conv_fla(x, weight, bias, initial_state, cu_seqlens, activation)
    return _conv_torch(x, weight, bias, initial_state, cu_seqlens, activation)


def causal_conv1d_step(x, conv_state, weight, bias=None, activation="silu"):
    """One decode token.  x [b, C]; conv_state [b, C, K-1], updated in place (shifted left, x appended).
    Returns y [b, C] (dtype of x)."""
    window = torch.cat([conv_state, x[..., None].to(conv_state.dtype)], -1)  # [b, C, K]
    conv_state.copy_(window[..., 1:])
    y = (window.to(weight.dtype) * weight).sum(-1)
    if bias is not None:
        y = y + bias
    return _activate(y, activation).to(x.dtype)
