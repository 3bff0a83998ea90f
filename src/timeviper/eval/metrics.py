"""Scores for the three tasks, and parsers that turn a model's free text into answers.

Files for `score` are JSONL (or one JSON object or list): one record per line with an `id`.
- references: items as timeviper.synth.tasks makes them (`id` plus `answer` / `start`, `end` /
  `caption`; mcq items may carry `kind`, which adds a per-kind accuracy, and `options`, which adds
  `named_accuracy`: the share of answers that name the right option in words, whatever their letter);
- predictions: `id` plus, for mcq, `answer` (a letter, or text that parse_option_letter reads; `raw`, the
  response in full, if there, is where named_accuracy looks for the option);
  for tvg, `start` and `end` in seconds (null when there is none); for caption, `caption`.

Captions are compared as scene tuples (background, ((object, motion), ...)) parsed from the
synthetic grammar: scene F1 is order-aware (the longest common subsequence of exactly matching
scenes, over the predicted and the reference scene counts); event F1 is order-free (the multiset
of (background, object, motion) events).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

from timeviper.errors import ConfigError
from timeviper.synth.tasks import LETTERS, TASKS, parse_caption

TVG_THRESHOLDS = (0.3, 0.5, 0.7)

_ANSWER_IS = re.compile(r"(?i:answer)\s*(?:(?i:is)\s*)?:?\s*\(?([A-D])\b")
_LABEL = re.compile(r"\(?([A-D])[).:]")
_ALONE = re.compile(r"\b([A-D])\b")
_TIME = re.compile(r"\d+(?::\d{1,2}){0,2}(?:\.\d+)?")


def parse_option_letter(text: str) -> str | None:
    """The option letter a response picks ("B", "(B)", "B.", "The answer is B", "Answer: B) red"),
    or None when it names none, or several without saying which it means."""
    text = text.strip()
    if len(text) == 1 and text.upper() in LETTERS:
        return text.upper()
    stated = _ANSWER_IS.search(text)
    if stated:
        return stated[1]
    letters = set(_ALONE.findall(text))
    if len(letters) == 1:
        return letters.pop()
    labelled = _LABEL.match(text)  # "B) red, not A"
    return labelled[1] if labelled else None


def _seconds(token: str) -> float:
    value = 0.0
    for part in token.split(":"):
        value = value * 60 + float(part)
    return value


def parse_time_span(text: str) -> tuple[float, float] | None:
    """The first two times in a response ("12.0 - 30.5 seconds", "from 12 to 30", "12s-30s",
    "00:12 to 01:05") as (start, end), swapped if reversed; None if it holds fewer than two."""
    times = [_seconds(t) for t in _TIME.findall(text)[:2]]
    return (min(times), max(times)) if len(times) == 2 else None


def temporal_iou(pred: tuple[float, float] | None, ref: tuple[float, float]) -> float:
    """IoU of two [start, end] intervals; a missing prediction scores 0."""
    if pred is None:
        return 0.0
    (ps, pe), (rs, re_) = sorted(pred), sorted(ref)
    inter = max(0.0, min(pe, re_) - max(ps, rs))
    union = (pe - ps) + (re_ - rs) - inter
    return inter / union if union > 0 else float((ps, pe) == (rs, re_))


def _check_pairs(preds, refs) -> None:
    if len(preds) != len(refs):
        raise ConfigError(f"{len(preds)} predictions for {len(refs)} references")
    if not refs:
        raise ConfigError("nothing to score: no references")


def named_option(text: str, options: list[str]) -> int | None:
    """The option a response names in words ("orange star (C)" -> the index of "orange star"), or None
    when it names none, or several that are not part of one another ("checkered gray" names that, not "gray")."""
    text = " ".join(text.lower().split())
    found = [o.lower() for o in options if re.search(rf"\b{re.escape(o.lower())}\b", text)]
    named = [o for o in found if not any(o != other and o in other for other in found)]
    return [o.lower() for o in options].index(named[0]) if len(named) == 1 else None


def mcq_accuracy(preds: list[str | None], refs: list[str]) -> float:
    """Share of predicted letters that equal the reference letters."""
    _check_pairs(preds, refs)
    return sum(p == r for p, r in zip(preds, refs)) / len(refs)


def accuracy_interval(right: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of an accuracy of `right` of `n` (95% by default): unlike p ± z·se it stays inside
    [0, 1] and is not empty at 0 or n right (30 of 30: 0.89 to 1)."""
    if not 0 <= right <= n or n < 1:
        raise ConfigError(f"an accuracy of {right} right of {n} has no interval")
    p, z2 = right / n, z * z
    centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))  # (p inside, despite rounding)


def tvg_miou(preds: list[tuple[float, float] | None], refs: list[tuple[float, float]]) -> float:
    """Mean temporal IoU of predicted and reference spans."""
    _check_pairs(preds, refs)
    return sum(temporal_iou(p, r) for p, r in zip(preds, refs)) / len(refs)


def tvg_recall(preds: list[tuple[float, float] | None], refs: list[tuple[float, float]], threshold: float) -> float:
    """R@threshold: share of predictions whose IoU with the reference is at least `threshold`."""
    _check_pairs(preds, refs)
    return sum(temporal_iou(p, r) >= threshold for p, r in zip(preds, refs)) / len(refs)


def _f1(matched: int, predicted: int, expected: int) -> float:
    if predicted == expected == 0:
        return 1.0
    return 2 * matched / (predicted + expected)


def _lcs(a: list, b: list) -> int:
    """Length of the longest common subsequence (one DP row; `diagonal` is the previous row's j-1)."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def caption_scene_f1(pred_caption: str, ref_caption: str) -> float:
    """Order-aware F1 of whole scenes: LCS of exactly matching scene tuples."""
    pred, ref = parse_caption(pred_caption), parse_caption(ref_caption)
    return _f1(_lcs(pred, ref), len(pred), len(ref))


def caption_event_f1(pred_caption: str, ref_caption: str) -> float:
    """Order-free F1 of (background, object, motion) events."""
    pred, ref = (
        Counter((bg, obj, motion) for bg, actors in parse_caption(c) for obj, motion in actors)
        for c in (pred_caption, ref_caption)
    )
    return _f1(sum((pred & ref).values()), sum(pred.values()), sum(ref.values()))


def _by_id(records: list[dict], what: str) -> dict:
    out = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "id" not in record:
            raise ConfigError(f"{what} record {i} has no 'id'")
        if record["id"] in out:
            raise ConfigError(f"{what} repeat id {record['id']!r}")
        out[record["id"]] = record
    return out


def _field(record: dict, key: str):
    if key not in record:
        raise ConfigError(f"record {record['id']!r} has no {key!r}")
    return record[key]


def _span(record: dict, optional: bool) -> tuple[float, float] | None:
    start, end = _field(record, "start"), _field(record, "end")
    if optional and (start is None or end is None):
        return None
    try:
        return float(start), float(end)
    except (TypeError, ValueError):
        raise ConfigError(f"record {record['id']!r}: start and end must be seconds, got {start!r}, {end!r}") from None


def score(task: str, predictions: list[dict], references: list[dict]) -> dict:
    """Metrics of predictions against references, matched by `id` (see the module's docstring)."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    preds, refs = _by_id(predictions, "prediction"), _by_id(references, "reference")
    if preds.keys() != refs.keys():
        missing, extra = sorted(refs.keys() - preds.keys()), sorted(preds.keys() - refs.keys())
        raise ConfigError(f"ids differ: no prediction for {missing[:5]}, no reference for {extra[:5]}")
    ids = sorted(refs, key=str)
    if not ids:
        raise ConfigError("nothing to score: no references")
    result = {"task": task, "n": len(ids)}
    if task == "mcq":
        letters = [parse_option_letter(str(_field(preds[i], "answer"))) for i in ids]
        result["accuracy"] = mcq_accuracy(letters, [_field(refs[i], "answer") for i in ids])
        by_kind = defaultdict(list)
        for i, letter in zip(ids, letters):
            by_kind[refs[i].get("kind")].append(letter == refs[i]["answer"])
        result["accuracy_by_kind"] = {k: sum(v) / len(v) for k, v in sorted(by_kind.items()) if k is not None}
        if all("options" in refs[i] for i in ids):  # for answers that name the option too: is it the right one?
            named = [named_option(str(preds[i].get("raw", preds[i]["answer"])), refs[i]["options"]) for i in ids]
            result["named_accuracy"] = mcq_accuracy([None if n is None else LETTERS[n] for n in named],
                                                    [refs[i]["answer"] for i in ids])
    elif task == "tvg":
        spans, truth = [_span(preds[i], optional=True) for i in ids], [_span(refs[i], optional=False) for i in ids]
        result["miou"] = tvg_miou(spans, truth)
        result.update({f"r@{t}": tvg_recall(spans, truth, t) for t in TVG_THRESHOLDS})
    else:
        pairs = [(str(_field(preds[i], "caption")), _field(refs[i], "caption")) for i in ids]
        result["scene_f1"] = sum(caption_scene_f1(p, r) for p, r in pairs) / len(pairs)
        result["event_f1"] = sum(caption_event_f1(p, r) for p, r in pairs) / len(pairs)
    return result


def load_records(path) -> list[dict]:
    """Records of a JSONL file, or of a file holding one JSON object or a list of them."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        whole = json.loads(text)
        return whole if isinstance(whole, list) else [whole]
    except json.JSONDecodeError:
        pass
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{n}: not JSON ({e.msg})") from None
    return records
