"""Norms (fla's fused kernels on CUDA, PyTorch elsewhere) and the MLP mixer."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from timeviper.llm.config import LMConfig

try:
    from fla.modules.norm.layernorm import rms_norm as fla_rms_norm
    from fla.modules.norm.layernorm_gated import rmsnorm_fn as fla_gated_rms_norm
except ImportError:
    fla_rms_norm = fla_gated_rms_norm = None

# fla's plain norm for rows of <= 512 autotunes anew for every ceil(rows / 2048), and TransV makes the row count
# of a packed batch change at every step: a cold embedded run tuned it 35 times (~9 s each) in its first 100 steps.
# Those rows go to PyTorch's own norm; wider ones (4,480 in Nano-9B) to fla's row kernel, which keys on the width.
_TORCH_MAX_WIDTH = 512


def rms_norm_torch(x: Tensor, weight: Tensor, eps: float, gate: Tensor | None = None, groups: int = 1) -> Tensor:
    """The reference of `rms_norm`."""
    h = x.float() if gate is None else x.float() * F.silu(gate.float())  # [..., D]
    h = h.unflatten(-1, (groups, -1))  # [..., G, D/G]
    h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2)
    return (weight.float() * h).to(x.dtype)


def rms_norm(x: Tensor, weight: Tensor, eps: float, gate: Tensor | None = None, groups: int = 1) -> Tensor:
    """weight * RMSNorm(x) over the last dim, normalised in `groups` equal slices; with `gate`, of x * silu(gate)
    (Mamba-2's output norm). Float32 math, x's dtype out; on CUDA fla's fused Triton kernels (PyTorch's
    F.rms_norm for narrow plain rows)."""
    if not (x.is_cuda and fla_rms_norm is not None):
        return rms_norm_torch(x, weight, eps, gate, groups)
    if gate is None and groups == 1:
        if x.shape[-1] <= _TORCH_MAX_WIDTH:
            return F.rms_norm(x.float(), x.shape[-1:], weight.float(), eps).to(x.dtype)
        return fla_rms_norm(x, weight, None, eps=eps)
    return fla_gated_rms_norm(x, weight, None, z=gate, eps=eps, group_size=x.shape[-1] // groups,
                              norm_before_gate=False)


class RMSNorm(nn.Module):
    """`rms_norm` with a learned weight; `groups` and a `gate` at call time make Mamba-2's output norm."""

    def __init__(self, dim: int, eps: float = 1e-5, groups: int = 1):
        super().__init__()
        self.eps, self.groups = eps, groups
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, gate: Tensor | None = None) -> Tensor:
        return rms_norm(x, self.weight, self.eps, gate=gate, groups=self.groups)


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
