"""Pretraining a small vision front on synthetic frames: the embedded model's first stage.

A randomly initialised ViT cannot tell a star from a cross, and learning that through the language
model's loss alone is slow: a linear probe on the vision tokens of a VLM trained for 900 steps from
scratch read the shape of the object on screen at chance. Here the encoder and projector learn what the
world holds, frame by frame, from labels its VideoSpec gives for free: the background (16 classes), the
object on screen (48 classes, or none) and the object's centre. Linear heads read the frame's vision
tokens (ToMe-merged and projected, what the LLM sees), pooled by mean and max, so the tokens must carry
it. The heads are dropped afterwards; the model is saved whole, ready for the VLM stages.

Pooled heads let a few tokens carry a label; a needle is found among a million tokens by each of its own. So
`--token-loss` adds a head that reads the background from every token alone, `--needle-share` draws that share
of the videos' frames from their needle scene (1-2% of frames otherwise), and `--anchor w` holds the tokens of
every frame off a needle background near the starting model's (mean squared change over their mean squared
norm, weighted by w), so that a language model trained on them still reads them.

    python -m timeviper.synth.pretrain_vision --config configs/embedded.yaml --out runs/vision   # from scratch
    python -m timeviper.synth.pretrain_vision --model src/timeviper/assets/embedded --out runs/vision  # or from a model
    python -m timeviper.synth.pretrain_vision --model src/timeviper/assets/embedded --out runs/vision-needles \
        --token-loss --needle-share 0.25 --anchor 10 --steps 2000 --workers 12        # needle frames set apart
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from timeviper.errors import ConfigError, TimeViperError
from timeviper.synth.render import render_frames
from timeviper.synth.world import (BACKGROUNDS, COLORS, NEEDLE_BACKGROUNDS, NEEDLE_MIN_FRAMES, OBJECTS, SHAPES,
                                   VideoSpec, make_video, split_range)
from timeviper.train.schedule import Schedule
from timeviper.vision.preprocess import preprocess_frames

ALL_BACKGROUNDS = BACKGROUNDS + NEEDLE_BACKGROUNDS
IS_NEEDLE_BACKGROUND = torch.tensor([b in NEEDLE_BACKGROUNDS for b in ALL_BACKGROUNDS])  # background class -> bool
NO_OBJECT = len(OBJECTS)  # the object class of a frame with nothing on screen
FRAMES_PER_VIDEO = 16  # frames drawn from each video of a batch
VIDEO_FRAMES = (16, 256)  # the lengths videos are drawn from, as in the VLM's training data
COLOR_OF = torch.tensor([COLORS.index(o.split()[0]) for o in OBJECTS] + [-1])  # object class -> colour
SHAPE_OF = torch.tensor([SHAPES.index(o.split()[1]) for o in OBJECTS] + [-1])  # object class -> shape


def frame_labels(spec: VideoSpec, t: int) -> tuple[int, int, float, float]:
    """(background class, object class or NO_OBJECT, centre x, centre y) of frame t (centre 0.5 if none)."""
    scene = next(s for s in spec.scenes if s.start <= t < s.end)
    actor = next((a for a in scene.actors if a.start <= t < a.end), None)  # actors never overlap in time
    if actor is None:
        return ALL_BACKGROUNDS.index(scene.background), NO_OBJECT, 0.5, 0.5
    return (ALL_BACKGROUNDS.index(scene.background), OBJECTS.index(actor.obj), *actor.center(t))


def random_video(rng: np.random.Generator, seeds: range, size: int, shortest: int = VIDEO_FRAMES[0]) -> VideoSpec:
    """A video of a random seed of `seeds` and a random length from `shortest` to VIDEO_FRAMES[1] frames."""
    seed, frames = int(rng.integers(seeds.start, seeds.stop)), int(rng.integers(shortest, VIDEO_FRAMES[1] + 1))
    return make_video(seed, frames, size)


def needle_video(rng: np.random.Generator, seeds: range, size: int) -> VideoSpec:
    """A random video of `seeds` that holds a needle scene (half of those long enough do)."""
    while (spec := random_video(rng, seeds, size, max(VIDEO_FRAMES[0], NEEDLE_MIN_FRAMES))).needle is None:
        pass
    return spec


def frame_batch(rng: np.random.Generator, seeds: range, frames: int, size: int,
                needle_share: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """`frames` labelled frames from random videos of `seeds`, each video's frames drawn from its needle scene with
    probability `needle_share`: (uint8 [frames, size, size, 3], classes int64 [frames, 2] (background, object),
    centres float32 [frames, 2])."""
    images, classes, centres = [], [], []
    for _ in range(math.ceil(frames / FRAMES_PER_VIDEO)):
        if needle_share and rng.random() < needle_share:
            spec = needle_video(rng, seeds, size)
            times = rng.integers(spec.needle.start, spec.needle.end, FRAMES_PER_VIDEO)
        else:
            spec = random_video(rng, seeds, size)
            times = rng.integers(0, spec.frames, FRAMES_PER_VIDEO)
        for t in times.tolist():
            images.append(render_frames(spec, t, t + 1)[0])
            bg, obj, x, y = frame_labels(spec, t)
            classes.append((bg, obj))
            centres.append((x, y))
    return (torch.from_numpy(np.stack(images[:frames])), torch.tensor(classes[:frames]),
            torch.tensor(centres[:frames], dtype=torch.float32))


class FrameHeads(nn.Module):
    """Vision tokens [F, N, D] -> (background logits [F, 16], object logits [F, 49], centre [F, 2],
    background logits of each token alone [F, N, 16] or None)."""

    def __init__(self, dim: int, token_loss: bool = False):
        super().__init__()
        self.background = nn.Linear(2 * dim, len(ALL_BACKGROUNDS))
        self.object = nn.Linear(2 * dim, NO_OBJECT + 1)
        self.centre = nn.Linear(2 * dim, 2)
        self.token_background = nn.Linear(dim, len(ALL_BACKGROUNDS)) if token_loss else None

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        pooled = torch.cat([tokens.mean(1), tokens.amax(1)], -1).float()  # [F, 2D]
        each = self.token_background(tokens.float()) if self.token_background is not None else None
        return self.background(pooled), self.object(pooled), self.centre(pooled), each


def vision_tokens(model, frames: Tensor) -> Tensor:
    """uint8 [F, H, W, 3] -> the vision tokens the LLM would get, [F, tokens_per_frame, D], with gradients.
    `model`: anything with the `vision` and `projector` of a TimeViper."""
    weight = next(model.vision.parameters())
    pixels = preprocess_frames(frames, size=model.vision.config.image_size, dtype=weight.dtype, device=weight.device)
    return model.projector(model.vision(pixels))


def losses(heads: FrameHeads, tokens: Tensor, classes: Tensor, centres: Tensor) -> dict[str, Tensor]:
    background, obj, centre, each = heads(tokens)
    shown = classes[:, 1] != NO_OBJECT
    parts = {
        "background": F.cross_entropy(background, classes[:, 0]),
        "object": F.cross_entropy(obj, classes[:, 1]),
        # centres in [0, 1]; x10 puts a 0.1 error at the weight of a class loss of ~0.1
        "centre": 10 * F.mse_loss(centre[shown], centres[shown]) if shown.any() else centre.sum() * 0,
    }
    if each is not None:
        parts["token_background"] = F.cross_entropy(each.flatten(0, 1), classes[:, 0].repeat_interleave(each.shape[1]))
    return parts


def anchor_loss(tokens: Tensor, reference: Tensor, classes: Tensor) -> Tensor:
    """Mean squared change of the tokens [F, N, D] of frames off a needle background from `reference`'s, over the
    reference tokens' mean squared norm (0 if every frame is on a needle background)."""
    kept = ~IS_NEEDLE_BACKGROUND.to(classes.device)[classes[:, 0]]
    if not kept.any():
        return tokens.sum() * 0
    held = reference[kept].float()
    return (tokens[kept].float() - held).square().sum(-1).mean() / held.square().sum(-1).mean()


@torch.no_grad()
def evaluate(model, heads: FrameHeads, frames: Tensor, classes: Tensor, centres: Tensor) -> dict[str, float]:
    """Accuracy of background, object, colour and shape, and the mean centre error, on held-out frames."""
    was_training = model.training
    model.eval()
    outputs = [heads(vision_tokens(model, chunk))[:3] for chunk in frames.split(512)]
    model.train(was_training)
    background, obj, centre = (torch.cat(parts).cpu() for parts in zip(*outputs))
    obj_hat, obj_true, shown = obj.argmax(-1), classes[:, 1], classes[:, 1] != NO_OBJECT
    right_background, needle = background.argmax(-1) == classes[:, 0], IS_NEEDLE_BACKGROUND[classes[:, 0]]
    return {
        "background_acc": right_background.float().mean().item(),
        "needle_background_acc": right_background[needle].float().mean().item() if needle.any() else float("nan"),
        "object_acc": (obj_hat == obj_true).float().mean().item(),
        "color_acc": (COLOR_OF[obj_hat[shown]] == COLOR_OF[obj_true[shown]]).float().mean().item(),
        "shape_acc": (SHAPE_OF[obj_hat[shown]] == SHAPE_OF[obj_true[shown]]).float().mean().item(),
        "centre_error": (centre[shown] - centres[shown]).norm(dim=-1).mean().item(),
    }


class FrameStream(torch.utils.data.IterableDataset):
    """Endless labelled batches from train-split videos; each loader process draws from its own stream."""

    def __init__(self, batch: int, size: int, seed: int, needle_share: float = 0.0):
        self.batch, self.size, self.seed, self.needle_share = batch, size, seed, needle_share

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, 0 if info is None else info.id])
        while True:
            yield frame_batch(rng, split_range("train"), self.batch, self.size, self.needle_share)


def pretrain(model, steps: int, batch: int = 512, lr: float = 1e-3, warmup_ratio: float = 0.03, workers: int = 0,
             seed: int = 0, eval_frames: int = 2048, eval_every: int = 500, token_loss: bool = False,
             needle_share: float = 0.0, anchor: float = 0.0) -> list[dict]:
    """Train model.vision and model.projector on labelled frames for `steps` steps (AdamW, warmup + cosine);
    returns the evaluations on validation-split frames (drawn as the training frames are), made every
    `eval_every` steps and at the end. `token_loss`, `needle_share` and `anchor`: see the module's docstring."""
    from tqdm import tqdm

    size, device = model.vision.config.image_size, model.device
    held_out = frame_batch(np.random.default_rng(seed), split_range("validation"), eval_frames, size, needle_share)
    front = nn.ModuleDict({"vision": model.vision, "projector": model.projector})
    reference = copy.deepcopy(front).requires_grad_(False).eval() if anchor else None  # the starting vision front
    model.vision.trainable = True
    model.vision.requires_grad_(True)
    model.projector.requires_grad_(True)
    model.train()
    heads = FrameHeads(model.projector.mlp[-1].out_features, token_loss).to(device)
    params = [*model.vision.parameters(), *model.projector.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = Schedule(steps, math.ceil(warmup_ratio * steps), "cosine", 0.1)
    loader = torch.utils.data.DataLoader(FrameStream(batch, size, seed, needle_share), batch_size=None,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
    history, started = [], time.perf_counter()
    bar = tqdm(total=steps, desc="vision pretraining", unit="step")
    for step, (frames, classes, centres) in zip(range(steps), loader):
        for group in optimizer.param_groups:
            group["lr"] = lr * schedule(step)
        classes = classes.to(device)
        with autocast:
            tokens = vision_tokens(model, frames)
            parts = losses(heads, tokens, classes, centres.to(device))
            if reference is not None:
                with torch.no_grad():
                    held = vision_tokens(reference, frames)
                parts["anchor"] = anchor * anchor_loss(tokens, held, classes)
        loss = sum(parts.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        bar.update()
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in parts.items()}, refresh=False)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            with autocast:
                scores = evaluate(model, heads, *held_out)
            history.append({"step": step + 1, "seconds": round(time.perf_counter() - started, 1),
                            "frames": (step + 1) * batch, **{k: round(v, 4) for k, v in scores.items()}})
            bar.write(json.dumps(history[-1]))
    bar.close()
    model.eval()
    return history


def main(argv: list[str] | None = None) -> int:
    from timeviper.model import TimeViper
    from timeviper.train.build import build_model
    from timeviper.train.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--model", help="a TimeViper directory whose vision front is trained")
    start.add_argument("--config", help="a training config whose model (e.g. model.tiny, random) is built and trained")
    parser.add_argument("--out", required=True, help="where the whole model is saved (config, weights, tokenizer)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=512, help="frames per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=0, help="loader processes drawing frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--token-loss", action="store_true", help="every token must tell its frame's background alone")
    parser.add_argument("--needle-share", type=float, default=0.0,
                        help="share of videos whose frames are drawn from their needle scene")
    parser.add_argument("--anchor", type=float, default=0.0,
                        help="weight holding the tokens of frames off needle backgrounds near the starting model's")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        if args.steps < 1 or args.batch < 1:
            raise ConfigError(f"--steps and --batch must be positive, got {args.steps} and {args.batch}")
        if not 0 <= args.needle_share <= 1 or args.anchor < 0:
            raise ConfigError(f"--needle-share must lie in [0, 1] and --anchor be at least 0, "
                              f"got {args.needle_share} and {args.anchor}")
        if Path(args.out, "config.json").exists():
            raise ConfigError(f"{args.out} already holds a model; choose a new --out")
        torch.manual_seed(args.seed)
        model = build_model(load_config(args.config), device=args.device) if args.config \
            else TimeViper.from_pretrained(args.model, torch.float32, args.device)
    except TimeViperError as e:
        print(f"timeviper: error: {e}", file=sys.stderr)
        return 1
    history = pretrain(model, args.steps, args.batch, args.lr, workers=args.workers, seed=args.seed,
                       token_loss=args.token_loss, needle_share=args.needle_share, anchor=args.anchor)
    model.save_pretrained(args.out)
    Path(args.out, "vision_pretraining.json").write_text(json.dumps(history, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
