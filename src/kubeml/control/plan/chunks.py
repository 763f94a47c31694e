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


def epoch_orders(
    n_samples: int, parallelism: int, seed: int, epoch: int, chunk_size: int = CHUNK_SIZE
) -> list[np.ndarray]:
    """Every function's training order for one epoch, as global sample indices.

    Function i trains the samples of its shard (`assign_chunks`) in a permutation seeded
    by (seed, epoch, i): the order is fixed by the task's seed alone, so a replacement
    function, a resumed task or a re-split continues exactly where the last one stopped.
    """
    orders = []
    for func_id, ranges in enumerate(
        assign_chunks(n_samples, parallelism, seed, epoch, chunk_size)
    ):
        samples = np.concatenate([np.arange(a, b) for a, b in ranges]) if ranges else np.empty(0)
        rng = np.random.default_rng(derive_seed(seed, epoch, func_id, "order"))
        orders.append(samples.astype(np.int64)[rng.permutation(len(samples))])
    return orders


def resplit(remaining: list[np.ndarray], parallelism: int) -> list[np.ndarray]:
    """The samples still to train this epoch, in their order, cut in `parallelism` runs."""
    joined = np.concatenate(remaining) if remaining else np.empty(0, dtype=np.int64)
    return [joined[a:b] for a, b in even_splits(len(joined), parallelism)]


def shard_of(order: np.ndarray) -> tuple[Ranges, tuple[int, ...]]:
    """What a function reads and in which order it trains it.

    Returns the sorted sample ranges covering `order` (the store reads them as one
    concatenation) and the position of each sample of `order` in that concatenation.
    """
    if len(order) == 0:
        return (), ()
    ordered = np.sort(order)
    breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(ordered)]])
    ranges = tuple(
        (int(ordered[a]), int(ordered[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)
    )
    return ranges, tuple(np.searchsorted(ordered, order).tolist())
