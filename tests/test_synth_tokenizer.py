import pytest

from timeviper.errors import CheckpointError, ConfigError
from timeviper.synth import SPECIAL_TOKENS, load_tokenizer, make_item, train_tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizer")


@pytest.fixture(scope="module")
def tokenizer(folder):
    return train_tokenizer(path=folder)


@pytest.mark.parametrize(
    "text",
    [
        "Scene 1: a striped teal background with an orange star moving left.",
        "Find the moment when the blue circle moves up: 12.5 - 30.0 seconds.",
        "Ünïcödé, emoji 🙂, CJK 视频, tabs\tand\nnewlines, ~!@#$%^&*()_+{}|:\"<>?",
        "  leading and trailing spaces  ",
        "",
    ],
)
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_are_single_ids(tokenizer):
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    ids = tokenizer.encode("<|user|><video>What is shown?<|end|><|assistant|>").ids
    assert ids[:2] == [tokenizer.token_to_id("<|user|>"), tokenizer.token_to_id("<video>")]
    assert ids[-2:] == [tokenizer.token_to_id("<|end|>"), tokenizer.token_to_id("<|assistant|>")]


def test_world_text_is_compact(tokenizer):
    _, item = make_item("caption", 1_000_001, 600)  # a validation seed: not in the corpus
    words = item["caption"].split()
    assert len(tokenizer.encode(item["caption"]).ids) <= 1.6 * len(words)
    assert 512 <= tokenizer.get_vocab_size() <= 1024


def test_deterministic_and_saved(tokenizer, folder):
    assert load_tokenizer(folder / "tokenizer.json").to_str() == load_tokenizer(folder).to_str() == tokenizer.to_str()
    assert train_tokenizer().to_str() == tokenizer.to_str()


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(vocab_size=100)
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_tokenizer(tmp_path)
