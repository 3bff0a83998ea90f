import numpy as np
import pytest
import torch

from timeviper.errors import ConfigError
from timeviper.vision.preprocess import preprocess_frames


def waves(count, height, width):
    """Smooth colour waves, like natural images (no pixel-level noise)."""
    y, x = torch.meshgrid(torch.linspace(0, 6, height), torch.linspace(0, 9, width), indexing="ij")
    frames = [torch.stack([127 + 120 * torch.sin(y * (i + 1) + x + c) for c in range(3)], -1) for i in range(count)]
    return torch.stack(frames).round().to(torch.uint8)


@pytest.mark.parametrize("frames", [
    waves(2, 720, 1280),  # downscale
    waves(2, 100, 150),  # upscale
    waves(2, 333, 517),  # odd sizes, near 1x
], ids=["down", "up", "odd"])
def test_matches_siglip_image_processor(frames):
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    processor = SiglipImageProcessorPil(size={"height": 384, "width": 384})
    expected = processor([f.numpy() for f in frames], return_tensors="pt")["pixel_values"]
    ours = preprocess_frames(frames)
    assert ours.shape == expected.shape == (2, 3, 384, 384)
    # PIL resizes in two uint8 passes (rounding, and clamping between the passes); we keep float
    # pixels throughout. That costs up to ~1 grey level, 2/255 = 0.008 after normalising by std 0.5.
    # (Pixel noise can differ more, up to ~0.2 when upscaling it, where PIL clamps its first pass's
    # overshoot; video frames are smooth at the pixel level.)
    diff = (ours - expected).abs()
    assert diff.max() < 0.012 and diff.mean() < 0.004


def test_same_size_only_normalises():
    frames = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    out = preprocess_frames(frames, size=16, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    expected = (frames.permute(0, 3, 1, 2) / 255 - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) \
        / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_dtype_chunking_and_non_square(monkeypatch):
    frames = waves(5, 60, 200)
    out = preprocess_frames(frames, size=32, dtype=torch.bfloat16)
    assert out.shape == (5, 3, 32, 32) and out.dtype == torch.bfloat16
    assert -1.0 <= out.min() and out.max() <= 1.0
    monkeypatch.setattr("timeviper.vision.preprocess._CHUNK_ELEMENTS", 2 * 3 * 60 * 200)  # 2 frames a step
    torch.testing.assert_close(preprocess_frames(frames, size=32), out.float(), atol=1e-2, rtol=0)


@pytest.mark.parametrize("frames", [
    torch.zeros(2, 8, 8, 3),  # float
    torch.zeros(8, 8, 3, dtype=torch.uint8),  # one frame without the T axis
    torch.zeros(2, 3, 8, 8, dtype=torch.uint8),  # channels first
    np.zeros((2, 8, 8, 3), np.uint8),
])
def test_rejects_bad_frames(frames):
    with pytest.raises(ConfigError, match="uint8 tensor"):
        preprocess_frames(frames)


def test_rejects_bad_options():
    frames = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(ConfigError, match="size"):
        preprocess_frames(frames, size=0)
    with pytest.raises(ConfigError, match="mean and std"):
        preprocess_frames(frames, mean=(0.5, 0.5))
