"""Prompt layout: system, vision slot, instruction; labels only on answers."""

import pytest

from timeviper.errors import ConfigError
from timeviper.prompts import TextTokenizer, encode_conversation, encode_prompt, mcq_prompt
from timeviper.synth.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer(train_tokenizer(vocab_size=512), "timeviper")


def test_prompt_layout(tok):
    enc = encode_prompt(tok, "What is shown?", system="Be brief.")
    before, after = tok.decode(enc.ids[:enc.vision_at]), tok.decode(enc.ids[enc.vision_at:])
    assert before.startswith("Be brief.") and "What is shown?" in after
    assert tok.tokenizer.decode(enc.ids[enc.vision_at:], skip_special_tokens=False).endswith("<|assistant|>")
    assert enc.instruction_end == len(enc.ids) and all(x == -100 for x in enc.labels)


@pytest.mark.parametrize("mark", ["<video>", "<image>", None])
def test_labels_cover_answers_only(tok, mark):
    first = f"{mark}\nQ1" if mark else "Q1"
    turns = [{"from": "human", "value": first}, {"from": "gpt", "value": "A1"},
             {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]
    enc = encode_conversation(tok, turns)
    learned = [i for i, x in zip(enc.ids, enc.labels) if x != -100]
    text = tok.tokenizer.decode(learned, skip_special_tokens=False)
    assert text == "A1<|end|>A2<|end|>"
    assert "<image>" not in tok.decode(enc.ids) and "<video>" not in tok.decode(enc.ids)
    assert tok.decode(enc.ids[enc.vision_at:enc.instruction_end]).startswith("Q1")


def test_instruction_before_video_asks_twice(tok):
    """The instruction also goes before the vision slot; what follows the slot (TransV's instruction) is unchanged."""
    plain = encode_prompt(tok, "Which way?", system="Be brief.")
    first = encode_prompt(tok, "Which way?", system="Be brief.", instruction_before_video=True)
    assert tok.decode(first.ids[:first.vision_at]).endswith("Be brief.Which way?\n")
    assert first.ids[first.vision_at:] == plain.ids[plain.vision_at:]
    assert first.instruction_end - first.vision_at == plain.instruction_end - plain.vision_at
    turns = [{"from": "human", "value": "Intro <video>\nQ1"}, {"from": "gpt", "value": "A1"},
             {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]
    enc = encode_conversation(tok, turns, instruction_before_video=True)
    assert tok.decode(enc.ids[:enc.vision_at]).endswith("Intro Q1\n")  # the first question only
    assert [x for x in enc.labels if x != -100] == [x for x in encode_conversation(tok, turns).labels if x != -100]
    alone = encode_conversation(tok, [{"from": "human", "value": "<video>"}], instruction_before_video=True)
    assert alone.ids == encode_conversation(tok, [{"from": "human", "value": "<video>"}]).ids  # nothing to repeat


def test_bad_conversations(tok):
    with pytest.raises(ConfigError, match="start with a human"):
        encode_conversation(tok, [{"from": "gpt", "value": "x"}])
    with pytest.raises(ConfigError, match="unknown speaker"):
        encode_conversation(tok, [{"from": "human", "value": "x"}, {"from": "robot", "value": "y"}])


def test_mcq_prompt_lists_lettered_options():
    text = mcq_prompt("Which?", ["a", "b", "c", "d"])
    assert "(A) a" in text and "(D) d" in text
