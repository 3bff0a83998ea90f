"""TimeViper: SigLIP encoder -> ToMe projector -> hybrid LLM with TransV, in one checkpoint directory.

A directory holds config.json (`model_type: timeviper`, the LLM's HF config under `llm`, the SigLIP
vision config under `vision`), model.safetensors (parameters named as in this module) and the
tokenizer.json of the text tokenizer.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from timeviper import engine
from timeviper.errors import CheckpointError, ConfigError
from timeviper.evidence import EvidenceAttention, evidence_loss, evidence_tokens
from timeviper.llm import HybridLM
from timeviper.llm.cache import Cache
from timeviper.llm.config import LMConfig
from timeviper.llm.hf_io import config_from_hf, config_to_hf, load_weights, write_json, write_safetensors
from timeviper.llm.model import matmul_params
from timeviper.prompts import SYSTEM_PROMPT, TextTokenizer, encode_prompt
from timeviper.transv import Span, TransV, parse_transv, run_packed
from timeviper.vision.preprocess import preprocess_frames
from timeviper.vision.projector import Projector, TimeEmbedding, check_time_past_period, check_time_period

EMBEDDED = Path(__file__).parent / "assets" / "embedded"
VISION_CHUNK_ELEMENTS = 64 * 729 * 1152  # patch features through the vision encoder at once (64 so400m frames)


@dataclass
class TimeViperConfig:
    llm: LMConfig
    vision: dict  # transformers' SiglipVisionConfig fields
    tokens_per_frame: int = 16
    transv: str = "uni_7_0.5-attn_39_0.9"
    chat_template: str = "chatml"
    system_prompt: str = SYSTEM_PROMPT
    feature_layer: int = -1
    time_period: float | None = None  # frame-time embedding's longest period in seconds (None: off, as the paper)
    instruction_before_video: bool = False  # the instruction also before the video (see encode_conversation)
    trained_frames: int | None = None  # the most frames of one video any training run gave it (None: not recorded)
    video_window: int | None = None  # frames a vision token attends back to at inference (None: the whole video)
    time_past_period: str = "wrap"  # a frame past time_period told its time modulo the period ("wrap") or none
    extra: dict = field(default_factory=dict)  # free-form (e.g. the training recipe), kept on save

    def __post_init__(self):
        parse_transv(self.transv, self.llm)  # fail early, naming the bad part
        check_time_period(self.time_period)
        if not isinstance(self.instruction_before_video, bool):
            raise ConfigError(f"instruction_before_video must be true or false, got {self.instruction_before_video!r}")
        check_frames("trained_frames", self.trained_frames)
        check_frames("video_window", self.video_window)
        check_time_past_period(self.time_past_period)

    def to_dict(self) -> dict:
        # written only when set, so that configs of the paper's layout stay as they were
        timed = {} if self.time_period is None else {"time_period": self.time_period}
        asked_first = {"instruction_before_video": True} if self.instruction_before_video else {}
        trained = {} if self.trained_frames is None else {"trained_frames": self.trained_frames}
        windowed = {} if self.video_window is None else {"video_window": self.video_window}
        untimed = {} if self.time_past_period == "wrap" else {"time_past_period": self.time_past_period}
        return {"model_type": "timeviper", "llm": config_to_hf(self.llm, torch.float32), "vision": self.vision,
                "tokens_per_frame": self.tokens_per_frame, "transv": self.transv,
                "chat_template": self.chat_template, "system_prompt": self.system_prompt,
                "feature_layer": self.feature_layer, **timed, **asked_first, **trained, **windowed, **untimed,
                "extra": self.extra}

    @classmethod
    def from_dict(cls, raw: dict) -> "TimeViperConfig":
        if raw.get("model_type") != "timeviper":
            raise CheckpointError(f"config.json has model_type {raw.get('model_type')!r}, expected 'timeviper' "
                                  "(to start from a SigLIP and an LLM directory, use TimeViper.from_parts)")
        keys = ("tokens_per_frame", "transv", "chat_template", "system_prompt", "feature_layer", "time_period",
                "instruction_before_video", "trained_frames", "video_window", "time_past_period", "extra")
        try:
            return cls(llm=config_from_hf(raw["llm"]), vision=raw["vision"], **{k: raw[k] for k in keys if k in raw})
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"timeviper config.json is incomplete: {e}") from None

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> "TimeViperConfig":
        """The config.json of a TimeViper directory; with no path, the embedded model's."""
        path = Path(path) if path is not None else EMBEDDED
        config_file = path / "config.json"
        if not config_file.is_file():
            where = "the embedded model is not installed" if path == EMBEDDED else f"{str(path)!r} has no config.json"
            raise CheckpointError(f"cannot load TimeViper: {where}")
        try:
            return cls.from_dict(json.loads(config_file.read_text()))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{config_file} is not valid JSON: {e}") from None


class TimeViper(nn.Module):
    def __init__(self, config: TimeViperConfig, tokenizer: TextTokenizer | None = None):
        super().__init__()
        from transformers import SiglipVisionConfig

        from timeviper.vision.siglip import VisionEncoder

        self.config, self.tokenizer = config, tokenizer
        self.vision = VisionEncoder(SiglipVisionConfig(**config.vision), config.feature_layer)
        self.projector = Projector(self.vision.config.hidden_size, config.llm.hidden_size, config.tokens_per_frame,
                                   config.time_period)
        self.llm = HybridLM(config.llm)
        self.transv = nn.ModuleDict({str(s.layer): TransV(config.llm, s) for s in parse_transv(config.transv)})
        self.train_shares: tuple[float, float] | None = None  # training: uniform TransV's p drawn per sample
        self.evidence_attention: EvidenceAttention | None = None  # training: see timeviper.evidence
        self.extra_losses: dict[str, Tensor] = {}  # training: the last forward_train's added terms (summed, detached)

    @property
    def device(self) -> torch.device:
        return self.llm.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.embed_tokens.weight.dtype

    @property
    def transv_layers(self) -> dict[int, TransV]:
        return {int(k): m for k, m in self.transv.items()}

    def set_transv(self, spec: str) -> None:
        """Switch TransV at inference (e.g. 'none' or 'uni_7_0.5'); trained modules keep their weights."""
        specs = parse_transv(spec, self.config.llm)
        for s in specs:
            key = str(s.layer)
            if key not in self.transv or self.transv[key].spec.kind != s.kind:
                self.transv[key] = TransV(self.config.llm, s).to(self.device, self.dtype)
            else:
                self.transv[key].spec = s
        for key in [k for k in self.transv if int(k) not in {s.layer for s in specs}]:
            del self.transv[key]
        self.config.transv = spec

    def set_logn_attention(self, length: int | None) -> None:
        """Scale the LLM's and TransV's attention past `length` tokens (None: off), so that videos far longer
        than those of training are read as sharply (see llm.attention.logn_scale). The embedded model ships
        with 1,024, which its model card justifies."""
        self.llm.set_logn_attention(length)
        for module in self.transv.values():
            module.logn_length = length

    def set_video_window(self, frames: int | None) -> None:
        """Let each vision token attend to the prompt before the video and to the last `frames` frames only (None:
        the whole video before it), so that past the training length the video is read as training read it,
        while the instruction still reads it whole (see llm.attention.VideoQueries). Set to the training length,
        videos within it are read exactly as without; past it, the LLM's prefill costs O(frames) a token."""
        check_frames("video_window", frames)
        self.config.video_window = frames

    def set_time_past_period(self, mode: str) -> None:
        """What a frame at or past the time embedding's longest period (256 s for the embedded model) is told of its
        time: "wrap" its time modulo the period, as in training; "none" nothing, so that in a video many periods
        long the frames of one time of the period do not all read alike. Videos within the period read the same
        either way."""
        check_time_past_period(mode)
        self.config.time_past_period = mode

    def set_time_period(self, period: float | None) -> None:
        """Give the projector a frame-time embedding of longest period `period` seconds (None: take it away).
        A new one starts at zero, so the model reads as before until trained; one of that period is kept."""
        check_time_period(period)
        if period is None:
            self.projector.time = None
        elif self.projector.time is None or self.projector.time.period != period:
            weight = self.projector.mlp[0].weight
            self.projector.time = TimeEmbedding(period, self.config.llm.hidden_size).to(weight.device, weight.dtype)
        self.config.time_period = period

    # --- vision ----------------------------------------------------------------------------------------
    def embed_frames(self, videos: Tensor | Sequence[Tensor], times: Tensor | Sequence[Tensor] | None = None) -> Tensor:
        """uint8 frames [F, H, W, 3], or several videos of such frames (of any sizes), with the times they were
        shown (seconds [F] each; needed when the model embeds time) -> vision tokens [(sum of F) * tokens_per_frame,
        C], in order."""
        videos = [videos] if isinstance(videos, Tensor) else list(videos)
        if times is not None:
            times = [times] if isinstance(times, Tensor) else list(times)
            if [len(t) for t in times] != [len(v) for v in videos]:
                raise ConfigError(f"frame times of lengths {[len(t) for t in times]} for videos of "
                                  f"{[len(v) for v in videos]} frames")
            times = torch.cat(times)
        elif self.projector.time is not None:
            raise ConfigError("this model embeds frame times (time_period is set): pass the frames' times")
        return self.add_frame_times(self.frame_tokens(videos), times).flatten(0, 1)

    def frame_tokens(self, videos: Tensor | Sequence[Tensor]) -> Tensor:
        """What frames show, without when: uint8 frames [F, H, W, 3] (or several videos of them) -> vision tokens
        [sum of F, tokens_per_frame, C]; add_frame_times adds the time term of a model that embeds time.

        The encoder and projector take frames of VISION_CHUNK_ELEMENTS patch features at a time (64 so400m
        frames, thousands of small ones), cut across videos, so that many short videos cost few large steps.
        """
        videos = [videos] if isinstance(videos, Tensor) else list(videos)
        per_frame = self.vision.num_patches * self.vision.config.hidden_size
        step = max(1, VISION_CHUNK_ELEMENTS // per_frame)  # frames per chunk
        starts = [0, *itertools.accumulate(len(v) for v in videos)]
        tokens = []
        for a in range(0, starts[-1], step):  # frames [a, a + step) of all videos in a row
            parts = [v[max(a - s, 0):a + step - s] for v, s, e in zip(videos, starts, starts[1:])
                     if s < a + step and e > a]
            pixels = torch.cat([  # one preprocessing call per run of videos of one frame size
                preprocess_frames(torch.cat(list(run)), size=self.vision.config.image_size, dtype=self.dtype,
                                  device=self.device)
                for _, run in itertools.groupby(parts, key=lambda part: part.shape[1:])])
            tokens.append(self.projector(self.vision.encode(pixels, step)))
        return torch.cat(tokens)

    def add_frame_times(self, tokens: Tensor, times: Tensor | None) -> Tensor:
        """Vision tokens [F, n, C] of frame_tokens and the times their frames were shown (seconds [F]) -> the
        tokens the model reads: with the projector's time term added, if it has one (else as they are)."""
        return self.projector.add_times(tokens, None if times is None else times.to(self.device),
                                        self.config.time_past_period)

    def _vision_stream(self, chunks: Iterable, on_frames: Callable[[int], None] | None) -> Iterator[Tensor]:
        """Vision tokens [1, n, C] of each chunk: a timeviper.sampling.Video (frames and their timestamps) or a
        uint8 frames tensor, whose frames are taken as shown once a second, counting from the first chunk's."""
        seen = 0
        for chunk in chunks:
            frames = getattr(chunk, "frames", chunk)
            times = getattr(chunk, "timestamps", None)
            yield self.embed_frames(frames, seen + torch.arange(len(frames)) if times is None else times)[None]
            seen += len(frames)
            if on_frames is not None:
                on_frames(len(frames))

    # --- training ----------------------------------------------------------------------------------------
    def forward_train(self, batch: dict, average: str = "token") -> tuple[Tensor, Tensor]:
        """A packed micro-batch (see timeviper.data.packing) -> (summed loss, what it is to be divided by).

        `average` "token": every loss token weighs 1, divided by their number. "sample": the loss tokens
        of a sample share a weight of 1, divided by the number of samples, so a one-letter answer
        counts as much as a long caption.
        """
        ids = batch["input_ids"].to(self.device)
        h = self.llm.embed_tokens(ids)  # [1, T, C]
        videos = [(start, end, frames, times) for (start, end), frames, times
                  in zip(batch["vision_spans"].tolist(), batch["frames"], batch["frame_times"])
                  if frames is not None and end > start]
        if videos:  # every sample's frames through the encoder together
            rows = torch.cat([torch.arange(start, end) for start, end, *_ in videos]).to(self.device)
            vision = self.embed_frames([v[2] for v in videos], [v[3] for v in videos])
            h = h.index_put((torch.zeros_like(rows), rows), vision.to(h.dtype))
        positions = batch["position_ids"].to(self.device) if self.config.llm.needs_positions else None
        spans = spans_of(batch)
        evidence_losses, watch = self._evidence_watch(batch, ids.shape[1])
        out, index = run_packed(self.llm, self.transv_layers, h, positions, spans, self.drawn_shares(len(spans)),
                                watch)
        labels = batch["labels"].to(self.device)[0, index]
        learn = labels != -100
        _, logits = self.llm.head(out[:, learn])
        loss = F.cross_entropy(logits[0], labels[learn], reduction="none")  # [n] per loss token
        added = self.evidence_attention.weight * sum(evidence_losses) if evidence_losses else loss.new_zeros(())
        self.extra_losses = {"evidence_loss": added.detach()} if self.evidence_attention else {}
        if average == "token":
            return loss.sum() + added, learn.sum()
        bounds = batch["cu_seqlens"].to(self.device)
        sample = torch.searchsorted(bounds, index[learn], right=True) - 1  # [n] the sample of each loss token
        tokens = torch.zeros(len(bounds) - 1, device=self.device).index_add_(0, sample, torch.ones_like(loss))
        return (loss / tokens[sample]).sum() + added, (tokens > 0).sum()

    def _evidence_watch(self, batch: dict, length: int) -> tuple[list[Tensor], dict]:
        """The list evidence attention's losses will be appended to, and the layers run_packed must show it."""
        losses: list[Tensor] = []
        flags = None if self.evidence_attention is None else evidence_tokens(
            batch, self.config.tokens_per_frame, length, self.device)  # bool [T]
        if flags is None:
            return losses, {}

        def watch(layer, h, positions, spans, index):
            losses.append(evidence_loss(self.llm.layers[layer], h, positions, spans, flags[index]))

        return losses, {layer: functools.partial(watch, layer) for layer in self.evidence_attention.layers}

    def drawn_shares(self, samples: int) -> dict[int, list[float]] | None:
        """Each sample's drop share at every uniform TransV layer, drawn uniformly from `train_shares` (set by
        training's model.transv_train_shares; None: the specs' p). A model trained at one share learns to tell
        time from the vision tokens' count, and then reads video well only at that share."""
        if self.train_shares is None:
            return None
        lo, hi = self.train_shares
        return {layer: (lo + (hi - lo) * torch.rand(samples)).tolist() for layer, m in self.transv_layers.items()
                if m.spec.strategy == "uniform"}

    def flops_per_token(self, seq_len: int = 8192, frames: int = 0, loss_tokens: int | None = None) -> float:
        """Model FLOPs of one training step (forward and backward) per token of a sample of `seq_len` tokens,
        `frames * tokens_per_frame` of them vision tokens and `loss_tokens` (default: all) through the LM head.

        Without arguments (the trainer's MFU): a text-only sample of 8,192 tokens, the usual 6 N + attention
        estimate. For video pass the sample's shape: at Nano-9B + so400m the frozen SigLIP adds ~40 GFLOP
        per vision token, and TransV takes most vision tokens out of the later layers.

        A multiply-add is 2 FLOPs. A weight costs 2 FLOPs per token forward, 2 more for its input's gradient
        when backpropagation passes it, 2 more for its own gradient when it trains (6 in a trained LLM, 2 in
        the frozen SigLIP). Counted:
        - the LLM layers' matrices and convolution taps over the tokens reaching each layer: a TransV layer
          of share p takes floor(p v) of the v vision tokens there out of it and every later layer;
        - causal attention, 4 H D per query-key pair forward, n^2 / 2 pairs for the n tokens of a sample
          at that layer (packed samples do not see each other), x3 in training;
        - the SSD recurrence, 5 P N per Mamba head and token forward (decay, rank-1 update, read-out), x3;
          the chunked kernels' extra work is hardware, not model, FLOPs;
        - the LM head over the loss tokens; the projector over the vision tokens;
        - SigLIP per frame: patch embedding and layer matrices over every patch, 4 P^2 C attention per layer.
        Left out (~0.2% together at Nano-9B + so400m): norms, activations, biases, softmax, cross-entropy,
        embedding lookups, ToMe's matching, TransV's cross-attention and token selection; and activation
        checkpointing's recomputation, which is hardware work, not model FLOPs.
        """
        def trains(module: nn.Module) -> bool:
            return any(p.requires_grad for p in module.parameters())

        def per_weight(weights: bool, inputs: bool) -> int:  # FLOPs per multiply-add weight and token
            return 2 + 2 * weights + 2 * inputs

        cfg, vision, backprop, siglip = self.config.llm, self.vision, trains(self), trains(self.vision)
        llm = per_weight(trains(self.llm), backprop)
        both = per_weight(backprop, backprop) / 2  # training / forward FLOPs of a product of two activations
        drops = {layer: m.spec.p for layer, m in self.transv_layers.items()}
        n, v = seq_len, frames * self.config.tokens_per_frame
        flops = llm * self.llm.lm_head.weight.numel() * (seq_len if loss_tokens is None else loss_tokens)
        for i, block in enumerate(self.llm.layers):
            dropped = math.floor(v * drops.get(i, 0.0))
            n, v = n - dropped, v - dropped
            flops += llm * matmul_params(block) * n
            if block.kind == "attention":
                flops += both * 2 * cfg.num_heads * cfg.head_dim * n * n
            elif block.kind == "mamba":
                flops += both * 5 * cfg.mamba_inner * cfg.ssm_state_size * n
        trained = trains(self.projector)  # its first layer's input comes from SigLIP
        flops += frames * self.config.tokens_per_frame * (
            per_weight(trained, siglip) * matmul_params(self.projector.mlp[0])
            + per_weight(trained, trained or siglip) * matmul_params(self.projector.mlp[2]))
        layers, patches = vision.model.encoder.layers[:vision.depth], vision.num_patches
        vit = per_weight(siglip, siglip)
        flops += frames * patches * (
            per_weight(siglip, False) * matmul_params(vision.model.embeddings.patch_embedding)  # pixels: no gradient
            + vit * sum(map(matmul_params, layers)) + vit / 2 * len(layers) * 4 * patches * vision.config.hidden_size)
        return flops / seq_len

    # --- inference ---------------------------------------------------------------------------------------
    def _require_tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer: load one with TimeViper.from_pretrained or from_parts")
        return self.tokenizer

    @torch.inference_mode()
    def prefill(self, frame_chunks: Iterable, instruction: str, progress=None):
        """Prefill one request, its frames in chunks (see _vision_stream): returns (cache, logits of the next
        token [1, V])."""
        return self.prefill_tokens(self._vision_stream(frame_chunks, progress), instruction)

    @torch.inference_mode()
    def prefill_tokens(self, vision: Iterable[Tensor], instruction: str):
        """Prefill from vision tokens already made (chunks [1, n, C] of embed_frames' or add_frame_times' output,
        in order): returns (cache, logits of the next token [1, V])."""
        tok = self._require_tokenizer()
        enc = encode_prompt(tok, instruction, self.config.system_prompt, self.config.instruction_before_video)
        ids = torch.tensor(enc.ids, device=self.device)[None]
        embed = self.llm.embed_tokens(ids)
        cache = self.llm.new_cache(1)
        window = self.config.video_window
        logits = engine.prefill(self.llm, self.transv_layers, embed[:, :enc.vision_at], vision,
                                embed[:, enc.vision_at:], cache,
                                window=None if window is None else window * self.config.tokens_per_frame)
        return cache, logits

    @torch.inference_mode()
    def generate(self, requests: list[tuple[Iterable, str]], max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 stop: list[str] | tuple[str, ...] = (), progress=None) -> list[str]:
        """Answer a batch of (frame chunks, instruction) requests; videos may differ in length.

        Each request is prefilled on its own (long videos stream chunk by chunk), then all are decoded
        together (see decode).
        """
        prefilled = [self.prefill(frames, instruction, progress) for frames, instruction in requests]
        return self.decode(prefilled, max_new_tokens, temperature, top_p, seed, stop)

    @torch.inference_mode()
    def decode(self, prefilled: list[tuple[Cache, Tensor]], max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0, seed: int | None = None, stop: list[str] | tuple[str, ...] = ()) -> list[str]:
        """The answers to prefilled requests ((cache, logits) of prefill or prefill_tokens), decoded together
        from one padded cache (a lone request decodes in its own, which it uses up); a request listed n times is
        answered n times (n samples at temperature > 0).

        Generation ends at the template's end-of-turn token, at `max_new_tokens`, or at any string of `stop`
        (cut from the answer).
        """
        tok = self._require_tokenizer()
        caches, firsts = zip(*prefilled)
        cache = caches[0] if len(caches) == 1 else Cache.stack(list(caches), extra=max_new_tokens)
        generator = None if seed is None else torch.Generator(self.device).manual_seed(seed)
        stop_ids = {tok.stop_id} if tok.stop_id is not None else set()
        stop_when = (lambda ids: any(s in tok.decode(ids[-32:]) for s in stop)) if stop else None
        outs = engine.decode(self.llm, cache, torch.cat(firsts), max_new_tokens, stop_ids, temperature, top_p,
                             generator, stop_when)
        return [cut_at_stop(tok.decode(o), stop).strip() for o in outs]

    def chat(self, video, prompt: str, fps: float = 1.0, max_frames: int | None = None, sampling: str = "uniform",
             chunk_frames: int = 256, progress=None, **generation) -> str:
        """Answer `prompt` about `video`: a path (decoded at `fps`, streamed), a decoded timeviper.sampling.Video, or
        uint8 frames [T, H, W, 3] (taken as sampled at `fps`)."""
        return self.generate([(frame_chunks(video, fps, max_frames, sampling, chunk_frames), prompt)],
                             progress=progress, **generation)[0]

    # --- checkpoints ---------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, max_shard_bytes: int = 5 * 2**30, dtype: torch.dtype | None = None) -> None:
        """Write config.json, the weights (as `dtype`, default: as they are) and the tokenizer to `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        weights = self.state_dict()
        if dtype is not None:
            weights = {k: t.to(dtype) if t.is_floating_point() else t for k, t in weights.items()}
        write_safetensors(weights, path, max_shard_bytes)
        if self.tokenizer is not None:
            self.tokenizer.save(path)
        write_json(path / "config.json", self.config.to_dict())

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, dtype: torch.dtype | None = None,
                        device=None) -> "TimeViper":
        """Load a TimeViper directory; with no path, the embedded model shipped in the package."""
        from timeviper.llm.hf_io import weight_files

        path = Path(path) if path is not None else EMBEDDED
        config = TimeViperConfig.from_pretrained(path)
        tokenizer = TextTokenizer.from_dir(path, config.chat_template)
        with torch.device("meta"):
            model = cls(config, tokenizer).to(dtype or torch.float32)
        model.to_empty(device=device or "cpu")
        load_weights(model, weight_files(path), lambda k: k, device)
        embeddings = model.vision.model.embeddings  # its position_ids buffer is not saved in checkpoints
        embeddings.position_ids = torch.arange(embeddings.num_positions, device=device or "cpu")[None]
        return model.eval()

    @classmethod
    def from_parts(cls, vision_dir: str | Path, llm_dir: str | Path, transv: str = "uni_7_0.5-attn_39_0.9",
                   tokens_per_frame: int = 16, chat_template: str = "chatml", dtype: torch.dtype | None = None,
                   device=None, feature_layer: int = -1, time_period: float | None = None) -> "TimeViper":
        """A fresh TimeViper (new projector and TransV) from a SigLIP directory and an LLM directory;
        `time_period`: give the projector a frame-time embedding (off in the paper's model)."""
        from timeviper.vision.siglip import VisionEncoder

        vision = VisionEncoder.from_pretrained(vision_dir, dtype=dtype, device=device, feature_layer=feature_layer)
        llm = HybridLM.from_pretrained(llm_dir, dtype=dtype, device=device)
        tokenizer = TextTokenizer.from_dir(llm_dir, chat_template)
        config = TimeViperConfig(llm.config, vision.config.to_dict(), tokens_per_frame, transv, chat_template,
                                 feature_layer=feature_layer, time_period=time_period)
        with torch.device("meta"):
            model = cls(config, tokenizer)
        model.vision, model.llm = vision, llm
        model.projector = Projector(vision.config.hidden_size, llm.config.hidden_size, tokens_per_frame, time_period)
        model.transv = nn.ModuleDict({str(s.layer): TransV(llm.config, s) for s in parse_transv(transv)})
        return model.to(device=llm.embed_tokens.weight.device, dtype=llm.embed_tokens.weight.dtype)


def check_frames(name: str, value) -> None:
    """A setting counted in frames: an integer >= 1, or None."""
    if value is not None and (type(value) is not int or value < 1):
        raise ConfigError(f"{name} must be a number of frames >= 1 or null, got {value!r}")


def cut_at_stop(text: str, stop) -> str:
    """`text` up to the first occurrence of any stop string."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[:min(cuts)] if cuts else text


def spans_of(batch: dict) -> list[Span]:
    """The Span of every segment of a packed batch (padding: a segment with no vision or instruction)."""
    bounds = batch["cu_seqlens"].tolist()
    spans = []
    for i, (start, end) in enumerate(zip(bounds, bounds[1:])):
        if i < len(batch["vision_spans"]):
            v0, v1 = batch["vision_spans"][i].tolist()
            spans.append(Span(start, v0, v1, int(batch["instruction_ends"][i]), end))
        else:
            spans.append(Span(start, start, start, start, end))
    return spans


def frame_chunks(video, fps: float = 1.0, max_frames: int | None = None, sampling: str = "uniform",
                 chunk_frames: int = 256) -> Iterator:
    """timeviper.sampling.Video chunks (uint8 frames [n, H, W, 3] and their timestamps) of a video path, decoded
    lazily; of a decoded Video; or of a frames tensor, whose frames are taken as sampled at `fps` from 0 s.
    A Video or tensor of more than `max_frames` frames is thinned as a file would be (`sampling`)."""
    from timeviper.sampling import Video, check_chunk_frames, check_sampling, kept_samples

    if not isinstance(video, (Tensor, Video)):
        from timeviper.video import iter_video  # only files need decoding (and PyAV)

        return iter_video(video, fps, chunk_frames, max_frames, sampling)
    check_sampling(fps, max_frames, sampling)
    check_chunk_frames(chunk_frames)
    frames = video.frames if isinstance(video, Video) else video
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ConfigError(f"frames must be a uint8 tensor [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if isinstance(video, Tensor):
        video = Video(frames, torch.arange(len(frames), dtype=torch.float64) / fps, len(frames) / fps, "")
    times = torch.as_tensor(video.timestamps)
    if times.shape != frames.shape[:1]:
        raise ConfigError(f"a video of {len(frames)} frames needs as many timestamps, got {tuple(times.shape)}")
    kept = torch.from_numpy(kept_samples(len(frames), max_frames, sampling)).long()
    if len(kept) < len(frames):  # indexing copies: only when thinning
        frames, times = frames[kept], times[kept]
    return (Video(f, t, video.duration, video.path)
            for f, t in zip(frames.split(chunk_frames), times.split(chunk_frames)))
