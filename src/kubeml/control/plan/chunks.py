"""Which samples each function trains, in which order: the stored chunks shuffled per
epoch, samples shuffled within windows of chunks, the order split in N even stretches."""

from __future__ import annotations

import numpy as np

from kubeml.runtime.seeds import derive_seed
from kubeml.stores.chunks import CHUNK_UNIT, WINDOW_CHUNKS

CHUNK_SIZE = CHUNK_UNIT  # the smallest chunk: stored chunks are whole multiples of it

Ranges = tuple[tuple[int, int], ...]


def even_splits(total: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous (start, stop) spans of `range(total)`, sizes differing by ≤ 1."""
    bounds = [total * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def epoch_order(
    n_samples: int, chunk_samples: int, seed: int, epoch: int, window: int = WINDOW_CHUNKS
) -> np.ndarray:
    """The epoch's training order of the whole split, as global sample indices.

    The stored chunks (`chunk_samples` samples each, the last may be short) are shuffled
    with a seed derived from (seed, epoch); consecutive runs of `window` shuffled chunks
    form windows, and each window's samples are permuted with a seed of their own. So the
    order is fixed by the task's seed alone, has every sample once, and any stretch of it
    lies in one or two windows: whoever trains a stretch reads a bounded set of chunks.
    """
    size = max(CHUNK_SIZE, chunk_samples)
    n_chunks = -(-n_samples // size)
    chunks = np.random.default_rng(derive_seed(seed, epoch, "chunks")).permutation(n_chunks)
    starts = chunks.astype(np.int64) * size
    lengths = np.minimum(size, n_samples - starts)
    ends = np.cumsum(lengths)
    # The shuffled chunks' samples, concatenated (each chunk's in storage order).
    order = np.repeat(starts - (ends - lengths), lengths) + np.arange(n_samples, dtype=np.int64)
    bounds = np.concatenate([[0], ends[window - 1 :: window], [n_samples]])
    for w in range(-(-n_chunks // window)):
        a, b = int(bounds[w]), int(bounds[w + 1])
        rng = np.random.default_rng(derive_seed(seed, epoch, "window", w))
        order[a:b] = order[a:b][rng.permutation(b - a)]
    return order


def validation_slices(n_samples: int, parallelism: int) -> list[Ranges]:
    """The test-set slice each of N validating functions scores."""
    return [((a, b),) if b > a else () for a, b in even_splits(n_samples, parallelism)]


def epoch_orders(
    n_samples: int, parallelism: int, seed: int, epoch: int, chunk_samples: int = CHUNK_SIZE
) -> list[np.ndarray]:
    """Every function's training order for one epoch, as global sample indices.

    Function i trains the i-th of N contiguous, even stretches of the epoch's order
    (`epoch_order`): fixed by the task's seed alone, so a replacement function, a resumed
    task or a re-split continues exactly where the last one stopped.
    """
    order = epoch_order(n_samples, chunk_samples, seed, epoch).astype(np.int64)
    return [order[a:b] for a, b in even_splits(n_samples, parallelism)]


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
