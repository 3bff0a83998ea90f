"""Evaluation: task metrics and answer parsers."""

from timeviper.eval.metrics import (
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

__all__ = [
    "accuracy_interval", "caption_event_f1", "caption_scene_f1", "load_records", "mcq_accuracy", "named_option",
    "parse_option_letter", "parse_time_span", "score", "temporal_iou", "tvg_miou", "tvg_recall",
]
