"""A function's samples, a piece at a time: what it trains now is what it holds.

An invocation's shard can be a whole split (N=1); holding it would make a function's
memory grow with the dataset. Its order is cut instead into *pieces* of whole batches,
each touching at most `PIECE_CHUNKS` stored chunks (the epoch's order keeps any stretch
inside one or two windows of chunks, `control/plan/chunks.py`). A piece is read as one
`ShardSource.read` of the sorted ranges it touches, handed to the user's dataset
(`self.data`/`self.labels` hold it while it trains), and the next piece is read ahead on
a thread where the source allows it. So a function holds two pieces at most, whatever N.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from kubeml.runtime.batching import BatchReader
from kubeml.stores.chunks import WINDOW_CHUNKS

if TYPE_CHECKING:
    from kubeml.sdk.dataset import KubeDataset
    from kubeml.stores.interfaces import ShardSource, Split

PIECE_CHUNKS = 2 * WINDOW_CHUNKS

Ranges = tuple[tuple[int, int], ...]
Piece = tuple[np.ndarray, np.ndarray, np.ndarray]  # features, labels, the order's positions


def shard_samples(ranges: Ranges) -> np.ndarray:
    """The global sample indices of a shard given as sorted ranges, concatenated."""
    if not ranges:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges])


def cut_pieces(
    samples: np.ndarray, batch_size: int, chunk_samples: int, cap: int = PIECE_CHUNKS
) -> list[tuple[int, int]]:
    """(start, stop) positions of `samples` (an order): runs of whole batches, each
    touching at most `cap` chunks (a single batch may touch more); one piece when the
    chunk size is unknown (0)."""
    if chunk_samples <= 0 or len(samples) == 0:
        return [(0, len(samples))]
    chunk_ids = samples // chunk_samples
    if len(np.unique(chunk_ids)) <= cap:  # a small split, or a short lane: one piece
        return [(0, len(samples))]
    pieces, start, seen = [], 0, set[int]()
    for b in range(0, len(samples), batch_size):
        batch = set(np.unique(chunk_ids[b : b + batch_size]).tolist())
        if seen and len(seen | batch) > cap:
            pieces.append((start, b))
            start, seen = b, set()
        seen |= batch
    pieces.append((start, len(samples)))
    return pieces


def piece_ranges(samples: np.ndarray, chunk_samples: int) -> tuple[Ranges, np.ndarray]:
    """What to read for `samples` (global indices, any order) and where each lands.

    One range per touched chunk, from its first to its last sample wanted (merged where
    they meet), so a piece that covers its chunks reads them whole; returns the ranges and
    each sample's position in their concatenation.
    """
    if len(samples) == 0:
        return (), np.empty(0, dtype=np.int64)
    ordered = np.sort(samples)
    if chunk_samples > 0:
        ids = ordered // chunk_samples
        cut = np.flatnonzero(np.diff(ids)) + 1
    else:
        cut = np.flatnonzero(np.diff(ordered) != 1) + 1
    firsts = ordered[np.concatenate([[0], cut])]
    lasts = ordered[np.concatenate([cut - 1, [len(ordered) - 1]])] + 1
    ranges: list[tuple[int, int]] = []
    for a, b in zip(firsts.tolist(), lasts.tolist(), strict=True):
        if ranges and ranges[-1][1] == a:
            ranges[-1] = (ranges[-1][0], b)
        else:
            ranges.append((a, b))
    starts = np.array([a for a, _ in ranges], dtype=np.int64)
    before = np.cumsum([0] + [b - a for a, b in ranges[:-1]])
    at = np.searchsorted(starts, samples, side="right") - 1
    return tuple(ranges), before[at] + (samples - starts[at])


class ShardFeed:
    """The batches of one invocation's shard, in its order, read a piece at a time.

    `order` holds positions in the shard (the concatenation of `ranges`), as the job
    sends them; the batches are exactly those of the whole shard in that order.
    """

    def __init__(
        self,
        source: ShardSource,
        dataset: KubeDataset,
        split: Split,
        ranges: Ranges,
        order: np.ndarray,
        batch_size: int,
        chunk_samples: int,
    ) -> None:
        self.source, self.dataset, self.split = source, dataset, split
        self.batch_size, self.chunk_samples = batch_size, chunk_samples
        self.samples = shard_samples(ranges)[order] if len(order) else np.empty(0, np.int64)
        self.pieces = cut_pieces(self.samples, batch_size, chunk_samples)
        self._whole = (ranges, order)  # one piece: the shard itself, read as today
        self._ahead: Future[Any] | None = None
        self._pool: ThreadPoolExecutor | None = None
        x, y, self._first = self._read(0)  # the dataset holds samples before any hook runs
        self._load(x, y)

    def __len__(self) -> int:
        return -(-len(self.samples) // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        batched = None
        for index in range(len(self.pieces)):
            local = self._first
            if index > 0:
                x, y, local = self._next(index)
                self._load(x, y)
            if index + 1 < len(self.pieces):
                self._read_ahead(index + 1)
            reader = BatchReader(self.dataset, self.batch_size, local)
            if batched is not None:
                reader.batched = batched  # probed once per invocation, not per piece
            yield from reader
            batched = reader.batched

    def close(self) -> None:
        """Stop reading ahead (an invocation that stops before its shard's end)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._ahead = None

    def _read(self, index: int) -> Piece:
        start, stop = self.pieces[index]
        if len(self.pieces) == 1:
            ranges, local = self._whole
        else:
            ranges, local = piece_ranges(self.samples[start:stop], self.chunk_samples)
        x, y = self.source.read(self.dataset.dataset, self.split, ranges)
        return x, y, local

    def _load(self, x: np.ndarray, y: np.ndarray) -> None:
        self.dataset.load_shard(x, y, training=self.split == "train")

    def _read_ahead(self, index: int) -> None:
        if not self.source.prefetches:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="kubeml-read-ahead")
        self._ahead = self._pool.submit(self._read, index)

    def _next(self, index: int) -> Piece:
        ahead, self._ahead = self._ahead, None
        return ahead.result() if ahead is not None else self._read(index)
