"""rms_norm on CUDA (fused kernels: fla's, or PyTorch's for narrow plain rows) against its reference: values and
gradients."""

import pytest
import torch

from test_llm_gpu import rel

from timeviper.llm.layers import rms_norm, rms_norm_torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("gated, groups", [(False, 1), (True, 1), (True, 4), (False, 4)])
@pytest.mark.parametrize("dim", [128, 4480])  # 128: PyTorch's norm or fla's gated one; 4480: fla's
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_matches_reference(gated, groups, dim, dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 333, dim, device="cuda", dtype=dtype, requires_grad=True)
    z = torch.randn_like(x, requires_grad=True) if gated else None
    w = (1 + 0.1 * torch.randn(dim, device="cuda", dtype=dtype)).requires_grad_()
    dy = torch.randn_like(x)
    outs = []
    for norm in (rms_norm, rms_norm_torch):
        y = norm(x, w, 1e-5, gate=z, groups=groups)
        assert y.dtype == dtype and y.shape == x.shape
        grads = torch.autograd.grad(y, [x, w] + ([z] if gated else []), dy)
        outs.append([y, *grads])
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    for fused, ref in zip(*outs):
        assert rel(fused, ref) < tol


def test_fused_gated_bf16_input_fp32_weight():
    """Mamba-2's output norm under autocast: bf16 activations, float32 master weight."""
    torch.manual_seed(0)
    x, z = (torch.randn(1, 100, 1280, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    w = torch.randn(1280, device="cuda", requires_grad=True)
    outs = []
    for norm in (rms_norm, rms_norm_torch):
        y = norm(x, w, 1e-5, gate=z, groups=2)
        assert y.dtype == torch.bfloat16
        outs.append([y, *torch.autograd.grad(y.float().square().sum(), [x, z, w])])
    assert outs[0][3].dtype == torch.float32
    for fused, ref in zip(*outs):
        assert rel(fused, ref) < 1e-2
