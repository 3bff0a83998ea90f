import pytest
import torch

from timeviper.errors import ConfigError
from timeviper.vision import Projector
from timeviper.vision.tome import merge_tokens


def test_shapes_and_weight_names():
    projector = Projector(vision_dim=24, llm_dim=40, num_tokens=16)
    assert projector(torch.randn(3, 729, 24)).shape == (3, 16, 40)
    assert list(projector.state_dict()) == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    assert projector.state_dict()["mlp.0.weight"].shape == (40, 24)
    assert projector.state_dict()["mlp.2.weight"].shape == (40, 40)


def test_is_tome_then_mlp():
    projector = Projector(8, 12, num_tokens=4)
    x = torch.randn(2, 30, 8)
    merged, _ = merge_tokens(x, 4)
    torch.testing.assert_close(projector(x), projector.mlp(merged))


def test_exact_token_count_passes_features_through_the_mlp():
    projector = Projector(8, 12, num_tokens=5)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(projector(x), projector.mlp(x))


def test_gradients_reach_weights_and_features():
    projector = Projector(16, 32, num_tokens=4)
    features = torch.randn(3, 50, 16, requires_grad=True)
    projector(features).pow(2).mean().backward()
    for name, param in projector.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_low_precision():
    projector = Projector(16, 32, num_tokens=4).to(torch.bfloat16)
    out = projector(torch.randn(2, 20, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 4, 32)


def test_bad_configuration_and_inputs():
    with pytest.raises(ConfigError, match="num_tokens"):
        Projector(8, 8, num_tokens=0)
    projector = Projector(8, 12, num_tokens=16)
    with pytest.raises(ConfigError, match=r"got \(2, 10, 8\)"):
        projector(torch.randn(2, 10, 8))  # fewer patches than output tokens
    with pytest.raises(ConfigError, match=r"got \(2, 20, 9\)"):
        projector(torch.randn(2, 20, 9))
    with pytest.raises(ConfigError, match=r"got \(20, 8\)"):
        projector(torch.randn(20, 8))
