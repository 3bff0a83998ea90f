import pytest
import torch
import torch.nn.functional as F
from ssd_reference import conv_naive

from timeviper.llm.conv import causal_conv1d, causal_conv1d_step

K, CH = 4, 6


def make_inputs(b=2, T=10, bias=True, init=False, device="cpu", dtype=torch.float32):
    x = torch.randn(b, T, CH, device=device, dtype=dtype)
    w = torch.randn(CH, K, device=device, dtype=dtype)
    bs = torch.randn(CH, device=device, dtype=dtype) if bias else None
    h0 = torch.randn(b, CH, K - 1, device=device, dtype=dtype) if init else None
    return x, w, bs, h0


def assert_close(out, ref, tol=1e-6):
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref.double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("T", [1, 2, 3, 10])
@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("bias,activation", [(True, "silu"), (False, None)])
def test_matches_naive(T, init, bias, activation):
    x, w, bs, h0 = make_inputs(T=T, bias=bias, init=init)
    y, h = causal_conv1d(x, w, bs, h0, activation=activation)
    y_ref, h_ref = conv_naive(x, w, bs, h0, activation)
    assert y.dtype == x.dtype and h.shape == (2, CH, K - 1)
    assert_close(y, y_ref)
    assert_close(h, h_ref)


def test_split_equals_full():
    x, w, bs, h0 = make_inputs(T=11, init=True)
    y, h = causal_conv1d(x, w, bs, h0)
    for cut in [1, 2, 7]:  # the first part shorter than, and longer than, the state
        y1, h1 = causal_conv1d(x[:, :cut], w, bs, h0)
        y2, h2 = causal_conv1d(x[:, cut:], w, bs, h1)
        assert_close(torch.cat([y1, y2], 1), y)
        assert_close(h2, h)


def test_step_equals_full():
    x, w, bs, h0 = make_inputs(T=9, init=True)
    y, h = causal_conv1d(x, w, bs, h0)
    state = h0.clone()
    ys = [causal_conv1d_step(x[:, t], state, w, bs) for t in range(9)]
    assert_close(torch.stack(ys, 1), y)
    assert_close(state, h)


@pytest.mark.parametrize("init", [False, True])
def test_cu_seqlens_equals_separate(init):
    cu = torch.tensor([0, 1, 3, 12, 14])
    x, w, bs, _ = make_inputs(b=1, T=14)
    h0 = torch.randn(4, CH, K - 1) if init else None
    y, h = causal_conv1d(x, w, bs, h0, cu_seqlens=cu)
    assert y.shape == x.shape and h.shape == (4, CH, K - 1)
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        y_ref, h_ref = conv_naive(x[:, s:e], w, bs, None if h0 is None else h0[i : i + 1])
        assert_close(y[:, s:e], y_ref)
        assert_close(h[i : i + 1], h_ref)


def test_gradcheck():
    x, w, bs, h0 = (t.double().requires_grad_() for t in make_inputs(b=1, T=5, init=True))
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d(*a), (x, w, bs, h0))


def test_rejects_unknown_activation():
    x, w, bs, h0 = make_inputs()
    with pytest.raises(ValueError):
        causal_conv1d(x, w, bs, activation="relu")


def test_matches_transformers():
    from transformers.models.nemotron_h.modeling_nemotron_h import causal_conv1d_fn, causal_conv1d_update

    x, w, bs, _ = make_inputs(T=10)
    y, h = causal_conv1d(x, w, bs)
    assert_close(y, causal_conv1d_fn(x.transpose(1, 2), w, bs, activation="silu").transpose(1, 2))

    # transformers caches the last K inputs; the oldest one is never read
    state_hf, state, xt = F.pad(h, (1, 0)), h.clone(), torch.randn(2, CH)
    y_hf = causal_conv1d_update(xt[..., None], state_hf, w, bs, activation="silu")[..., 0]
    assert_close(causal_conv1d_step(xt, state, w, bs), y_hf)
    assert_close(state, state_hf[..., 1:])


# ---- CUDA: fla's Triton conv against the F.conv1d path (on the CPU) ----

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True])
def test_fla_matches_torch(dtype, packed):
    pytest.importorskip("fla")
    cu = torch.tensor([0, 1, 3, 130, 300], device="cuda") if packed else None
    x, w, bs, _ = make_inputs(b=1 if packed else 3, T=300, device="cuda", dtype=dtype)
    h0 = torch.randn(4 if packed else 3, CH, K - 1, device="cuda", dtype=dtype)
    leaves = [t.requires_grad_() for t in (x, w, bs, h0)]
    y, h = causal_conv1d(x, w, bs, h0, cu_seqlens=cu)
    cpu = [t.detach().cpu().float().requires_grad_() for t in leaves]
    y_ref, h_ref = causal_conv1d(*cpu, cu_seqlens=None if cu is None else cu.cpu())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert y.dtype == dtype and h.shape == h_ref.shape
    assert_close(y.cpu(), y_ref, tol)
    assert_close(h.cpu(), h_ref, tol)

    dy, dh = torch.randn_like(y_ref), torch.randn_like(h_ref)
    grads = torch.autograd.grad((y * dy.cuda()).sum() + (h * dh.cuda()).sum(), leaves)
    grads_ref = torch.autograd.grad((y_ref * dy).sum() + (h_ref * dh).sum(), cpu)
    for name, g, g_ref in zip(["x", "weight", "bias", "h0"], grads, grads_ref):
        err = (g.cpu().double() - g_ref.double()).norm() / g_ref.double().norm()
        assert err < 10 * tol, name


def test_packed_gradcheck_with_an_empty_sequence():
    """Gradients reach every sequence's inputs and initial inputs; an empty sequence keeps its own."""
    cu = torch.tensor([0, 2, 2, 7])
    x, w, bs, _ = (t.double() if t is not None else None for t in make_inputs(b=1, T=7))
    h0 = torch.randn(3, CH, K - 1, dtype=torch.double)
    leaves = [t.requires_grad_() for t in (x, w, bs, h0)]
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d(*a, cu_seqlens=cu), leaves)
    _, h = causal_conv1d(*leaves, cu_seqlens=cu)
    assert torch.equal(h[1], h0[1])
