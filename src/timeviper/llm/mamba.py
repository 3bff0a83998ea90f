"""The Mamba-2 mixer of NemotronH: in_proj -> causal depthwise conv -> SSD -> gated RMSNorm -> out_proj."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from timeviper.llm.cache import MambaState
from timeviper.llm.config import LMConfig
from timeviper.llm.conv import causal_conv1d, causal_conv1d_step
from timeviper.llm.layers import RMSNorm
from timeviper.llm.ssd import ssd_scan, ssd_step


class Mamba2(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.mamba_num_heads, cfg.mamba_head_dim
        self.groups, self.state_size = cfg.mamba_groups, cfg.ssm_state_size
        self.inner = cfg.mamba_inner
        self.conv_dim = self.inner + 2 * self.groups * self.state_size
        self.chunk_size, self.dt_limit = cfg.chunk_size, cfg.time_step_limit
        self.in_proj = nn.Linear(cfg.hidden_size, self.inner + self.conv_dim + self.heads, bias=cfg.mamba_proj_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.conv_kernel, groups=self.conv_dim,
                                padding=cfg.conv_kernel - 1, bias=cfg.mamba_conv_bias)  # used as weights only
        self.dt_bias = nn.Parameter(torch.ones(self.heads))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, self.heads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm = RMSNorm(self.inner, cfg.norm_eps, groups=self.groups)  # gated by z
        self.out_proj = nn.Linear(self.inner, cfg.hidden_size, bias=cfg.mamba_proj_bias)

    def empty_state(self, batch: int, device, dtype) -> MambaState:
        k = self.conv1d.kernel_size[0]
        return MambaState(torch.zeros(batch, self.conv_dim, k - 1, device=device, dtype=dtype),
                          torch.zeros(batch, self.heads, self.head_dim, self.state_size, device=device,
                                      dtype=torch.float32))

    def _in_proj(self, x: Tensor) -> list[Tensor]:
        """z, xBC, dt: one GEMM per part of in_proj, so that each comes out contiguous (the gated norm and the
        SSD would otherwise copy the strided slices of one wide output)."""
        sizes = [self.inner, self.conv_dim, self.heads]
        biases = [None] * 3 if self.in_proj.bias is None else self.in_proj.bias.split(sizes)
        return [F.linear(x, w, bias) for w, bias in zip(self.in_proj.weight.split(sizes), biases)]

    def _dt(self, dt: Tensor) -> Tensor:
        return F.softplus(dt.float() + self.dt_bias.float()).clamp(*self.dt_limit)

    def forward(self, x: Tensor, cu_seqlens: Tensor | None = None, state: MambaState | None = None, **_) -> Tensor:
        """x [B, T, C]. With `state`, continues from it and leaves the new state in it."""
        b, t, _ = x.shape
        z, xbc, dt = self._in_proj(x)  # [B, T, inner], [B, T, conv_dim], [B, T, H]
        conv_w, conv_b = self.conv1d.weight[:, 0], self.conv1d.bias  # [conv_dim, K]
        A = -torch.exp(self.A_log.float())  # [H]
        gn = self.groups * self.state_size
        if state is not None and t == 1:  # decode step
            xbc = causal_conv1d_step(xbc[:, 0], state.conv, conv_w, conv_b)  # [B, conv_dim]
            xs, B, C = xbc.split([self.inner, gn, gn], dim=-1)
            xs = xs.view(b, self.heads, self.head_dim)
            y = ssd_step(state.ssm, xs, self._dt(dt[:, 0]), A, B.view(b, self.groups, -1), C.view(b, self.groups, -1))
            y = (y + self.D[:, None].to(y.dtype) * xs)[:, None]  # [B, 1, H, P]
        else:
            xbc, conv_state = causal_conv1d(xbc, conv_w, conv_b, None if state is None else state.conv, cu_seqlens)
            xs, B, C = xbc.split([self.inner, gn, gn], dim=-1)
            xs = xs.view(b, t, self.heads, self.head_dim)
            y, ssm_state = ssd_scan(xs, self._dt(dt), A, B.view(b, t, self.groups, -1), C.view(b, t, self.groups, -1),
                                    initial_state=None if state is None else state.ssm, cu_seqlens=cu_seqlens,
                                    chunk_size=self.chunk_size)
            y = torch.addcmul(y, self.D[:, None].to(y.dtype), xs)  # [B, T, H, P] y + D x
            if state is not None:
                state.conv, state.ssm = conv_state.to(state.conv.dtype), ssm_state
        return self.out_proj(self.norm(y.reshape(b, t, self.inner), z))
