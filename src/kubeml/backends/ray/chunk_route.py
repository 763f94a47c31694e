"""Datasets on a Ray cluster: cut into chunks that live on the nodes, read by range.

No process holds a whole split. A split is read in its stored chunks (`kubeml.stores.
chunks`: about 4 MiB each; a home written before chunks is cut the same way); chunk `c`
has a *home*, the node server `servers[c % len(servers)]` (the shard
servers, one per node), which keeps it in its node's object store once it was asked for
it (Ray spills to disk what its memory cannot hold). A function reads the chunks its
ranges touch from their homes over the workers' links; a chunk no home holds yet (the
first epoch, a home replaced) it asks the control plane for, which reads it from the
home folder and answers by value, and hands it to its home. From the second epoch on the
control plane's link carries no dataset bytes: it read every chunk once.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayError

from kubeml.stores.sources import SourceSplit

ChunkKey = tuple[str, str, str, int]  # (dataset, its version, split, chunk)
Arrays = tuple[np.ndarray, np.ndarray]
LOCAL_CHUNKS = 4  # a function keeps its last few chunks (consecutive pieces share them)


@dataclass(frozen=True)
class WantChunkRoute:
    name: str
    split: str


@dataclass(frozen=True)
class WantChunk:
    """A chunk's samples, by value (its home does not hold it)."""

    name: str
    split: str
    version: str
    chunk: int


@dataclass(frozen=True)
class ChunkRoute:
    """Where a split's chunks live: the answer to `WantChunkRoute`."""

    version: str  # changes when the dataset is deleted and created again
    samples: int  # the split's
    chunk_samples: int
    servers: tuple[Any, ...]  # chunk c's home is servers[c % len(servers)]

    def chunks(self, ranges: Sequence[tuple[int, int]]) -> list[int]:
        """The chunks that `ranges` touch, in order."""
        touched: set[int] = set()
        for a, b in ranges:
            if b > a:
                touched.update(range(a // self.chunk_samples, (b - 1) // self.chunk_samples + 1))
        return sorted(touched)

    def bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_samples
        return start, min(start + self.chunk_samples, self.samples)


class ChunkReader:
    """A function's side: `read(name, split, ranges)` from the chunks' homes."""

    def __init__(self, ask: Callable[[Any], Any]) -> None:
        self._ask = ask
        self._local: OrderedDict[ChunkKey, Arrays] = OrderedDict()

    def forget(self) -> None:
        self._local.clear()

    def read(self, name: str, split: str, ranges: Sequence[tuple[int, int]]) -> Arrays:
        route: ChunkRoute | SourceSplit = self._ask(WantChunkRoute(name, split))
        if isinstance(route, SourceSplit):  # registered: read where it is, not via the homes
            return route.read(ranges)
        chunks = route.chunks(ranges)
        if not chunks:  # nothing to read: empty arrays of the split's shapes and dtypes
            empty: Arrays = self._ask(WantChunk(name, split, route.version, -1))
            return empty
        arrays = self._fetch(name, split, route, chunks)
        xs, ys = [], []
        for a, b in ranges:
            pos = a
            while pos < b:
                chunk = pos // route.chunk_samples
                start, stop = route.bounds(chunk)
                end = min(b, stop)
                x, y = arrays[chunk]
                xs.append(x[pos - start : end - start])
                ys.append(y[pos - start : end - start])
                pos = end
        return np.concatenate(xs), np.concatenate(ys)

    def _fetch(
        self, name: str, split: str, route: ChunkRoute, chunks: list[int]
    ) -> dict[int, Arrays]:
        out: dict[int, Arrays] = {}
        wanted = []
        for chunk in chunks:
            key = (name, route.version, split, chunk)
            if key in self._local:
                self._local.move_to_end(key)
                out[chunk] = self._local[key]
            else:
                wanted.append(chunk)
        homes = [route.servers[c % len(route.servers)] for c in wanted]
        try:
            keys = [(name, route.version, split, c) for c in wanted]
            held = ray.get([h.chunk.remote(k) for h, k in zip(homes, keys, strict=True)])
        except RayError:
            held = [None] * len(wanted)  # a home lost: the control plane has every chunk
        for home, chunk, arrays in zip(homes, wanted, held, strict=True):
            key = (name, route.version, split, chunk)
            if arrays is None:
                arrays = self._ask(WantChunk(name, split, route.version, chunk))
                with contextlib.suppress(RayError):
                    home.keep_chunk.remote(key, *arrays)  # the next reader finds it there
            out[chunk] = arrays
            self._local[key] = arrays
            while len(self._local) > LOCAL_CHUNKS:
                self._local.popitem(last=False)
        return out


class ChunkCache:
    """A node server's side: the chunks whose home it is, newest last, within a budget."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._held: OrderedDict[ChunkKey, Arrays] = OrderedDict()
        self.bytes = 0

    def get(self, key: ChunkKey) -> Arrays | None:
        arrays = self._held.get(key)
        if arrays is not None:
            self._held.move_to_end(key)
        return arrays

    def keep(self, key: ChunkKey, x: np.ndarray, y: np.ndarray) -> None:
        if key in self._held:
            return
        self._held[key] = (x, y)
        self.bytes += x.nbytes + y.nbytes
        while self.bytes > self.budget_bytes and len(self._held) > 1:
            _, (ox, oy) = self._held.popitem(last=False)
            self.bytes -= ox.nbytes + oy.nbytes

    def drop(self, name: str) -> None:
        for key in [k for k in self._held if k[0] == name]:
            x, y = self._held.pop(key)
            self.bytes -= x.nbytes + y.nbytes
