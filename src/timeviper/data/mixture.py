"""A deterministic, resumable, rank-sharded mixture of datasets.

Which dataset the next sample comes from is decided without randomness: the one furthest behind its
target share (the scheme of Megatron's blended datasets), so every stretch of the stream holds the
datasets in their proportions. Within a dataset, epoch ``e`` visits the records in a permutation
seeded by ``(seed, dataset, e)``; rank ``r`` of ``W`` takes every ``W``-th record of it from ``r``
(the ``n mod W`` records left over differ from epoch to epoch). The sample order is therefore a pure
function of the seed and of how many samples were drawn from each dataset, and those counts
(``drawn``) are the whole state to checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from timeviper.errors import ConfigError


class Mixture:
    """Datasets of ``sizes`` records mixed so that dataset ``d`` gets a share ∝ ``weights[d] * sizes[d]``.

    A weight of 1 keeps a dataset at its natural size; 2 draws it twice as often (two epochs while
    the others do one).
    """

    def __init__(
        self, sizes: Sequence[int], weights: Sequence[float], *, seed: int, rank: int = 0, world_size: int = 1
    ):
        if len(sizes) != len(weights) or not sizes:
            raise ConfigError("a mixture needs one weight per dataset and at least one dataset")
        if min(sizes) < world_size:
            raise ConfigError(
                f"every dataset needs at least one record per rank: sizes {list(sizes)}, {world_size} ranks"
            )
        self.sizes = list(sizes)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shard_sizes = [n // world_size for n in sizes]
        share = np.asarray(weights, dtype=np.float64) * self.shard_sizes
        self.shares = share / share.sum()
        self._permutations: dict[int, tuple[int, np.ndarray]] = {}

    def next_dataset(self, drawn: Sequence[int]) -> int:
        """The dataset of the next draw, given how many were drawn from each so far."""
        return int(np.argmax(self.shares * (sum(drawn) + 1) - np.asarray(drawn)))

    def record_index(self, dataset: int, draw: int) -> int:
        """The record of ``dataset`` that this rank reads at its ``draw``-th draw from it."""
        epoch, i = divmod(draw, self.shard_sizes[dataset])
        cached = self._permutations.get(dataset)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng((self.seed, dataset, epoch))
            cached = self._permutations[dataset] = (epoch, rng.permutation(self.sizes[dataset]))
        return int(cached[1][i * self.world_size + self.rank])

    def keys(self, drawn: Sequence[int]) -> Iterator[tuple[int, int]]:
        """The endless stream of ``(dataset, record)`` keys that follows the counts ``drawn``."""
        drawn = list(drawn)
        while True:
            d = self.next_dataset(drawn)
            yield d, self.record_index(d, drawn[d])
            drawn[d] += 1
