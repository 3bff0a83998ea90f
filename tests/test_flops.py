"""TimeViper.flops_per_token: a hand count on a tiny config, and autograd's own count of matrix FLOPs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import SiglipVisionConfig

from timeviper.data.packing import collate
from timeviper.data.records import IGNORE_INDEX, Sample
from timeviper.llm import LMConfig
from timeviper.model import TimeViper, TimeViperConfig
from timeviper.train.optim import set_trainable

LLM = LMConfig(vocab_size=64, hidden_size=16, pattern="M*-*", num_heads=2, num_kv_heads=1, head_dim=4,
               intermediate_size=24, mamba_num_heads=2, mamba_head_dim=4, mamba_groups=1, ssm_state_size=4)
VISION = SiglipVisionConfig(image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=12).to_dict()  # 2 x 2 patches


def tiny(pattern: str, transv: str, tokens_per_frame: int) -> TimeViper:
    model = TimeViper(TimeViperConfig(LLM.replace(pattern=pattern), VISION, tokens_per_frame, transv))
    model.vision.model.config._attn_implementation = "eager"  # FlopCounterMode sees no CPU SDPA
    return model


def test_hand_count():
    model = tiny("M*-*", "uni_1_0.5-attn_3_0.5", tokens_per_frame=2)
    mamba = 16 * (8 + 16 + 2) + 16 * 4 + 8 * 16  # in_proj to z, x|B|C, dt; conv taps; out_proj
    attention = 16 * 8 + 2 * 16 * 4 + 8 * 16  # q, k, v, o
    mlp = 2 * 16 * 24
    ssd = 3 * 5 * 8 * 4  # per token: 5 P N per head forward, x3

    def attention_scores(n):
        return 3 * 2 * 2 * 4 * n * n  # x3 (2 heads x 4 dims x n^2 / 2 pairs x 4)

    # 40 tokens, 6 frames = 12 vision tokens, 5 loss tokens; uni_1_0.5 drops 6, attn_3_0.5 drops 3 more
    llm = 6 * mamba * 40 + ssd * 40 + 6 * attention * 34 + attention_scores(34) + 6 * mlp * 34 \
        + 6 * attention * 31 + attention_scores(31) + 6 * 64 * 16 * 5
    projector = (4 * 8 * 16 + 6 * 16 * 16) * 12  # trained; the first layer's input (frozen SigLIP's) needs no gradient
    vit = 6 * (2 * (8 * 3 * 8 * 8 + 4 * 8 * 8 + 2 * 8 * 12) * 4 + 4 * 4 * 4 * 8)  # frozen: forward only
    assert model.flops_per_token(40, frames=6, loss_tokens=5) * 40 == pytest.approx(llm + projector + vit)

    text = 6 * (mamba + 2 * attention + mlp + 64 * 16) * 100 + ssd * 100 + 2 * attention_scores(100)
    assert model.flops_per_token(100) * 100 == pytest.approx(text)


@pytest.mark.parametrize("trainable", [["projector"], ["projector", "llm"], ["projector", "llm", "vision"]])
def test_matrix_flops_match_what_autograd_runs(trainable):
    """MLP layers only (FlopCounterMode does not count attention on a CPU) and no ToMe merging."""
    model = tiny("--", "none", tokens_per_frame=4)
    set_trainable(model, trainable)
    model.vision.trainable = "vision" in trainable
    ids = torch.randint(1, 64, (30,))
    labels = torch.full((30,), IGNORE_INDEX)
    labels[24:] = ids[24:]
    frames = torch.randint(0, 256, (5, 20, 24, 3), dtype=torch.uint8)
    batch = collate([Sample("s", ids, labels, (2, 22), 24, frames)])
    with FlopCounterMode(display=False) as counter:
        loss, count = model.forward_train(batch)
        loss.backward()
    assert count == 6  # labels are shifted: the last answer token predicts nothing
    assert model.flops_per_token(30, frames=5, loss_tokens=6) * 30 == pytest.approx(counter.get_total_flops())
