"""A small byte-level BPE tokenizer for the synthetic world.

It is trained on the world's own text (questions, options, answers, queries, captions of training
seeds) plus some general English, so the world's phrases are short token sequences, while any
text at all, being bytes, still tokenises and decodes back exactly. Training is deterministic.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from timeviper.errors import CheckpointError, ConfigError
from timeviper.prompts import SYSTEM_PROMPT, grounding_prompt, mcq_prompt
from timeviper.synth.tasks import TASKS, iter_items

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<video>")
CORPUS_SEEDS = range(300)  # training seeds (split 'train') whose items make the corpus
CORPUS_FRAMES = (10, 3600)
GENERAL_TEXT = (
    "Describe what happens in this video. What is shown at the beginning, and what happens at the end? "
    "The person walks into the room, picks up a cup, and sits down at the table near the window. "
    "How many people are there? Where does the story take place? Why did the man leave early? "
    + string.printable
)


def _corpus():
    """The world's prompts and answers, as the model reads and writes them, and general text."""
    yield GENERAL_TEXT
    yield SYSTEM_PROMPT
    for task in TASKS:
        for _, item in iter_items(task, CORPUS_SEEDS, CORPUS_FRAMES):
            if task == "mcq":
                yield mcq_prompt(item["question"], item["options"])
                yield f"{item['answer']}. The answer is {item['answer']}."
            elif task == "tvg":
                yield grounding_prompt(item["query"])
                yield f"{item['start']:.1f} - {item['end']:.1f} seconds"
            else:
                yield item["question"]
                yield item["caption"]


def train_tokenizer(vocab_size: int = 1024, path=None) -> Tokenizer:
    """Train the tokenizer; write it as tokenizer.json when `path` (a file or a folder) is given."""
    least = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < least:
        raise ConfigError(f"vocab_size must be an integer >= {least} (256 bytes + special tokens), got {vocab_size!r}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    if path is not None:
        file = _tokenizer_file(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(file))
    return tokenizer


def load_tokenizer(path) -> Tokenizer:
    """Load tokenizer.json (`path` is the file or its folder)."""
    file = _tokenizer_file(path)
    if not file.is_file():
        raise CheckpointError(f"no tokenizer at {file}")
    return Tokenizer.from_file(str(file))


def _tokenizer_file(path) -> Path:
    path = Path(path)
    return path if path.suffix == ".json" else path / "tokenizer.json"
