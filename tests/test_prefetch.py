"""The prefetching stream: the very batches of the stream it wraps, a state that is the consumer's, not the
thread's, and errors raised where the batch would have been."""

import time

import pytest
import torch
from test_packing import _stream
from test_records import make_dataset, write_jsonl

from timeviper.data import Mixture, PackedStream, Prefetcher
from timeviper.errors import TimeViperError


@pytest.mark.parametrize("workers", [0, 2])
def test_same_batches_and_the_consumers_state(tmp_path, workers):
    bare, ahead = _stream(tmp_path), Prefetcher(_stream(tmp_path, num_workers=workers), depth=2)
    for _ in range(3):
        want, got = next(bare), next(ahead)
        assert got["sample_ids"] == want["sample_ids"] and torch.equal(got["input_ids"], want["input_ids"])
    time.sleep(0.5)  # the thread runs ahead meanwhile; the state and the skip counts must not
    assert ahead.state_dict() == bare.state_dict()
    assert torch.equal(ahead.skips.counts, bare.skips.counts)

    resumed = Prefetcher(_stream(tmp_path))
    resumed.load_state_dict(ahead.state_dict())
    assert [next(resumed)["sample_ids"] for _ in range(3)] == [next(bare)["sample_ids"] for _ in range(3)]
    ahead.close()
    resumed.close()


def test_close_then_go_on_from_the_last_batch_handed_out(tmp_path):
    bare, ahead = _stream(tmp_path), Prefetcher(_stream(tmp_path), depth=2)
    expected = [next(bare)["sample_ids"] for _ in range(5)]
    got = [next(ahead)["sample_ids"] for _ in range(2)]
    time.sleep(0.3)
    ahead.close()
    assert ahead._thread is None
    got += [next(ahead)["sample_ids"] for _ in range(3)]
    assert got == expected
    ahead.close()


def test_an_error_is_raised_by_the_next_call(tmp_path):
    broken = make_dataset(write_jsonl(tmp_path / "broken.jsonl", ["{"] * 30), tmp_path, name="broken")
    stream = PackedStream([broken], Mixture([30], [1.0], seed=0), budget=64, max_skip_fraction=0.05, min_samples=10)
    ahead = Prefetcher(stream)
    with pytest.raises(TimeViperError, match=r"dataset 'broken': 10 of 10 samples skipped"):
        next(ahead)
    assert ahead._thread is None
