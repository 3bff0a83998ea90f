"""Chat templates, task prompts and the token layout of a prompt: [system][vision][instruction][response].

Text is tokenized in pieces around the `<video>` placeholder; the vision tokens are spliced in
between by the model, so a prompt is `Encoded(ids, labels, vision_at, instruction_end)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from timeviper.errors import CheckpointError, ConfigError

VIDEO_PLACEHOLDER = "<video>"
PLACEHOLDERS = (VIDEO_PLACEHOLDER, "<image>")  # LLaVA-OneVision image records say <image>
SYSTEM_PROMPT = "You are a helpful assistant that watches videos and answers questions about them."


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    system: str  # formats {content}
    user: str  # formats {content}
    assistant: str  # what opens an assistant turn
    end: str  # what closes an assistant turn; also the stop string


TEMPLATES = {
    # Qwen2/Qwen3 and Nemotron-Nano-v2 (the latter with "/no_think" in the system prompt to skip reasoning)
    "chatml": ChatTemplate("chatml", "<|im_start|>system\n{content}<|im_end|>\n", "<|im_start|>user\n{content}<|im_end|>\n",
                           "<|im_start|>assistant\n", "<|im_end|>"),
    # the embedded model's own tokenizer
    "timeviper": ChatTemplate("timeviper", "<|system|>{content}<|end|>", "<|user|>{content}<|end|>", "<|assistant|>",
                              "<|end|>"),
}


def get_template(name: str) -> ChatTemplate:
    if name not in TEMPLATES:
        raise ConfigError(f"unknown chat template {name!r}; choose from {sorted(TEMPLATES)}")
    return TEMPLATES[name]


class TextTokenizer:
    """A `tokenizers.Tokenizer` (from a tokenizer.json) with the chat template it was trained for."""

    def __init__(self, tokenizer: Tokenizer, template: str):
        self.tokenizer, self.template = tokenizer, get_template(template)
        self.stop_id = tokenizer.token_to_id(self.template.end)

    @classmethod
    def from_dir(cls, path: str | Path, template: str) -> "TextTokenizer":
        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise CheckpointError(f"{str(path)!r} has no tokenizer.json")
        return cls(Tokenizer.from_file(str(file)), template)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(Path(path) / "tokenizer.json"))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


@dataclass
class Encoded:
    """Token ids with a slot for vision tokens at `vision_at` (inserted before ids[vision_at]).

    labels: -100 except on assistant turns. The instruction is ids[vision_at:instruction_end]
    (everything between the video and the first response), whose last token steers TransV.
    """

    ids: list[int]
    labels: list[int] = field(default_factory=list)
    vision_at: int = 0
    instruction_end: int = 0


def encode_prompt(tok: TextTokenizer, instruction: str, system: str = SYSTEM_PROMPT,
                  instruction_before_video: bool = False) -> Encoded:
    """The inference prompt: system, video, instruction, and the opening of the assistant turn."""
    return encode_conversation(tok, [{"from": "human", "value": f"{VIDEO_PLACEHOLDER}\n{instruction}"}], system,
                               instruction_before_video)


def encode_conversation(tok: TextTokenizer, turns: list[dict], system: str = SYSTEM_PROMPT,
                        instruction_before_video: bool = False) -> Encoded:
    """LLaVA-style turns [{"from": "human"|"gpt", "value": ...}] -> Encoded with labels on "gpt" turns.

    The first human turn carries the video: at its `<video>` (or `<image>`) placeholder, or at its start
    if it has none. With `instruction_before_video` its instruction (the text after the video) is also put
    before the video, so that the recurrent layers read the video knowing what is asked (as "just read
    twice" prompting does for recurrent LMs); it still follows the video, where TransV reads it.
    A conversation that ends with a human turn is an inference prompt (it ends opening the assistant turn).
    """
    t = tok.template
    if not turns or turns[0].get("from") != "human":
        raise ConfigError("a conversation must start with a human turn")
    out = Encoded([], [])

    def add(text: str, learn: bool) -> None:
        ids = tok.encode(text)
        out.ids += ids
        out.labels += ids if learn else [-100] * len(ids)

    system_block = t.system.format(content=system)
    for i, turn in enumerate(turns):
        role, value = turn.get("from"), turn.get("value", "")
        if role == "human":
            if i == 0:
                mark = next((m for m in PLACEHOLDERS if m in value), None)
                before, _, after = value.partition(mark) if mark else ("", "", value)
                if instruction_before_video and after.strip():
                    before += after.strip() + "\n"
                head, _, tail = t.user.partition("{content}")
                add(system_block + head + before, False)
                out.vision_at = len(out.ids)
                add(after.lstrip("\n") + tail + t.assistant, False)
                out.instruction_end = len(out.ids)
            else:
                for mark in PLACEHOLDERS:
                    value = value.replace(mark, "")
                add(t.user.format(content=value) + t.assistant, False)
        elif role == "gpt":
            if i == 0 or turns[i - 1].get("from") != "human":
                raise ConfigError(f"turn {i}: an assistant turn must follow a human turn")
            add(value + t.end, True)
        else:
            raise ConfigError(f"turn {i}: unknown speaker {role!r} (expected 'human' or 'gpt')")
    return out


# --- task prompts ---------------------------------------------------------------------------------------
def mcq_prompt(question: str, options: list[str]) -> str:
    lines = [question, *(f"({letter}) {opt}" for letter, opt in zip("ABCD", options))]
    return "\n".join(lines) + "\nAnswer with the option's letter from the given choices directly."


def grounding_prompt(query: str) -> str:
    return (f"When does \"{query}\" happen in the video? "
            "Answer with the start and end time in seconds, as 'start - end seconds'.")


CAPTION_PROMPT = "Describe the video in detail, scene by scene."
NO_EVENT = "It does not happen in the video."  # the answer to a grounding question about an event not shown
