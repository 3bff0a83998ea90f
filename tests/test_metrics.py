import json

import pytest

from timeviper.errors import ConfigError
from timeviper.eval import (
    accuracy_interval,
    caption_event_f1,
    caption_scene_f1,
    load_records,
    mcq_accuracy,
    named_option,
    parse_option_letter,
    parse_time_span,
    score,
    temporal_iou,
    tvg_miou,
    tvg_recall,
)
from timeviper.synth import make_item

REF = "Scene 1: a teal background with a blue circle moving left, then an orange star moving up. " \
      "Scene 2: a striped gray background with a white cross moving down."


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"), ("b", "B"), ("(B)", "B"), ("B.", "B"), ("The answer is B", "B"), ("Answer: B) red", "B"),
        ("answer: (C)", "C"), ("D) blue square", "D"), ("I think it is (A).", "A"), ("  C\n", "C"),
        ("the answer is a blue circle", None), ("A or B", None), ("B. Not A.", "B"), ("no idea", None), ("", None), ("E", None),
    ],
)
def test_parse_option_letter(text, letter):
    assert parse_option_letter(text) == letter


@pytest.mark.parametrize(
    "text, span",
    [
        ("12.0 - 30.5 seconds", (12.0, 30.5)), ("from 12 to 30", (12.0, 30.0)), ("12s-30s", (12.0, 30.0)),
        ("It happens between 30 and 12 seconds.", (12.0, 30.0)), ("00:12 to 01:05", (12.0, 65.0)),
        ("at 7 seconds", None), ("never", None),
    ],
)
def test_parse_time_span(text, span):
    assert parse_time_span(text) == span


def test_temporal_iou():
    assert temporal_iou((2, 8), (2, 8)) == 1.0
    assert temporal_iou((0, 2), (5, 9)) == 0.0
    assert temporal_iou((0, 4), (2, 6)) == pytest.approx(2 / 6)
    assert temporal_iou((8, 2), (2, 8)) == 1.0
    assert temporal_iou(None, (2, 8)) == 0.0
    assert temporal_iou((3, 3), (3, 3)) == 1.0 and temporal_iou((3, 3), (4, 4)) == 0.0


def test_tvg_miou_and_recall():
    refs = [(0, 10), (0, 10), (0, 10), (0, 10)]
    preds = [(0, 10), (0, 4), (20, 30), None]
    assert tvg_miou(preds, refs) == pytest.approx((1 + 0.4) / 4)
    assert [tvg_recall(preds, refs, t) for t in (0.3, 0.5, 0.7)] == [0.5, 0.25, 0.25]
    with pytest.raises(ConfigError):
        tvg_miou(preds[:2], refs)


def test_mcq_accuracy():
    assert mcq_accuracy(["A", None, "C", "D"], ["A", "B", "C", "A"]) == 0.5
    with pytest.raises(ConfigError):
        mcq_accuracy([], [])


@pytest.mark.parametrize("right, n", [(1, 4), (29, 30), (54, 60), (300, 1000)])
def test_accuracy_interval_is_where_the_score_test_accepts(right, n):
    # Wilson's bounds are the p at which the score test's statistic (p_hat - p)^2 / (p (1 - p) / n) equals z^2
    z, p_hat = 1.96, right / n
    low, high = accuracy_interval(right, n)
    assert 0 < low < p_hat < high < 1
    for p in (low, high):
        assert (p_hat - p) ** 2 / (p * (1 - p) / n) == pytest.approx(z * z)
    assert accuracy_interval(n - right, n) == pytest.approx((1 - high, 1 - low))  # symmetric in right and wrong


def test_accuracy_interval_at_all_or_none_right_and_bad_counts():
    assert accuracy_interval(30, 30) == pytest.approx((30 / (30 + 1.96**2), 1))  # 30 of 30 shows 0.89, not 0.99
    assert accuracy_interval(0, 30) == pytest.approx((0, 1.96**2 / (30 + 1.96**2)))
    assert all(accuracy_interval(n, n)[1] == 1 and accuracy_interval(0, n)[0] == 0 for n in range(1, 200))
    assert accuracy_interval(30, 30, z=2.576)[0] < accuracy_interval(30, 30)[0]  # 99% reaches lower
    for right, n in ((31, 30), (-1, 30), (0, 0)):
        with pytest.raises(ConfigError, match="no interval"):
            accuracy_interval(right, n)


def test_named_option():
    options = ["gray", "checkered gray", "orange star", "orange circle"]
    assert named_option("checkered gray (B)", options) == 1  # not "gray", which is part of it
    assert named_option("Gray (A)", options) == 0 and named_option("orange  star", options) == 2
    assert named_option("B", options) is None and named_option("orange", options) is None
    assert named_option("orange star or orange circle", options) is None  # two: no pick


def test_caption_f1():
    assert caption_scene_f1(REF, REF) == 1.0 and caption_event_f1(REF, REF) == 1.0
    first = REF.split(" Scene 2")[0]
    assert caption_scene_f1(first, REF) == pytest.approx(2 * 1 / 3)
    assert caption_event_f1(first, REF) == pytest.approx(2 * 2 / 5)
    swapped = "Scene 1: " + REF.split("Scene 2: ")[1] + " Scene 2: " + REF.split("Scene 1: ")[1].split(" Scene 2")[0]
    assert caption_scene_f1(swapped, REF) == pytest.approx(0.5)  # order-aware: one of two in order
    assert caption_event_f1(swapped, REF) == 1.0  # order-free
    wrong_motion = REF.replace("moving down", "moving up")
    assert caption_scene_f1(wrong_motion, REF) == 0.5 and caption_event_f1(wrong_motion, REF) == pytest.approx(2 / 3)
    assert caption_scene_f1("A video of shapes.", REF) == 0.0 and caption_scene_f1("", "") == 1.0
    assert caption_scene_f1("Scene 1: something odd. " + REF.replace("Scene 1", "Scene 2", 1), REF) == pytest.approx(0.8)


def _items(task, n=6):
    return [make_item(task, seed, 60)[1] for seed in range(n)]


def test_score_mcq():
    refs = _items("mcq")
    preds = [{"id": r["id"], "answer": f"The answer is {r['answer']}."} for r in refs]
    preds[0]["answer"] = "ABCD".replace(refs[0]["answer"], "")[0]
    result = score("mcq", preds, refs)
    assert result["n"] == 6 and result["accuracy"] == pytest.approx(5 / 6)
    assert set(result["accuracy_by_kind"]) == {r["kind"] for r in refs}
    assert result["named_accuracy"] == 0.0  # letters only: no option named
    named = [{"id": r["id"], "answer": f"{r['options'][0]} ({r['answer']})"} for r in refs]
    right = sum(r["answer"] == "A" for r in refs)
    result = score("mcq", named, refs)
    assert result["accuracy"] == 1.0 and result["named_accuracy"] == pytest.approx(right / 6)
    as_runner_writes = [{"id": p["id"], "answer": r["answer"], "raw": p["answer"]} for p, r in zip(named, refs)]
    assert score("mcq", as_runner_writes, refs)["named_accuracy"] == pytest.approx(right / 6)


def test_score_tvg_and_caption():
    refs = _items("tvg")
    preds = [{"id": r["id"], "start": r["start"], "end": r["end"]} for r in refs]
    preds[-1].update(start=None, end=None)
    result = score("tvg", preds, refs)
    assert result["miou"] == pytest.approx(5 / 6) and result["r@0.7"] == pytest.approx(5 / 6)
    refs = _items("caption")
    assert score("caption", [{"id": r["id"], "caption": r["caption"]} for r in refs], refs)["scene_f1"] == 1.0


def test_score_rejects_bad_input():
    refs = _items("mcq", 3)
    preds = [{"id": r["id"], "answer": "A"} for r in refs]
    with pytest.raises(ConfigError, match="task"):
        score("vqa", preds, refs)
    with pytest.raises(ConfigError, match="ids differ"):
        score("mcq", preds[:2], refs)
    with pytest.raises(ConfigError, match="ids differ"):
        score("mcq", preds[:2] + [{"id": "other", "answer": "A"}], refs)
    with pytest.raises(ConfigError, match="repeat"):
        score("mcq", preds + preds[:1], refs)
    with pytest.raises(ConfigError, match="'answer'"):
        score("mcq", [{"id": r["id"]} for r in refs], refs)
    with pytest.raises(ConfigError, match="no 'id'"):
        score("mcq", [{"answer": "A"}], refs)
    with pytest.raises(ConfigError, match="seconds"):
        score("tvg", [{"id": "x", "start": 1, "end": 2}], [{"id": "x", "start": "soon", "end": 2}])


def test_load_records(tmp_path):
    items = _items("tvg", 2)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items) + "\n")
    (tmp_path / "b.json").write_text(json.dumps(items[0], indent=2))
    (tmp_path / "c.jsonl").write_text('{"id": 1}\n{oops\n')
    assert load_records(tmp_path / "a.jsonl") == items
    assert load_records(tmp_path / "b.json") == items[:1]
    with pytest.raises(ConfigError, match="c.jsonl:2"):
        load_records(tmp_path / "c.jsonl")
    with pytest.raises(ConfigError, match="cannot read"):
        load_records(tmp_path / "missing.jsonl")
