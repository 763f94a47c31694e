"""Which samples each function gets: 64-sample chunks, shuffled per epoch, split in N runs."""

from __future__ import annotations

import numpy as np

from kubeml.runtime.seeds import derive_seed

CHUNK_SIZE = 64

Ranges = tuple[tuple[int, int], ...]


def even_splits(total: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous (start, stop) spans of `range(total)`, sizes differing by ≤ 1."""
    bounds = [total * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def _coalesce(spans: list[tuple[int, int]]) -> Ranges:
    out: list[tuple[int, int]] = []
    for start, stop in spans:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], stop)
        else:
            out.append((start, stop))
    return tuple(out)


def assign_chunks(
    n_samples: int, parallelism: int, seed: int, epoch: int, chunk_size: int = CHUNK_SIZE
) -> list[Ranges]:
    """The training shard of every function for one epoch.

    The set is cut into `chunk_size` chunks (the last may be short), the chunk order is
    shuffled with a seed derived from (seed, epoch), and the shuffled list is split into
    `parallelism` contiguous runs; function i gets run i, as sample ranges.
    """
    n_chunks = -(-n_samples // chunk_size)
    order = np.random.default_rng(derive_seed(seed, epoch, "chunks")).permutation(n_chunks)
    shards = []
    for start, stop in even_splits(n_chunks, parallelism):
        spans = [
            (int(c) * chunk_size, min((int(c) + 1) * chunk_size, n_samples))
            for c in order[start:stop]
        ]
        shards.append(_coalesce(spans))
    return shards


def validation_slices(n_samples: int, parallelism: int) -> list[Ranges]:
    """The test-set slice each of N validating functions scores."""
    return [((a, b),) if b > a else () for a, b in even_splits(n_samples, parallelism)]
