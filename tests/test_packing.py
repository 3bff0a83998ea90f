"""Packing layout, the dataset mixture, and the resumable packed stream."""

import pytest
import torch
import torch.nn.functional as F
from test_records import chat, make_dataset, write_jsonl, write_media

from timeviper.data import IGNORE_INDEX, Mixture, PackedStream, RankShare, Sample, collate
from timeviper.errors import CheckpointError, TimeViperError


def sample(length, span=(0, 0), frames=None, loss_from=1, name="s"):
    ids = torch.arange(100, 100 + length)
    labels = torch.where(torch.arange(length) >= loss_from, ids, torch.tensor(IGNORE_INDEX))
    return Sample(name, ids, labels, span, span[1] + 1, frames)


def test_collate_layout_boundaries_and_padding():
    frames = torch.zeros(2, 2, 2, 3, dtype=torch.uint8)
    samples = [sample(5, (1, 3), frames, name="a"), sample(3, name="b"), sample(4, (1, 2), frames[:1], name="c")]
    batch = collate(samples, pad_to_multiple_of=8)

    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (1, 16)
    assert batch["cu_seqlens"].dtype == torch.int32
    assert batch["cu_seqlens"].tolist() == [0, 5, 8, 12, 16]  # three samples, then the padding segment
    assert batch["max_seqlen"] == 5
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3]
    assert batch["vision_spans"].tolist() == [[1, 3], [5, 5], [9, 10]]
    assert batch["instruction_ends"].tolist() == [4, 6, 11]
    assert batch["frames"][1] is None and batch["frames"][2].shape[0] == 1
    assert batch["sample_ids"] == ["a", "b", "c"]
    # frame times: a sample's own, else once a second from 0; none without frames
    samples[0].frame_times = torch.tensor([10.0, 70.0])
    times = collate(samples)["frame_times"]
    assert times[0].tolist() == [10.0, 70.0] and times[1] is None and times[2].tolist() == [0.0]

    labels, ids, bounds = batch["labels"][0], batch["input_ids"][0], batch["cu_seqlens"].tolist()
    for start, end in zip(bounds[:-2], bounds[1:-1]):
        # inside a sample, labels are the next token; the last token predicts nothing
        assert labels[start : end - 1].tolist() == samples[bounds.index(start)].labels[1:].tolist()
        assert labels[end - 1] == IGNORE_INDEX
        assert (ids[start:end] >= 100).all()
    assert (labels[12:] == IGNORE_INDEX).all() and (ids[12:] == 0).all()
    assert collate(samples)["input_ids"].shape == (1, 12)  # no padding by default


def test_packed_loss_equals_the_sum_of_per_sample_losses():
    samples = [sample(7, loss_from=2), sample(4, loss_from=1), sample(9, loss_from=5)]
    batch = collate(samples, pad_to_multiple_of=32)
    vocab = 128
    logits = torch.randn(1, batch["input_ids"].shape[1], vocab)
    packed = F.cross_entropy(logits[0], batch["labels"][0], ignore_index=IGNORE_INDEX, reduction="sum")

    separate, start = 0.0, 0
    for s in samples:
        own = logits[0, start : start + len(s)]
        # the usual shift, one sample at a time
        separate += F.cross_entropy(own[:-1], s.labels[1:], ignore_index=IGNORE_INDEX, reduction="sum")
        start += len(s)
    torch.testing.assert_close(packed, separate)
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(
        int((s.labels[1:] != IGNORE_INDEX).sum()) for s in samples
    )


def test_mixture_is_proportional_deterministic_and_sharded():
    mixture = Mixture([100, 50, 10], [1.0, 1.0, 5.0], seed=3)  # shares 100 : 50 : 50
    keys = list(zip(range(400), mixture.keys([0, 0, 0])))
    counts = [sum(1 for _, (d, _) in keys if d == k) for k in range(3)]
    assert counts == [200, 100, 100]
    assert [d for _, (d, _) in keys[:8]] == [0, 1, 2, 0, 0, 1, 2, 0]
    assert [k for _, k in keys] == [
        k for _, k in zip(range(400), Mixture([100, 50, 10], [1.0, 1.0, 5.0], seed=3).keys([0, 0, 0]))
    ]

    small = [i for _, (d, i) in keys if d == 2]
    assert sorted(small[:10]) == list(range(10)) and small[:10] != small[10:20]  # a new order each epoch

    ranks = [Mixture([10, 7], [1.0, 1.0], seed=0, rank=r, world_size=3) for r in range(3)]
    first_epoch = [{m.record_index(0, j) for j in range(3)} for m in ranks]
    assert set.union(*first_epoch) <= set(range(10)) and sum(map(len, first_epoch)) == 9
    assert all(a.isdisjoint(b) for a in first_epoch for b in first_epoch if a is not b)
    with pytest.raises(TimeViperError, match="at least one record per rank"):
        Mixture([10, 2], [1.0, 1.0], seed=0, world_size=3)


def test_first_fit_fills_the_room_left_by_the_oldest_sample(tmp_path):
    lengths = [50, 14, 40, 20, 30]  # tokens of records 0..4: 3 + answer length
    records = [{"id": str(i), "conversations": chat("", "x" * (n - 3))} for i, n in enumerate(lengths)]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    mixture = Mixture([5], [1.0], seed=0)
    assert [mixture.record_index(0, j) for j in range(5)] == [2, 4, 3, 0, 1]  # the arrival order
    stream = PackedStream([make_dataset(path, tmp_path)], mixture, budget=64, lookahead=3)
    # buffer 2,4,3: 40 + 30 > 64, so 3 fills the room; then buffer 4,0,1: 30 + 50 > 64, so 1 does
    assert next(stream)["sample_ids"] == ["2", "3"]
    assert next(stream)["sample_ids"] == ["4", "1"]
    assert next(stream)["sample_ids"][0] == "0"


def _dataset(tmp_path, name, n, bad_every=0):
    video = write_media(tmp_path, f"{name}.mp4", "3")
    records = [
        "{broken"
        if bad_every and i % bad_every == 0
        else {"id": f"{name}{i}", "video": video, "conversations": chat(answer="x" * (i % 7 + 1))}
        for i in range(n)
    ]
    return make_dataset(write_jsonl(tmp_path / f"{name}.jsonl", records), tmp_path, name=name, max_frames=4)


def _stream(tmp_path, **kwargs):
    datasets = [_dataset(tmp_path, "a", 13, bad_every=5), _dataset(tmp_path, "b", 6)]
    mixture = Mixture([len(d) for d in datasets], [1.0, 2.0], seed=1)
    return PackedStream(
        datasets, mixture, budget=64, lookahead=4, pad_to_multiple_of=16, max_skip_fraction=0.5, **kwargs
    )


def test_a_restored_stream_continues_with_the_same_batches(tmp_path):
    original = _stream(tmp_path)
    for _ in range(5):
        next(original)
    state = original.state_dict()
    expected = [next(original) for _ in range(6)]

    restored = _stream(tmp_path)
    restored.load_state_dict(state)
    for want, got in zip(expected, (next(restored) for _ in range(6))):
        assert got["sample_ids"] == want["sample_ids"]
        assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["cu_seqlens"], want["cu_seqlens"])
    assert torch.equal(restored.skips.counts, original.skips.counts)
    assert original.skips.summary()["skipped_by_reason"] == {"bad_json": int(original.skips.counts[0, 1])}
    assert original.skips.counts[0, 1] > 0

    other = _stream(tmp_path)
    with pytest.raises(CheckpointError, match="data mixture changed"):
        other.load_state_dict({**state, "sizes": [13, 7]})


def test_a_stream_loaded_by_worker_processes_matches_the_inline_one(tmp_path):
    inline, workers = _stream(tmp_path), _stream(tmp_path, num_workers=2)
    for _ in range(4):
        assert next(inline)["sample_ids"] == next(workers)["sample_ids"]


def test_a_mostly_broken_dataset_stops_the_stream(tmp_path):
    broken = make_dataset(write_jsonl(tmp_path / "broken.jsonl", ["{"] * 30), tmp_path, name="broken")
    stream = PackedStream([broken], Mixture([30], [1.0], seed=0), budget=64, max_skip_fraction=0.05, min_samples=10)
    with pytest.raises(TimeViperError, match=r"dataset 'broken': 10 of 10 samples skipped \(bad_json: 10\)"):
        next(stream)


def test_rank_shares_split_one_stream_between_ranks(tmp_path):
    whole = [next(stream)["sample_ids"] for stream in [_stream(tmp_path)] for _ in range(6)]
    shares = [RankShare(_stream(tmp_path), rank, 2) for rank in (0, 1)]
    taken = [[next(share)["sample_ids"] for _ in range(3)] for share in shares]
    assert taken[0] == whole[0::2] and taken[1] == whole[1::2]
    assert shares[0].skips.counts.sum() > 0 and shares[1].skips.counts.sum() == 0  # counted once, on rank 0

    resumed = RankShare(_stream(tmp_path), 1, 2)
    resumed.load_state_dict(shares[1].state_dict())
    assert next(resumed)["sample_ids"] == next(shares[1])["sample_ids"]
