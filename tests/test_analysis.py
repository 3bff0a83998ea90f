"""Token mixing made explicit (analysis.mixing) against the layers' own forward; cuts block what they name;
drops are the engine's; blocking, redundancy and attention maps end to end on the embedded model."""

import json

import pytest
import torch

from timeviper.analysis.mixing import mixing
from timeviper.analysis.attention import evidence_received
from timeviper.analysis.sequence import INSTRUCTION, RESPONSE, SYSTEM, VISION, greedy, request, run
from timeviper.cli import main
from timeviper.errors import ConfigError
from timeviper.llm import HybridLM, LMConfig

HYBRID = LMConfig(vocab_size=53, hidden_size=32, pattern="M-M*-", num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=48, mamba_num_heads=4, mamba_head_dim=8, mamba_groups=2, ssm_state_size=8,
                  chunk_size=8, logn_attention_length=8)
QWEN = LMConfig(model_type="qwen3", vocab_size=53, hidden_size=32, pattern="*-", num_heads=4, num_kv_heads=2,
                head_dim=8, intermediate_size=48, mlp_act="swiglu", qk_norm=True, rope_theta=100.0)


def layer_inputs(cfg, t=21):
    torch.manual_seed(0)
    llm = HybridLM(cfg).eval()
    with torch.no_grad():  # a decay that spans the sequence, so that far tokens matter
        for block in llm.layers:
            if block.kind == "mamba":
                block.mixer.A_log.fill_(-2.0)
    return llm, torch.randn(1, t, cfg.hidden_size), torch.arange(t)[None]


@pytest.mark.parametrize("cfg", [HYBRID, QWEN], ids=["hybrid", "qwen3"])
def test_uncut_mixing_is_the_layer_forward(cfg):
    llm, x, positions = layer_inputs(cfg)
    for block in llm.layers:
        if block.kind != "mlp":
            explicit, matrix = mixing(block, x, positions)
            torch.testing.assert_close(explicit, block(x, positions), rtol=1e-5, atol=1e-5)
            assert matrix.shape == (1, block.mixer.num_heads if block.kind == "attention" else block.mixer.heads,
                                    21, 21)
            assert (matrix.triu(1) == 0).all()  # causal


@pytest.mark.parametrize("kind", ["mamba", "attention"])
def test_a_cut_blocks_its_sources(kind):
    """Readers placed after their sources (and nothing else before them) never see the sources once cut: changing
    the sources' inputs leaves the readers' outputs as they were (the conv taps included: readers start right
    after the sources); uncut, it does not."""
    llm, x, positions = layer_inputs(HYBRID)
    block = next(b for b in llm.layers if b.kind == kind)
    sources, readers = slice(0, 12), slice(12, 21)
    cut = torch.zeros(21, 21, dtype=torch.bool)
    cut[readers, sources] = True
    changed = x.clone()
    changed[:, sources] += torch.randn_like(changed[:, sources])
    with torch.no_grad():
        before, matrix = mixing(block, x, positions, cut)
        after, _ = mixing(block, changed, positions, cut)
        uncut = mixing(block, changed, positions)[0]
    torch.testing.assert_close(after[:, readers], before[:, readers], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(uncut[:, readers], before[:, readers], atol=1e-3)
    assert (matrix[0][:, readers, sources] == 0).all()


@pytest.fixture(scope="module")
def embedded():
    from timeviper.model import TimeViper

    model = TimeViper.from_pretrained()
    model.set_transv("none")
    return model


def test_sequence_answers_as_the_engine_does(embedded):
    """The whole-sequence path (one forward per new token) gives the engine's greedy answer; a cut changes it."""
    from timeviper.data.synth_source import sample_video, task_prompt
    from timeviper.synth import make_item

    spec, item = make_item("mcq", 1000003, 8, 64)
    video = sample_video(spec)
    seq = request(embedded, video.frames, video.timestamps, task_prompt(item))
    assert seq.groups.bincount().tolist()[1] == 8 * embedded.config.tokens_per_frame
    answered = greedy(embedded, seq, 12)
    assert embedded.tokenizer.decode(answered.response).strip() == embedded.chat(video, task_prompt(item),
                                                                                 max_new_tokens=12)
    logits, maps = run(embedded.llm, seq, maps=True)
    torch.testing.assert_close(logits, embedded.llm(inputs_embeds=seq.embeds, num_logits=1).logits)
    assert sorted(maps) == [i for i, b in enumerate(embedded.llm.layers) if b.kind != "mlp"]
    first_attention = min(i for i, b in enumerate(embedded.llm.layers) if b.kind == "attention")
    cut, _ = run(embedded.llm, seq, {first_attention: (INSTRUCTION, VISION)})
    assert not torch.allclose(cut, logits, atol=1e-2)


def test_drops_are_the_engines_td_layers(embedded):
    """Vision tokens dropped at a layer (run's drops) are those the engine's TransV `td` layer drops."""
    from timeviper import engine
    from timeviper.data.synth_source import sample_video, task_prompt
    from timeviper.synth import make_item

    spec, item = make_item("tvg", 1000004, 8, 64)
    video = sample_video(spec)
    seq = request(embedded, video.frames, video.timestamps, task_prompt(item))
    system, vision, instruction = (seq.embeds[:, seq.groups == g] for g in (SYSTEM, VISION, INSTRUCTION))
    embedded.set_transv("td_2_0.5-td_5_0.75")
    try:
        with torch.no_grad():
            want = engine.prefill(embedded.llm, embedded.transv_layers, system, vision.split(40, dim=1), instruction,
                                  embedded.llm.new_cache(1))
    finally:
        embedded.set_transv("none")
    got, _ = run(embedded.llm, seq, drops={2: 0.5, 5: 0.75})
    torch.testing.assert_close(got[:, -1], want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(run(embedded.llm, seq)[0], got, atol=1e-2)
    _, maps = run(embedded.llm, seq, maps=True, drops={2: 0.5})
    sizes = {layer: len(groups) for layer, (_, groups) in maps.items()}
    assert sizes[0] == len(seq.groups) and sizes[2] == len(seq.groups) - 8 * 16 // 2  # half of 8 frames' tokens
    assert all(m.shape[-1] == len(groups) for m, groups in maps.values())


def test_analyze_blocking_and_attention_write_data_and_figures(tmp_path, capsys):
    code = main(["analyze", "blocking", "--out", str(tmp_path), "--frames", "4", "--items", "2", "--device", "cpu",
                 "--split", "validation"])
    assert code == 0
    data = json.loads((tmp_path / "blocking.json").read_text())
    cells = data["results"]["mcq"]["cells"]
    assert {c["pair"] for c in cells} == {"v2i", "v2r"} and all(0 <= c["value"] <= 1 for c in cells)
    assert all(c["layers"] == [c["layer"]] for c in cells)  # --window 1
    assert data["settings"]["drop"] is None
    assert (tmp_path / "blocking.png").stat().st_size > 0
    code = main(["analyze", "attention", "--out", str(tmp_path), "--frames", "4", "--device", "cpu"])
    assert code == 0
    data = json.loads((tmp_path / "attention.json").read_text())
    for layer in data["layers"]:
        assert sum(layer["received"].values()) == pytest.approx(1.0, abs=1e-3)
        assert 0 <= layer["evidence"] <= 1  # every layer mixes the whole video
    assert data["tokens"]["vision"] == 4 * 16 and 0 < data["evidence_share"] < 1
    assert (tmp_path / "attention_maps.png").is_file() and (tmp_path / "attention_received.png").is_file()
    code = main(["analyze", "attention", "--out", str(tmp_path / "td"), "--frames", "4", "--device", "cpu",
                 "--drop", "td_2_0.5"])
    assert code == 0
    data = json.loads((tmp_path / "td" / "attention.json").read_text())
    assert data["settings"]["drop"] == "td_2_0.5" and data["tokens"]["vision"] == 4 * 16
    for layer in data["layers"]:
        assert sum(layer["received"].values()) == pytest.approx(1.0, abs=1e-3)
    # no evidence share past the drop: which tokens are left is not kept
    assert [layer["evidence"] is None for layer in data["layers"]] == [layer["layer"] >= 2 for layer in data["layers"]]


def test_evidence_received_is_the_readers_share_of_the_video_on_the_evidence():
    groups = torch.tensor([SYSTEM, VISION, VISION, VISION, VISION, INSTRUCTION, RESPONSE])
    shares = torch.zeros(7, 7)
    shares[5, [0, 1, 2, 3, 4]] = torch.tensor([0.5, 0.05, 0.1, 0.15, 0.2])  # half on the system token
    shares[6, [1, 4, 5]] = torch.tensor([0.25, 0.25, 0.5])
    evidence = torch.tensor([True, False, False, True])
    assert evidence_received(shares, groups, evidence) == pytest.approx(((0.05 + 0.2) / 0.5 + 1.0) / 2)
    assert evidence_received(shares[1:, 1:], groups[1:], evidence) == pytest.approx(0.75)  # no system token
    assert evidence_received(shares, groups, torch.tensor([True, False])) is None  # fewer vision tokens than that


def test_analyze_redundancy_sweeps_every_mixing_layer(tmp_path, embedded, capsys):
    code = main(["analyze", "redundancy", "--out", str(tmp_path), "--frames", "4", "--items", "1", "--rates", "1",
                 "--strategies", "uni,attn", "--device", "cpu"])
    assert code == 0
    cells = json.loads((tmp_path / "redundancy.json").read_text())["results"]["mcq"]["cells"]
    kinds = [b.kind for b in embedded.llm.layers]
    assert [c["layer"] for c in cells if c["strategy"] == "uni"] == [i for i, k in enumerate(kinds) if k != "mlp"]
    attention = [i for i, k in enumerate(kinds) if k == "attention"]
    assert [c["layer"] for c in cells if c["strategy"] == "attn"] == attention
    assert all(c["p"] == 1 and c["value"] in (0, 1) for c in cells)  # one item: right or wrong
    assert (tmp_path / "redundancy.png").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["blocking", "--tasks", "mcq,dance"], "unknown task 'dance'"),
    (["blocking", "--window", "0"], "window"),
    (["attention", "--tasks", "mcq,tvg"], "one task"),
    (["blocking", "--items", "0"], "--items"),
    (["redundancy", "--rates", "0.5,0"], "drop rates"),
    (["blocking", "--frames", "5000"], "use at most"),
    (["blocking", "--drop", "uni_2_0.5"], "--drop takes even drops"),
    (["attention", "--frames", "5000"], "use at most"),
    (["redundancy", "--strategies", "uni,random"], "unknown strategy 'random'"),
])
def test_analyze_refuses_bad_arguments(tmp_path, capsys, argv, message):
    assert main(["analyze", *argv, "--out", str(tmp_path), "--device", "cpu"]) == 1
    assert message in capsys.readouterr().err


def test_drop_specs_name_layers_and_shares(embedded):
    from timeviper.analysis.commands import parse_drops

    assert parse_drops("td_2_0.5-td_5_0.75", embedded.config.llm) == {2: 0.5, 5: 0.75}
    assert parse_drops(None, embedded.config.llm) == {}
    with pytest.raises(ConfigError, match="tdattn_5_0.5"):
        parse_drops("td_2_0.5-tdattn_5_0.5", embedded.config.llm)
