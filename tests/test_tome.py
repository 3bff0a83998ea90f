"""ToMe (bipartite soft matching): exact counts, size-weighted sums, merge order, batching, errors."""

import pytest
import torch

from timeviper.errors import ConfigError
from timeviper.vision.tome import merge_tokens


@pytest.mark.parametrize("tokens,keep", [(729, 16), (729, 728), (7, 3), (5, 2), (2, 1), (3, 1), (100, 37)])
def test_exact_count_and_preserved_sums(tokens, keep):
    x = torch.randn(3, tokens, 8, dtype=torch.float64)
    merged, size = merge_tokens(x, keep)
    assert merged.shape == (3, keep, 8) and size.shape == (3, keep, 1)
    torch.testing.assert_close(size.sum(1), torch.full((3, 1), float(tokens), dtype=torch.float64))
    torch.testing.assert_close((merged * size).sum(1), x.sum(1))


def test_given_sizes_are_weights():
    x, size_in = torch.randn(2, 50, 16), torch.randint(1, 5, (2, 50, 1)).float()
    merged, size = merge_tokens(x, 10, size_in)
    torch.testing.assert_close(size.sum(1), size_in.sum(1))
    torch.testing.assert_close((merged * size).sum(1), (x * size_in).sum(1), rtol=1e-5, atol=1e-4)
    again, size_again = merge_tokens(merged, 4, size)  # merging in steps keeps the totals too
    torch.testing.assert_close((again * size_again).sum(1), (x * size_in).sum(1), rtol=1e-5, atol=1e-4)


def test_identical_tokens_merge_first_and_order_is_kept():
    x = torch.randn(2, 10, 16)
    x[:, 5] = x[:, 2]  # positions 2 (set A) and 5 (set B) are the same token
    merged, size = merge_tokens(x, 9)
    expected = torch.cat([x[:, :2], x[:, 3:]], dim=1)  # A token 2 went into B token 5; the rest in order
    torch.testing.assert_close(merged, expected)
    assert size[:, :, 0].tolist() == [[1, 1, 1, 1, 2, 1, 1, 1, 1]] * 2  # at original position 5


def test_similar_tokens_merge_into_one():
    centers = torch.randn(4, 32)
    x = centers.repeat_interleave(6, dim=0)[None] + 1e-3 * torch.randn(1, 24, 32)  # 4 clusters of 6
    merged, size = merge_tokens(x, 4)
    assert sorted(size.flatten().tolist()) == [6, 6, 6, 6]
    torch.testing.assert_close(merged[0], centers, atol=1e-2, rtol=0)  # one mean per cluster, in order


def test_frames_are_independent_and_deterministic():
    x = torch.randn(6, 40, 12)
    merged, size = merge_tokens(x, 5)
    for i in range(6):
        one, one_size = merge_tokens(x[i:i + 1], 5)
        torch.testing.assert_close(one, merged[i:i + 1])
        torch.testing.assert_close(one_size, size[i:i + 1])
    assert torch.equal(merge_tokens(x, 5)[0], merged)


def test_enough_tokens_returns_input():
    x = torch.randn(2, 9, 4)
    merged, size = merge_tokens(x, 9)
    assert merged is x and torch.equal(size, torch.ones(2, 9, 1))
    assert merge_tokens(x, 50)[0] is x


def test_low_precision_input_keeps_its_dtype():
    x = torch.randn(2, 64, 8).bfloat16()
    merged, size = merge_tokens(x, 16)
    assert merged.dtype == torch.bfloat16 and size.dtype == torch.float32
    torch.testing.assert_close((merged.float() * size).sum(1), x.float().sum(1), rtol=2e-2, atol=0.3)


def test_gradients_flow_through_the_means():
    x = torch.randn(2, 20, 8, requires_grad=True)
    merged, _ = merge_tokens(x, 4)
    merged.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("num_tokens", [0, -3, 2.5, True, "16", None])
def test_bad_num_tokens(num_tokens):
    with pytest.raises(ConfigError, match="num_tokens"):
        merge_tokens(torch.randn(1, 8, 4), num_tokens)


def test_bad_shapes():
    with pytest.raises(ConfigError, match="frames, tokens, channels"):
        merge_tokens(torch.randn(8, 4), 2)
    with pytest.raises(ConfigError, match="size must have shape"):
        merge_tokens(torch.randn(1, 8, 4), 2, torch.ones(1, 8))


def test_work_is_batched_over_frames():
    """As many tensor operations for 64 frames as for 2: one batched pass, no per-frame Python loop."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    def ops(frames: int) -> int:
        with Count() as count:
            merged, _ = merge_tokens(torch.randn(frames, 729, 8), 16)
        assert merged.shape == (frames, 16, 8)
        return count.ops

    assert ops(2) == ops(64)
