import pytest
import torch
import torch.nn.functional as F
from ssd_reference import ssd_naive

from timeviper.llm.ssd import _ssd_fla, fla_backward_supported, heads_of_groups, ssd_chunked, ssd_scan, ssd_step


def make_inputs(b=2, T=37, H=4, P=8, G=2, N=16, init=False, device="cpu", dtype=torch.float32):
    x = torch.randn(b, T, H, P, device=device, dtype=dtype)
    dt = F.softplus(torch.randn(b, T, H, device=device) - 1)  # float32, ~0.3
    A = -torch.exp(torch.rand(H, device=device) * 2)  # in (-7.4, -1)
    B, C = (torch.randn(b, T, G, N, device=device, dtype=dtype) for _ in range(2))
    h0 = torch.randn(b, H, P, N, device=device) if init else None
    return x, dt, A, B, C, h0


def assert_close(out, ref, tol=1e-5):
    """max abs error relative to the reference's scale."""
    assert out.shape == ref.shape
    err = (out.double() - ref.double()).abs().max() / ref.double().abs().max()
    assert err < tol, f"relative max error {err:.2e}"


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize("T", [1, 5, 16, 37, 64])
@pytest.mark.parametrize("init", [False, True])
def test_chunked_matches_naive(T, init):
    x, dt, A, B, C, h0 = make_inputs(T=T, init=init)
    y, h = ssd_chunked(x, dt, A, B, C, h0, chunk_size=16)
    y_ref, h_ref = ssd_naive(x, dt, A, B, C, h0)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert_close(y, y_ref)
    assert_close(h, h_ref)


@pytest.mark.parametrize("H,G", [(4, 1), (4, 4), (6, 3)])
def test_chunked_groups(H, G):
    x, dt, A, B, C, h0 = make_inputs(T=21, H=H, G=G, init=True)
    y, h = ssd_chunked(x, dt, A, B, C, h0, chunk_size=8)
    y_ref, h_ref = ssd_naive(x, dt, A, B, C, h0)
    assert_close(y, y_ref)
    assert_close(h, h_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_heads_of_groups_is_repeat_interleave(dtype):
    xbc = torch.randn(2, 7, 40, dtype=dtype)
    B = xbc[..., 8:32].unflatten(-1, (3, 8))  # [b, T, G, N], a strided slice as in the mixer
    assert torch.equal(heads_of_groups(B, 12), B.repeat_interleave(4, dim=2))


def test_split_equals_full():
    x, dt, A, B, C, h0 = make_inputs(T=50, init=True)
    y, h = ssd_chunked(x, dt, A, B, C, h0, chunk_size=16)
    y1, h1 = ssd_chunked(x[:, :13], dt[:, :13], A, B[:, :13], C[:, :13], h0, chunk_size=16)
    y2, h2 = ssd_chunked(x[:, 13:], dt[:, 13:], A, B[:, 13:], C[:, 13:], h1, chunk_size=16)
    assert_close(torch.cat([y1, y2], 1), y)
    assert_close(h2, h)


def test_step_equals_scan():
    x, dt, A, B, C, h0 = make_inputs(T=12, init=True)
    y, h = ssd_chunked(x, dt, A, B, C, h0, chunk_size=8)
    state = h0.clone()
    ys = [ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t]) for t in range(12)]
    assert_close(torch.stack(ys, 1), y)
    assert_close(state, h)


@pytest.mark.parametrize("init", [False, True])
def test_cu_seqlens_equals_separate(init):
    lens = [1, 9, 20, 3]
    x, dt, A, B, C, _ = make_inputs(b=1, T=sum(lens))
    h0 = torch.randn(len(lens), 4, 8, 16) if init else None
    cu = torch.tensor([0, 1, 10, 30, 33], dtype=torch.int32)
    y, h = ssd_scan(x, dt, A, B, C, h0, cu_seqlens=cu, chunk_size=8)
    assert y.shape == x.shape and h.shape == (4, 4, 8, 16)
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        y_ref, h_ref = ssd_naive(x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], None if h0 is None else h0[i : i + 1])
        assert_close(y[:, s:e], y_ref)
        assert_close(h[i : i + 1], h_ref)


def test_cu_seqlens_needs_batch_of_one():
    x, dt, A, B, C, _ = make_inputs(b=2, T=4)
    with pytest.raises(ValueError):
        ssd_scan(x, dt, A, B, C, cu_seqlens=torch.tensor([0, 4]))


def test_low_precision_dtypes():
    x, dt, A, B, C, h0 = make_inputs(T=20, init=True, dtype=torch.bfloat16)
    y, h = ssd_scan(x, dt, A, B, C, h0, chunk_size=8)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    y_ref, h_ref = ssd_naive(x, dt, A, B, C, h0)
    assert rel_err(y, y_ref) < 1e-2
    assert_close(h, h_ref)


def test_gradcheck():
    x, dt, A, B, C, h0 = (t.double().requires_grad_() for t in make_inputs(b=1, T=5, H=2, P=2, G=1, N=3, init=True))
    assert torch.autograd.gradcheck(lambda *a: ssd_chunked(*a, chunk_size=2), (x, dt, A, B, C, h0))


def test_matches_transformers():
    from transformers.models.nemotron_h.modeling_nemotron_h import (
        mamba2_chunk_scan,
        mamba2_selective_state_update,
    )

    x, _, A, B, C, h0 = make_inputs(T=45, H=8, G=2, init=True)
    dt_raw, dt_bias = torch.randn(2, 45, 8), torch.randn(8)
    dt_limit = (0.05, float("inf"))
    dt = F.softplus(dt_raw + dt_bias).clamp(*dt_limit)
    y_hf, h_hf = mamba2_chunk_scan(x, dt_raw, A, B, C, chunk_size=16, dt_bias=dt_bias, initial_states=h0,
                                   dt_softplus=True, dt_limit=dt_limit, return_final_states=True)
    y, h = ssd_scan(x, dt, A, B, C, h0, chunk_size=8)
    assert_close(y, y_hf)
    assert_close(h, h_hf)

    state_hf, state = h_hf.clone(), h.clone()
    xt, Bt, Ct, dt_raw_t = torch.randn(2, 8, 8), torch.randn(2, 2, 16), torch.randn(2, 2, 16), torch.randn(2, 8)
    P, N = 8, 16  # transformers takes per-channel dt, A and dt_bias
    y_hf = mamba2_selective_state_update(state_hf, xt, dt_raw_t[..., None].expand(-1, -1, P),
                                         A[:, None, None].expand(-1, P, N), Bt, Ct,
                                         dt_bias=dt_bias[:, None].expand(-1, P), dt_softplus=True)
    y = ssd_step(state, xt, F.softplus(dt_raw_t + dt_bias), A, Bt, Ct)
    assert_close(y, y_hf)
    assert_close(state, state_hf)


# ---- CUDA: fla's chunk_simple_gla against the PyTorch path ----

TOL = {torch.float32: 2e-3, torch.bfloat16: 1e-2}


def _fla_and_ref(dtype, init, cu=None, T=333):
    """ssd_scan (fla) and ssd_chunked on the same leaves; init: initial states for each sequence."""
    pytest.importorskip("fla")
    S = 2 if cu is None else len(cu) - 1
    x, dt, A, B, C, _ = make_inputs(b=2 if cu is None else 1, T=T, H=8, P=32, G=2, N=64, device="cuda", dtype=dtype)
    h0 = torch.randn(S, 8, 32, 64, device="cuda") if init else None
    leaves = [t.requires_grad_() for t in (x, dt, A, B, C, h0) if t is not None]
    out = _ssd_fla(x, dt, A, B, C, h0, cu)
    ref = ssd_chunked(x, dt, A, B, C, h0, cu_seqlens=cu, chunk_size=64)
    return leaves, out, ref


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("init", [False, True])
def test_fla_matches_chunked(dtype, init):
    _, (y, h), (y_ref, h_ref) = _fla_and_ref(dtype, init)
    assert y.dtype == dtype and h.dtype == torch.float32 and h.shape == h_ref.shape
    assert rel_err(y, y_ref) < TOL[dtype]
    assert rel_err(h, h_ref) < TOL[dtype]


@pytest.mark.gpu
def test_fla_cu_seqlens():
    cu = torch.tensor([0, 1, 101, 138, 338], device="cuda", dtype=torch.int32)
    _, (y, h), (y_ref, h_ref) = _fla_and_ref(torch.float32, True, cu=cu, T=338)
    assert h.shape == h_ref.shape == (4, 8, 32, 64)
    assert rel_err(y, y_ref) < 2e-3
    assert rel_err(h, h_ref) < 2e-3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_backward(dtype):
    if not fla_backward_supported():
        pytest.skip("fla refuses gated backward kernels on Hopper with Triton < 3.7.1")
    leaves, (y, h), (y_ref, h_ref) = _fla_and_ref(dtype, True)
    dy, dh = torch.randn_like(y), torch.randn_like(h)
    grads = torch.autograd.grad((y * dy).sum() + (h * dh).sum(), leaves)
    grads_ref = torch.autograd.grad((y_ref * dy).sum() + (h_ref * dh).sum(), leaves)
    for name, g, g_ref in zip(["x", "dt", "A", "B", "C", "h0"], grads, grads_ref):
        assert rel_err(g, g_ref) < 5 * TOL[dtype], name


@pytest.mark.gpu
def test_ssd_scan_gradients_on_cuda():
    """Whichever path ssd_scan takes for training on this GPU, its gradients are the reference's."""
    pytest.importorskip("fla")
    x, dt, A, B, C, _ = make_inputs(b=1, T=200, H=8, P=32, G=2, N=64, device="cuda", dtype=torch.float32)
    leaves = [t.requires_grad_() for t in (x, dt, A, B, C)]
    y, h = ssd_scan(x, dt, A, B, C)
    y_ref, h_ref = ssd_chunked(x, dt, A, B, C, chunk_size=64)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad((y * dy).sum() + h.sum(), leaves)
    grads_ref = torch.autograd.grad((y_ref * dy).sum() + h_ref.sum(), leaves)
    for g, g_ref in zip(grads, grads_ref):
        assert rel_err(g, g_ref) < 1e-2


def test_packed_gradcheck_with_an_empty_sequence():
    """Gradients reach every sequence's inputs and initial state; an empty sequence passes its state on."""
    cu = torch.tensor([0, 3, 3, 7])
    x, dt, A, B, C = (t.double() for t in make_inputs(b=1, T=7, H=2, P=2, G=1, N=3)[:5])
    h0 = torch.randn(3, 2, 2, 3, dtype=torch.double)
    leaves = [t.requires_grad_() for t in (x, dt, A, B, C, h0)]
    assert torch.autograd.gradcheck(lambda *a: ssd_chunked(*a, cu_seqlens=cu, chunk_size=2), leaves)
    _, h = ssd_chunked(*leaves, cu_seqlens=cu, chunk_size=2)
    assert torch.equal(h[1], h0[1])
