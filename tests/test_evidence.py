"""Evidence attention: the synthetic items' evidence, its frames in a packed batch, the loss, and training with it."""

import copy
import json
import re

import pytest
import torch
from test_model import ANSWERS, LLM, VISION, packed_batch, tokenizer  # noqa: F401 (a fixture)
from test_train_cli import tiny_config

import timeviper.model
from timeviper.cli import main
from timeviper.data.packing import collate
from timeviper.data.records import Sample
from timeviper.errors import ConfigError
from timeviper.evidence import EvidenceAttention, evidence_loss, evidence_tokens
from timeviper.model import TimeViper, TimeViperConfig
from timeviper.sampling import frames_within
from timeviper.synth.pretrain_vision import ALL_BACKGROUNDS, NO_OBJECT, frame_labels
from timeviper.synth.tasks import LETTERS, make_item
from timeviper.synth.world import OBJECTS
from timeviper.transv import Span, attention_logits, uniform_drop

OBJECT_KINDS = ("present", "count", "background", "motion", "needle")


def on_screen(spec, obj: str) -> set[int]:
    return {t for t in range(spec.frames) if frame_labels(spec, t)[1] == OBJECTS.index(obj)}


def seconds(evidence) -> set[int]:
    return {t for start, end in evidence for t in range(int(start), int(end))}


@pytest.mark.parametrize("kind", OBJECT_KINDS + ("order", "scene"))
def test_the_evidence_shows_what_the_answer_names(kind):
    asked = 0
    for seed in range(40):
        try:
            spec, item = make_item("mcq", seed, 180, kind=kind)
        except ConfigError:  # no such question on this video
            continue
        asked += 1
        answer, shown = item["options"][LETTERS.index(item["answer"])], seconds(item["evidence"])
        if kind in ("count", "motion", "background"):  # the object is in the question
            answer = re.search(r"the (\w+ \w+) (?:appear|move)", item["question"])[1]
        if kind in ("present", "count", "background"):  # every second the object is on screen
            assert shown == on_screen(spec, answer)
        elif kind == "order":  # its first appearance, before any other option's
            assert shown and shown <= on_screen(spec, answer) and min(on_screen(spec, answer)) == min(shown)
        elif kind == "scene":  # the whole first or last scene, which holds the answer
            first = item["question"].endswith("first scene?")
            assert min(shown) == 0 if first else max(shown) == spec.frames - 1
            assert len({frame_labels(spec, t)[0] for t in shown}) == 1 and on_screen(spec, answer) & shown
        else:  # motion, needle: one appearance of the object (for motion, on the asked background)
            assert len(item["evidence"]) == 1 and shown and shown <= on_screen(spec, answer)
            if kind == "motion":
                background = ALL_BACKGROUNDS.index(item["question"].split("on the ")[1].removesuffix(" background?"))
                assert {frame_labels(spec, t)[0] for t in shown} == {background}
        assert all(frame_labels(spec, t)[1] != NO_OBJECT for t in shown) or kind == "scene"
    assert asked >= 5


def test_grounding_evidence_is_the_event_and_captions_have_none():
    _, item = make_item("tvg", 3, 120)
    assert item["evidence"] == [[item["start"], item["end"]]]
    assert "evidence" not in make_item("caption", 3, 120)[1]


def test_collate_marks_the_frames_inside_the_evidence():
    times = torch.tensor([0.0, 2.0, 4.0, 6.0, 8.0])
    assert frames_within(times, [(2, 5), (8, 9)]).tolist() == [False, True, True, False, True]
    sample = Sample("a", torch.zeros(8, dtype=torch.long), torch.full((8,), -100), (1, 6), 7,
                    torch.zeros(5, 4, 4, 3, dtype=torch.uint8), times, ((2.0, 5.0),))
    text_only = Sample("b", torch.zeros(3, dtype=torch.long), torch.full((3,), -100), (1, 1), 2, None)
    batch = collate([sample, text_only])
    assert batch["evidence"][0].tolist() == [False, True, True, False, False] and batch["evidence"][1] is None


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TimeViper(TimeViperConfig(LLM, VISION, tokens_per_frame=4, transv="uni_2_0.5-attn_3_0.5",
                                     chat_template="timeviper"))


def evidence_batch(tokenizer):
    """Two packed samples (3 and 2 frames) with evidence on frames {1} and {0}."""
    batch = packed_batch(tokenizer, ANSWERS)
    batch["evidence"] = [torch.tensor([False, True, False]), torch.tensor([True, False])]
    return batch


def test_the_loss_is_the_log_share_of_attention_each_sample_puts_on_its_evidence(model, tokenizer):
    """Packed (both samples in one call) against each sample alone, its softmax over its own vision tokens."""
    batch = evidence_batch(tokenizer)
    flags = evidence_tokens(batch, 4, batch["input_ids"].shape[1], "cpu")
    (s0, e0), (s1, e1) = batch["vision_spans"].tolist()
    assert flags.nonzero().flatten().tolist() == [*range(s0 + 4, s0 + 8), *range(s1, s1 + 4)]
    bounds, ends = batch["cu_seqlens"].tolist(), batch["instruction_ends"].tolist()
    spans = [Span(bounds[i], *batch["vision_spans"][i].tolist(), ends[i], bounds[i + 1]) for i in range(2)]
    h = torch.randn(1, bounds[-1], LLM.hidden_size, generator=torch.Generator().manual_seed(1))
    block = model.llm.layers[3]
    with torch.no_grad():
        packed = evidence_loss(block, h, None, spans, flags)
        alone = 0.0
        for sp in spans:
            logits = attention_logits(block.mixer, block.norm, h[:, sp.instruction_end - 1:sp.instruction_end], None,
                                      h[:, sp.vision_start:sp.vision_end], None)[:, 0]  # [H, V]
            share = logits.softmax(-1).mean(0)[flags[sp.vision_start:sp.vision_end]].sum()
            alone -= torch.log(share)
    torch.testing.assert_close(packed, alone)
    everything = torch.zeros_like(flags)
    everything[s0:e0] = True  # all of a sample's vision is evidence: nothing to learn
    with torch.no_grad():
        assert evidence_loss(block, h, None, spans, everything).abs() < 1e-5
        assert evidence_loss(block, h, None, spans, torch.zeros_like(flags)) == 0


def test_forward_train_adds_the_weighted_term_on_the_tokens_the_drop_left(model, tokenizer, monkeypatch):
    """The term at layer 3 reads the evidence flags of the tokens that layer 2's uniform drop left, and is added
    times its weight; a gradient step on it alone raises the share."""
    model = copy.deepcopy(model).train()
    batch = evidence_batch(tokenizer)
    with torch.no_grad():
        plain, count = model.forward_train(batch, "sample")
    seen = []

    def spy(block, h, positions, spans, evidence):
        seen.append((evidence, evidence_loss(block, h, positions, spans, evidence)))
        return seen[-1][1]

    monkeypatch.setattr(timeviper.model, "evidence_loss", spy)
    model.evidence_attention = EvidenceAttention((3,), 0.5)
    total, same = model.forward_train(batch, "sample")
    (flags_there, term), = seen
    flags = evidence_tokens(batch, 4, batch["input_ids"].shape[1], "cpu")
    kept = torch.ones_like(flags)
    for start, end in batch["vision_spans"].tolist():
        kept[start:end] = ~uniform_drop(0, end - start, 0.5)
    assert torch.equal(flags_there, flags[kept]) and term > 0 and same == count
    torch.testing.assert_close(total.detach(), plain + 0.5 * term.detach())
    assert float(model.extra_losses["evidence_loss"]) == pytest.approx(0.5 * float(term))
    (total - plain).backward()  # the evidence term alone reaches the layer and everything before it
    assert model.llm.layers[3].mixer.q_proj.weight.grad.abs().sum() > 0
    assert model.projector.mlp[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
        model.forward_train(batch, "sample")
    assert seen[-1][1] < term


def test_training_with_evidence_attention_logs_it(tmp_path, capsys):
    config, out = tiny_config(tmp_path / "tiny.yaml"), tmp_path / "run"
    args = ["train", "--config", str(config), "--output", str(out), "--max-steps", "2",
            "--set", "train.evidence_weight=0.2"]
    assert main(args + ["--set", "train.evidence_layers=[1]", "--output", str(tmp_path / "bad")]) == 1  # an MLP layer
    assert "evidence attention needs attention layers; [1] are not" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()
    assert main(args + ["--set", "train.evidence_layers=[2]"]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < m["evidence_loss"] < m["loss"] for m in metrics)


def test_bad_evidence_settings(tmp_path, capsys):
    config = tiny_config(tmp_path / "tiny.yaml")
    run = ["train", "--config", str(config), "--output", str(tmp_path / "run")]
    assert main(run + ["--set", "train.evidence_weight=0.1"]) == 1
    assert "evidence_layers: must name at least one attention layer" in capsys.readouterr().err
    assert main(run + ["--set", "train.evidence_weight=-1", "--set", "train.evidence_layers=[2]"]) == 1
    assert "evidence_weight: must be >= 0" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="attention layers"):
        EvidenceAttention((0, 9), 1.0).check(LLM)
    assert not (tmp_path / "run").exists()


def test_several_processes_are_refused(tmp_path, monkeypatch):
    """Under FSDP2 the watched layer's weights would be read outside its forward: one process only."""
    import timeviper.train.trainer as trainer
    from timeviper.train import load_config
    from timeviper.train.distributed import DistEnv

    config = load_config(tiny_config(tmp_path / "tiny.yaml"),
                         ["train.evidence_weight=0.1", "train.evidence_layers=[2]"])
    monkeypatch.setattr(trainer, "init_distributed", lambda: DistEnv(0, 0, 2, torch.device("cpu")))
    with pytest.raises(ConfigError, match="one process only"):
        trainer.Trainer(config, torch.nn.Linear(1, 1), iter(()), tmp_path / "run")
