"""Where the embedded model loses "which way does the X move?": linear probes for the direction (4 classes).

    python scripts/probe_motion.py vision [--model DIR]   # the vision tokens the LM is given
    python scripts/probe_motion.py binding [--model DIR]  # do those tokens tie an object to its background?
    python scripts/probe_motion.py lm [--model DIR]       # the LM's hidden state at the answer position, per layer
    python scripts/probe_motion.py answer [--model DIR]   # the model's own answers
    python scripts/probe_motion.py confusions [--results FILE]   # which scene the wrong answers on long videos read

`vision` reads the direction from the actor's first and last on-screen frames (12 s motion clips; 1,500 train-split
videos, 400 test-split): all 16 tokens of each, or their mean. `binding` reads, from the vision tokens of frames
with an object on screen (64 s videos, 120 train-split and 40 test-split), the frame's object (48 classes) and
its background (12), from any one token alone and from the mean of the frame's 16. `lm` prefills the motion
question as inference does (800 train videos, 300 test) and probes every layer's output at the prompt's last
token, which predicts the answer. Prints (train, test) accuracy per probe; chance is 0.25 (1/48 and 1/12 for
`binding`). `answer` asks 60 test-split motion questions on 8-16 s clips and prints the accuracy and the directions
the model answered. `confusions` needs no model: it reads the multiple-choice answers a synth_sweep results file
holds (default: the shipped model's) and splits each cell's motion questions by whether the asked object also moves
another way in another scene, and counts the wrong answers that name the direction of that other scene.
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from timeviper import TimeViper
from timeviper.data.synth_source import sample_frames, task_prompt
from timeviper.errors import ConfigError
from timeviper.eval import runner
from timeviper.eval.metrics import parse_option_letter
from timeviper.synth import make_item
from timeviper.synth.tasks import LETTERS, motion_question
from timeviper.synth.pretrain_vision import NO_OBJECT, frame_labels
from timeviper.synth.world import BACKGROUNDS, MOTIONS, make_video

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "embedded_quality.json"

TRAIN_SEEDS, TEST_SEEDS = range(800000, 900000), range(1100000, 1200000)


def asked(spec, item: dict):
    """The (scene, actor) a motion question asks about."""
    return next((s, a) for s in spec.scenes for a in s.actors
                if item["question"] == motion_question(a.obj, s.background))


def motion_items(seeds, n, frames=lambda seed: 12, min_seconds=3):
    """Up to n (video, item, actor) of motion questions on videos of frames(seed) s, the actor on screen for
    >= min_seconds (every motion question's actor is on screen for >= 2 s)."""
    for seed in seeds:
        if n == 0:
            return
        try:
            spec, item = make_item("mcq", seed, frames(seed), kind="motion")
        except ConfigError:  # no motion question on this video
            continue
        _, actor = asked(spec, item)
        if actor.end - actor.start >= min_seconds:
            n -= 1
            yield spec, item, actor


def fit(train_x, train_y, test_x, test_y, steps, l2):
    """(train, test) accuracy of a standardised multinomial logistic regression."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    classes = int(torch.cat([train_y, test_y]).max()) + 1
    w = torch.zeros(a.shape[1], classes, requires_grad=True)
    c = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, c], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        (F.cross_entropy(a @ w + c, train_y) + l2 * w.square().sum()).backward()
        opt.step()
    with torch.no_grad():
        return tuple(round(((x @ w + c).argmax(1) == y).float().mean().item(), 3)
                     for x, y in ((a, train_y), (b, test_y)))


def vision_probe(model):
    def data(seeds, n):  # [n, 2 frames, 16 tokens, C], directions [n]
        xs, ys = [], []
        for spec, _, actor in motion_items(seeds, n):
            shown = torch.tensor([actor.start, actor.end - 1])  # seconds, at 1 fps
            frames = torch.from_numpy(sample_frames(spec))[shown]
            with torch.no_grad():
                xs.append(model.embed_frames(frames, shown).view(2, model.config.tokens_per_frame, -1))
            ys.append(MOTIONS.index(actor.motion))
        return torch.stack(xs), torch.tensor(ys)

    (xa, ya), (xb, yb) = data(TRAIN_SEEDS, 1500), data(TEST_SEEDS, 400)
    for name, f in [("all 16 tokens, last frame - first", lambda x: (x[:, 1] - x[:, 0]).flatten(1)),
                    ("mean of the 16 tokens, last frame - first", lambda x: x[:, 1].mean(1) - x[:, 0].mean(1))]:
        print(f"{name}: {fit(f(xa), ya, f(xb), yb, steps=500, l2=1e-3)}")


def one_object_frames(spec) -> list[tuple[int, int, int]]:
    """(second, background index, object index) of every frame with an object on screen, needle scenes left out
    (the labels vision pretraining uses: the world's scenes show their objects one after another)."""
    labels = ((t, *frame_labels(spec, t)[:2]) for t in range(spec.frames))
    return [(t, background, obj) for t, background, obj in labels
            if obj != NO_OBJECT and background < len(BACKGROUNDS)]  # needle backgrounds come after the others


def binding_probe(model):
    def data(seeds, n):  # [frames, 16 tokens, C]; each frame's object and background
        xs, objects, backgrounds = [], [], []
        for seed in seeds[:n]:
            spec = make_video(seed, 64)
            if shown := one_object_frames(spec):
                times = torch.tensor([t for t, _, _ in shown])
                with torch.no_grad():
                    xs.append(model.embed_frames(torch.from_numpy(sample_frames(spec))[times], times))
                backgrounds += [b for _, b, _ in shown]
                objects += [o for _, _, o in shown]
        x = torch.cat(xs).view(len(objects), model.config.tokens_per_frame, -1)
        return x, torch.tensor(objects), torch.tensor(backgrounds)

    (xa, oa, ba), (xb, ob, bb) = data(TRAIN_SEEDS, 120), data(TEST_SEEDS, 40)
    per_token = lambda y: y.repeat_interleave(xa.shape[1])  # noqa: E731 (a frame's label for each of its tokens)
    for label, ya, yb in (("object", oa, ob), ("background", ba, bb)):
        one = fit(xa.flatten(0, 1), per_token(ya), xb.flatten(0, 1), per_token(yb), 300, 1e-4)
        print(f"{label} from any one token: {one}")
        print(f"{label} from the mean of the frame's tokens: {fit(xa.mean(1), ya, xb.mean(1), yb, 300, 1e-4)}")


def lm_probe(model):
    layers = model.llm.layers
    last = {}
    for i, block in enumerate(layers):
        block.register_forward_hook(lambda mod, inp, out, i=i: last.__setitem__(i, out[0, -1].clone()))

    def data(seeds, n):  # [n, layers, C]: each layer's output at the prompt's last token (its last call: the prompt)
        xs, ys = [], []
        for spec, item, actor in motion_items(seeds, n):
            with torch.no_grad():
                model.prefill([torch.from_numpy(sample_frames(spec))], task_prompt(item))
            xs.append(torch.stack([last[i] for i in range(len(layers))]))
            ys.append(MOTIONS.index(actor.motion))
        return torch.stack(xs), torch.tensor(ys)

    (xa, ya), (xb, yb) = data(TRAIN_SEEDS, 800), data(TEST_SEEDS, 300)
    for i, block in enumerate(layers):
        print(f"layer {i:2d} ({block.kind}): {fit(xa[:, i], ya, xb[:, i], yb, steps=300, l2=1e-2)}")


def answer_accuracy(model, n=60):
    right, said = 0, set()
    for spec, item, _ in motion_items(TEST_SEEDS, n, frames=lambda seed: 8 + seed % 9, min_seconds=2):
        record = runner.predict(model, torch.from_numpy(sample_frames(spec)), item)
        right += record["answer"] == item["answer"]
        said.add(record["raw"].split(" (")[0])
    print(f"motion answers: {right}/{n} right ({right / n:.2f}); directions said: {sorted(said)}")


def motion_confusions(cell: dict, size: int) -> dict:
    """Counts over a multiple-choice cell's motion questions: right / asked where the object moves only in the asked
    scene (or the same way elsewhere) and where it also moves another way in another scene, and the wrong answers
    that name that other scene's direction."""
    counts = dict.fromkeys(["only_here", "only_here_right", "elsewhere", "elsewhere_right", "wrong_says_elsewhere"], 0)
    for seed, raw in zip(cell["seeds"], cell["responses"]):
        spec, item = make_item("mcq", seed, cell["frames"], size)
        if item.get("kind") != "motion":
            continue
        scene, actor = asked(spec, item)
        elsewhere = {a.motion for s in spec.scenes if s.background != scene.background
                     for a in s.actors if a.obj == actor.obj} - {actor.motion}
        said = parse_option_letter(raw)
        right = said == item["answer"]
        where = "elsewhere" if elsewhere else "only_here"
        counts[where] += 1
        counts[f"{where}_right"] += right
        said_elsewhere = said is not None and item["options"][LETTERS.index(said)] in elsewhere
        counts["wrong_says_elsewhere"] += not right and said_elsewhere
    return counts


def confusions(results: Path) -> None:
    data = json.loads(results.read_text())
    for cell in data["cells"]:
        if cell["task"] == "mcq" and cell["frames"] <= 256:
            c = motion_confusions(cell, data["settings"]["size"])
            print(f"{cell['frames']:4d} s, TransV {cell['transv']:7s}: object only in the asked scene "
                  f"{c['only_here_right']}/{c['only_here']} right; also moving another way elsewhere "
                  f"{c['elsewhere_right']}/{c['elsewhere']} right, {c['wrong_says_elsewhere']} of the wrong answers "
                  f"that other scene's direction")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("probe", choices=["vision", "binding", "lm", "answer", "confusions"])
    p.add_argument("--model", default=None, help="a TimeViper directory (default: the embedded model)")
    p.add_argument("--results", type=Path, default=RESULTS, help="confusions: a synth_sweep results file")
    args = p.parse_args()
    if args.probe == "confusions":
        return confusions(args.results)
    torch.manual_seed(0)
    model = TimeViper.from_pretrained(args.model, dtype=torch.float32).eval()
    {"vision": vision_probe, "binding": binding_probe, "lm": lm_probe, "answer": answer_accuracy}[args.probe](model)


if __name__ == "__main__":
    main()
