"""Norms and the MLP mixer."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from timeviper.llm.config import LMConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * h).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """Mamba-2's output norm: RMSNorm over groups of channels of x * silu(z)."""

    def __init__(self, dim: int, groups: int, eps: float = 1e-5):
        super().__init__()
        self.eps, self.groups = eps, groups
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        h = x.float() * F.silu(z.float())  # [..., dim]
        h = h.unflatten(-1, (self.groups, -1))  # [..., G, dim/G]
        h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        return self.weight * h.to(x.dtype)


class MLP(nn.Module):
    """NemotronH: down(relu(up x)^2).  Qwen: down(silu(gate x) * up x)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.act = cfg.mlp_act
        if self.act == "swiglu":
            self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: Tensor, **_) -> Tensor:
        if self.act == "swiglu":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.relu(self.up_proj(x)).square())
