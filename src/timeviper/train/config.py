"""Training configuration: a tree of dataclasses read from YAML and checked on the way in.

Every problem raises :class:`~timeviper.errors.ConfigError` naming the file and the dotted key
(``configs/stage2.yaml: optim.lr: must be > 0``): unknown keys, wrong types, bad values, missing
required keys and paths that do not exist. Relative paths are taken from the working directory.
PyYAML reads ``1e-5`` (no dot) as a string; number fields accept such strings.
"""

from __future__ import annotations

import dataclasses
import json
import types
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from timeviper.errors import ConfigError
from timeviper.sampling import sample_times
from timeviper.synth.tasks import MCQ_KINDS, TASKS
from timeviper.synth.world import MIN_SIZE, split_range
from timeviper.vision.projector import check_time_period

PARTS = ("projector", "llm", "transv", "vision")  # vision: only small encoders trained from scratch
STAGE_TRAINABLE = {1: ["projector"], 2: ["projector", "llm", "transv"]}


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _existing_path(path: str | None, key: str, kind: str) -> str | None:
    """`path` made absolute (a checkpoint's config.yaml must not depend on the directory training ran from)."""
    if path is None:
        return None
    _require(Path(path).exists(), key, f"{kind} {path} does not exist")
    return str(Path(path).absolute())


@dataclass
class ModelConfig:
    """Which model to train; exactly one of ``llm`` (with ``vision``), ``pretrained`` or ``tiny``."""

    llm: str | None = None  # HF directory of the language model (nemotron_h, qwen2 or qwen3)
    vision: str | None = None  # HF directory of the SigLIP vision encoder
    pretrained: str | None = None  # a TimeViper directory, or "embedded"
    tiny: dict | None = None  # the config of a small random model, for smoke runs
    init_checkpoint: str | None = None  # a checkpoint-STEP directory whose weights are loaded first
    transv: str | None = None  # TransV spec such as "uni_7_0.5-attn_39_0.9"; null: no compression
    time_period: float | None = None  # projector's frame-time embedding, longest period in s; null: none (paper)
    instruction_before_video: bool | None = None  # the instruction also before the video; null: the model's own
    transv_train_shares: list[float] | None = None  # [lo, hi]: uniform TransV layers drop a share drawn per sample

    def __post_init__(self):
        sources = [name for name in ("llm", "pretrained", "tiny") if getattr(self, name) is not None]
        _require(
            len(sources) == 1,
            "llm",
            "set exactly one of model.llm (with model.vision: HF directories), model.pretrained "
            f"(a TimeViper directory or 'embedded') or model.tiny; got {sources or 'none'}",
        )
        _require((self.llm is None) == (self.vision is None), "vision", "model.llm and model.vision go together")
        self.llm = _existing_path(self.llm, "llm", "directory")
        self.vision = _existing_path(self.vision, "vision", "directory")
        if self.pretrained != "embedded":
            self.pretrained = _existing_path(self.pretrained, "pretrained", "directory")
        self.init_checkpoint = _existing_path(self.init_checkpoint, "init_checkpoint", "checkpoint")
        check_time_period(self.time_period)
        _require(self.instruction_before_video is None or isinstance(self.instruction_before_video, bool),
                 "instruction_before_video",
                 f"must be true, false or null, got {self.instruction_before_video!r}")
        shares = self.transv_train_shares
        _require(shares is None or (isinstance(shares, list) and len(shares) == 2
                                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in shares)
                                    and 0 <= shares[0] <= shares[1] <= 1),
                 "transv_train_shares", f"must be [lo, hi] with 0 <= lo <= hi <= 1, or null; got {shares!r}")


@dataclass
class TrainConfig:
    max_steps: int  # optimizer steps; sets the schedule
    global_batch_tokens: int  # token budget of one optimizer step over all ranks
    micro_batch_tokens: int  # token budget of one packed micro-batch on one rank
    stage: int = 2
    trainable: list[str] | None = None  # subset of PARTS; default: by stage
    bf16: bool = True
    activation_checkpointing: bool = False
    seed: int = 0
    loss_average: str = "token"  # token: every loss token weighs the same; sample: every sample does
    # evidence attention (timeviper.evidence): at these attention layers, weight * -log(the last instruction
    # token's attention on the frames that hold the answer) is added per sample to the summed loss, so the weight
    # is relative to a whole sample's loss under loss_average "sample", to one answer token's under "token"; 0: off
    evidence_layers: list[int] = field(default_factory=list)
    evidence_weight: float = 0.0

    def __post_init__(self):
        _require(self.stage in STAGE_TRAINABLE, "stage", f"must be 1 or 2, got {self.stage}")
        _require(self.loss_average in ("token", "sample"), "loss_average",
                 f"must be token or sample, got {self.loss_average!r}")
        if self.trainable is None:
            self.trainable = list(STAGE_TRAINABLE[self.stage])
        _require(
            bool(self.trainable)
            and set(self.trainable) <= set(PARTS)
            and len(set(self.trainable)) == len(self.trainable),
            "trainable",
            f"must be distinct names among {list(PARTS)}, got {self.trainable}",
        )
        for key in ("max_steps", "global_batch_tokens", "micro_batch_tokens"):
            _require(getattr(self, key) >= 1, key, "must be >= 1")
        _require(self.seed >= 0, "seed", "must be >= 0")
        _require(self.evidence_weight >= 0, "evidence_weight", f"must be >= 0, got {self.evidence_weight}")
        _require(not self.evidence_weight or self.evidence_layers, "evidence_layers",
                 "must name at least one attention layer when train.evidence_weight > 0")
        _require(
            self.global_batch_tokens % self.micro_batch_tokens == 0,
            "global_batch_tokens",
            f"{self.global_batch_tokens} is not a multiple of train.micro_batch_tokens {self.micro_batch_tokens}",
        )


@dataclass
class OptimConfig:
    lr: float = 1e-5
    transv_lr: float = 5e-5  # TransV modules (parameters named *.transv.*)
    # peak rates by parameter name: {"projector.time": 5e-3} trains the parameters under projector.time at 5e-3;
    # the longest matching prefix wins over lr and transv_lr; every prefix must name a trainable parameter
    lr_by_prefix: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 0.01  # not applied to biases, norms and scalar gates
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm
    scheduler: str = "cosine"  # "cosine" or "constant", after linear warmup
    warmup_ratio: float = 0.03  # share of max_steps
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio

    def __post_init__(self):
        for key in ("lr", "transv_lr", "eps", "grad_clip"):
            _require(getattr(self, key) > 0, key, "must be > 0")
        for prefix, lr in self.lr_by_prefix.items():
            _require(lr > 0, f"lr_by_prefix.{prefix}", "must be > 0")
        _require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _require(all(0 <= b < 1 for b in self.betas), "betas", "must lie in [0, 1)")
        _require(
            self.scheduler in ("cosine", "constant"), "scheduler", f"must be cosine or constant, got {self.scheduler!r}"
        )
        _require(0 <= self.warmup_ratio < 1, "warmup_ratio", "must lie in [0, 1)")
        _require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must lie in [0, 1]")


@dataclass
class SynthConfig:
    """A task of the synthetic world (timeviper.synth) rendered on the fly: one sample per seed."""

    task: str  # mcq, tvg or caption
    seeds: tuple[int, int]  # [start, stop), inside the train split
    frames: int | list[int]  # video length in seconds, or a [shortest, longest] range drawn per seed
    size: int = 64  # frame side in pixels
    kind: str | None = None  # mcq: ask this kind of question (e.g. needle) where the video has one
    questions: int = 1  # mcq, tvg: up to this many different questions on each video, as turns of one sample
    same_kind: bool = False  # mcq with kind: every question of a sample asks that kind, not only the first
    same_colour_haystack: bool = False  # mcq, kind needle: a needle video's other scenes all on backgrounds of the
    # needle's colour (timeviper.synth.same_colour_haystack), so that only its pattern tells the needle apart
    mcq_answer: str = "letter"  # mcq: answer "B", or "option": "blue circle (B)", the option named before its letter
    shot_frames: int | None = None  # caption, tvg: ask about one scene of each video, read from at most this many of
    # its frames as `caption --shots` and `ground --shots` read a shot, not the whole video (tvg: about an event of the
    # scene or, half the time, of another scene, answered "It does not happen in the video.")

    def __post_init__(self):
        _require(self.task in TASKS, "task", f"must be one of {', '.join(TASKS)}, got {self.task!r}")
        train, (start, stop) = split_range("train"), self.seeds
        _require(
            train.start <= start < stop <= train.stop,
            "seeds",
            f"[{start}, {stop}) must be a non-empty range inside the train split [{train.start}, {train.stop}); "
            "validation and test seeds are kept for evaluation",
        )
        lengths = [self.frames] * 2 if isinstance(self.frames, int) else self.frames
        _require(
            len(lengths) == 2 and 1 <= lengths[0] <= lengths[1],
            "frames",
            f"must be a length >= 1 or a [shortest, longest] range with 1 <= shortest <= longest, got {self.frames}",
        )
        _require(self.size >= MIN_SIZE, "size", f"must be >= {MIN_SIZE} pixels, got {self.size}")
        _require(
            self.kind is None or (self.task == "mcq" and self.kind in MCQ_KINDS),
            "kind",
            f"is for mcq only, one of {', '.join(MCQ_KINDS)}; got {self.kind!r} for {self.task}",
        )
        _require(not self.same_kind or self.kind is not None, "same_kind", "needs a kind to ask")
        _require(not self.same_colour_haystack or (self.kind == "needle" and (self.questions == 1 or self.same_kind)),
                 "same_colour_haystack", "is for needle questions only: set kind: needle, and same_kind with "
                 "questions > 1 (its other scenes' questions would no longer hold)")
        _require(
            isinstance(self.questions, int) and self.questions >= 1 and (self.questions == 1 or self.task != "caption"),
            "questions",
            f"must be an integer >= 1, and 1 for captions (a video has one caption); got {self.questions!r}",
        )
        _require(self.shot_frames is None or (self.task in ("caption", "tvg") and isinstance(self.shot_frames, int)
                                              and not isinstance(self.shot_frames, bool) and self.shot_frames >= 1),
                 "shot_frames", f"is for captions and grounding only, an integer >= 1; got {self.shot_frames!r} for "
                 f"{self.task}")
        _require(self.mcq_answer == "letter" or (self.task == "mcq" and self.mcq_answer == "option"), "mcq_answer",
                 f"must be 'letter' or 'option' ('option' for mcq only), got {self.mcq_answer!r} for {self.task}")


@dataclass
class DatasetConfig:
    """A record file (``path`` and ``root``) or a synthetic task (``synth``)."""

    path: str | None = None  # a .json list or .jsonl file of records
    root: str | None = None  # directory the records' video/image paths are relative to
    synth: SynthConfig | None = None
    weight: float = 1.0  # share ∝ weight × number of records (seeds for synth)
    name: str | None = None  # default: the file's stem, or synth_TASK[_KIND]

    def __post_init__(self):
        _require(
            (self.path is None) != (self.synth is None),
            "path",
            "set either path (with root: a record file) or synth (a synthetic task), not both or neither",
        )
        if self.synth is not None:
            _require(self.root is None, "root", "goes with path, not with synth")
        else:
            _require(self.root is not None, "root", "is required with path")
            self.path = _existing_path(self.path, "path", "record file")
            _require(Path(self.root).is_dir(), "root", f"directory {self.root} does not exist")
            self.root = str(Path(self.root).absolute())
        _require(self.weight > 0, "weight", "must be > 0")
        if self.name is None and self.synth is not None:
            shots = "shots" if self.synth.shot_frames is not None else None
            self.name = "_".join(filter(None, ("synth", self.synth.task, self.synth.kind, shots)))
        elif self.name is None:
            self.name = Path(self.path).stem


@dataclass
class DataConfig:
    datasets: list[DatasetConfig]
    max_frames: int = 256  # longer videos are sampled uniformly down to this
    fps: float = 1.0
    max_skip_fraction: float = 0.05  # stop when a dataset skips more than this share ...
    skip_check_min_samples: int = 1000  # ... once it has given this many samples (per rank)
    lookahead: int = 8  # samples buffered for first-fit packing
    pad_to_multiple_of: int = 1  # pad each packed row to a multiple of this many tokens
    num_workers: int = 4  # loader processes per rank
    # every rank reads the whole stream and keeps its share of the micro-batches: the same batches for any
    # number of ranks (to compare runs across world sizes), at world_size times the loading work
    same_batches_any_world_size: bool = False

    def __post_init__(self):
        _require(bool(self.datasets), "datasets", "needs at least one dataset")
        names = [d.name for d in self.datasets]
        _require(len(set(names)) == len(names), "datasets", f"names must be distinct, got {names}")
        for key in ("max_frames", "lookahead", "pad_to_multiple_of", "skip_check_min_samples"):
            _require(getattr(self, key) >= 1, key, "must be >= 1")
        _require(self.fps > 0, "fps", "must be > 0")
        _require(0 <= self.max_skip_fraction < 1, "max_skip_fraction", "must lie in [0, 1)")
        _require(self.num_workers >= 0, "num_workers", "must be >= 0")

    def most_frames(self) -> int:
        """The most frames one sample of these datasets can hold: max_frames, or fewer where every video of a
        synthetic task is shorter or is read as shots of at most shot_frames frames."""
        def most(d: DatasetConfig) -> int:
            if d.synth is None:
                return self.max_frames
            longest = d.synth.frames if isinstance(d.synth.frames, int) else d.synth.frames[1]
            return min(len(sample_times(longest, self.fps, self.max_frames, "uniform")),
                       d.synth.shot_frames or self.max_frames)

        return max(map(most, self.datasets))


@dataclass
class LoggingConfig:
    every: int = 10  # steps between metrics.jsonl records
    tensorboard: bool = False  # also write TensorBoard events to OUTPUT/tensorboard
    profile_steps: tuple[int, int] | None = None  # [first, last] steps to profile into OUTPUT/profile

    def __post_init__(self):
        _require(self.every >= 1, "every", "must be >= 1")
        if self.profile_steps is not None:
            first, last = self.profile_steps
            _require(2 <= first <= last, "profile_steps", f"must be [first, last] with 2 <= first <= last "
                     f"(step 1 warms up), got {list(self.profile_steps)}")


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps between checkpoints (one is also written when the run stops)
    keep_last: int = 2  # complete checkpoints kept; older ones are deleted

    def __post_init__(self):
        _require(self.every >= 1, "every", "must be >= 1")
        _require(self.keep_last >= 1, "keep_last", "must be >= 1")


@dataclass
class Config:
    model: ModelConfig
    train: TrainConfig
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self):
        _require(
            self.train.stage == 2 or self.model.transv is None,
            "model.transv",
            "stage 1 trains without token compression; set it to null",
        )
        _require(
            self.train.micro_batch_tokens % self.data.pad_to_multiple_of == 0,
            "data.pad_to_multiple_of",
            f"must divide train.micro_batch_tokens {self.train.micro_batch_tokens}",
        )

    def grad_accum(self, world_size: int) -> int:
        """Micro-batches per rank and step: global_batch_tokens / (micro_batch_tokens * world_size)."""
        per_step = self.train.micro_batch_tokens * world_size
        if self.train.global_batch_tokens % per_step:
            raise ConfigError(
                f"train.global_batch_tokens {self.train.global_batch_tokens} is not a multiple of "
                f"train.micro_batch_tokens × world size = {self.train.micro_batch_tokens} × {world_size}"
            )
        return self.train.global_batch_tokens // per_step

    def to_dict(self) -> dict:
        """Plain types only (tuples as lists), as YAML or JSON write them."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read and check a YAML training config, after `overrides` such as ``"train.max_steps=3000"``
    (each value is read as YAML: ``optim.betas=[0.9, 0.95]``, ``model.transv=null``)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    for override in overrides:
        _override(data, override)
    return config_from_dict(data, source=str(path))


def _override(tree: Any, assignment: str) -> None:
    key, sep, text = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override {assignment!r} is not KEY=VALUE with a dotted key, e.g. train.max_steps=100")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {assignment!r}: the value is not valid YAML: {e}") from None
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {}) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        raise ConfigError(f"override {assignment!r}: {'.'.join(parts[:-1])} is not a mapping in the config")
    node[parts[-1]] = value


def config_from_dict(data: Any, source: str = "<dict>") -> Config:
    try:
        return _build(Config, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    for key in data:
        _require(key in fields, f"{prefix}{key}", f"unknown key (known: {', '.join(fields)})")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        _require(name in data or not required, f"{prefix}{name}", "is required")
    kwargs = {key: _convert(value, hints[key], f"{prefix}{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(value, options[0], key)
        for option in options:  # plain types only: the first that fits
            try:
                return _convert(value, option, key)
            except ConfigError:
                pass
        kinds = " or ".join(_type_name(o) for o in options)
        raise ConfigError(f"{key}: expected {kinds}, got {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{key}.")
    if origin is list and isinstance(value, list):
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        return {_convert(k, args[0], key): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if origin is tuple and isinstance(value, list) and len(value) == len(args):
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool, dict) and type(value) is tp:
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


_TYPE_NAMES = {float: "number", int: "integer", str: "string", bool: "boolean"}  # anything else: a mapping


def _type_name(tp: Any) -> str:
    args = get_args(tp)
    if get_origin(tp) is list:
        return f"a list of {_TYPE_NAMES.get(args[0], 'mapping')}s"
    if get_origin(tp) is tuple:
        return f"a list of {len(args)} {_TYPE_NAMES[args[0]]}s"
    if get_origin(tp) is dict:
        return f"a mapping of {_TYPE_NAMES[args[0]]}s to {_TYPE_NAMES[args[1]]}s"
    name = _TYPE_NAMES.get(tp, "mapping")
    return f"an {name}" if name == "integer" else f"a {name}"
