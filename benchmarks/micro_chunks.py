"""Micro-benchmark: a train invocation's data path through chunks vs the memory map.

What changed between the two is only how an invocation gets its samples: before chunks, it
copied its whole shard out of memory-mapped `.npy` files and batched it in its order; now
it reads pieces from chunk files (`runtime/feed.py`). Here both run on Fashion-MNIST's
60,000 images at N=1, K=-1 (the overhead micro's case), in this process, alternating
(ABBA): the read, the order and every batch gathered through a batched `__getitem__`,
without training; once with a fresh store each epoch (a new worker: nothing mapped, no
chunk's checksum checked yet) and once with one store kept (a warm worker). The figure
is the median extra time per epoch, and that as a share of a plain LeNet epoch
(`--epoch-s`).

    python -m benchmarks.micro_chunks [--pairs 10] [--epoch-s S]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


class _Images:
    """The quickstart's dataset maths on a batch of indices (normalised float32)."""

    batched_getitem = True

    def __init__(self) -> None:
        self.dataset = "fashion"
        self.data: Any = None
        self.labels: Any = None

    def load_shard(self, data: Any, labels: Any, *, training: bool) -> None:
        self.data, self.labels = data, labels

    def __getitem__(self, index: Any) -> Any:
        x = (self.data[index].astype(np.float32) / 255.0 - 0.2860) / 0.3530
        return x, self.labels[index].astype(np.int64)

    def __len__(self) -> int:
        return len(self.data)


def old_home(root: Path, arrays: dict[str, np.ndarray], name: str = "fashion") -> None:
    """A dataset as kubeml wrote it before chunks: four .npy files and info.json."""
    folder = root / name
    folder.mkdir(parents=True)
    for field, array in arrays.items():
        np.save(folder / f"{field}.npy", array)
    info = {
        "name": name, "train_size": len(arrays["train_y"]),
        "test_size": len(arrays["test_y"]), "feature_shape": list(arrays["train_x"].shape[1:]),
        "feature_dtype": str(arrays["train_x"].dtype), "label_dtype": str(arrays["train_y"].dtype),
        "created_at": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    (folder / "info.json").write_text(json.dumps(info))


def _epoch(root: Path, chunked: bool, epoch: int, kept: dict[Path, Any] | None) -> float:
    """Seconds for one N=1 invocation's data path: the old one or the feed; `kept` holds
    the stores a warm worker keeps (None: a fresh worker's)."""
    from kubeml.control.plan.chunks import epoch_orders, shard_of
    from kubeml.runtime.batching import BatchReader
    from kubeml.runtime.feed import ShardFeed
    from kubeml.stores.datasets import LocalDatasetStore

    if kept is None:
        store = LocalDatasetStore(root)
    else:
        store = kept.setdefault(root, LocalDatasetStore(root))
    info = store.get("fashion")
    chunk_samples = store.chunk_samples("fashion")
    lane = epoch_orders(info.train_size, 1, 0, epoch, chunk_samples)[0]
    ranges, order = shard_of(lane)
    dataset = _Images()
    started = time.perf_counter()
    if chunked:
        feed = ShardFeed(store, dataset, "train", ranges, np.asarray(order), 64, chunk_samples)  # type: ignore[arg-type]
        for _ in feed:
            pass
        feed.close()
    else:  # what a train invocation did before chunks
        x, y = store.read("fashion", "train", ranges)
        dataset.load_shard(x, y, training=True)
        for _ in BatchReader(dataset, 64, np.asarray(order)):  # type: ignore[arg-type]
            pass
    return time.perf_counter() - started


def measure(pairs: int) -> dict[str, Any]:
    from benchmarks.data import load_fashion_mnist
    from kubeml.stores.datasets import LocalDatasetStore

    arrays = load_fashion_mnist()
    fields = {
        "train_x": arrays.train_x, "train_y": arrays.train_y.astype(np.int64),
        "test_x": arrays.test_x, "test_y": arrays.test_y.astype(np.int64),
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kubeml-micro-chunks-") as tmp:
        old, new = Path(tmp) / "old", Path(tmp) / "new"
        old_home(old, fields)
        LocalDatasetStore(new).create("fashion", fields)
        result: dict[str, Any] = {}
        for worker in ("fresh", "warm"):
            kept: dict[Path, Any] | None = {} if worker == "warm" else None
            times: dict[bool, list[float]] = {False: [], True: []}
            for pair in range(pairs):
                for chunked in (False, True) if pair % 2 == 0 else (True, False):
                    root = new if chunked else old
                    times[chunked].append(_epoch(root, chunked, pair, kept))
            extra = [c - m for m, c in zip(times[False], times[True], strict=True)]
            result[worker] = {
                "memory_map_s": times[False],
                "chunks_s": times[True],
                "median_memory_map_s": statistics.median(times[False]),
                "median_chunks_s": statistics.median(times[True]),
                "median_extra_s": statistics.median(extra),
            }
    result["load_average"] = os.getloadavg()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro_chunks", description=__doc__)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--epoch-s", type=float, help="a plain LeNet epoch's seconds")
    args = parser.parse_args()
    result = measure(args.pairs)
    for worker in ("fresh", "warm"):
        r = result[worker]
        line = (
            f"{worker} worker, data path per N=1 epoch: memory map "
            f"{r['median_memory_map_s'] * 1e3:.1f} ms, chunks {r['median_chunks_s'] * 1e3:.1f} ms, "
            f"median extra {r['median_extra_s'] * 1e3:+.1f} ms over {args.pairs} ABBA pairs"
        )
        if args.epoch_s:
            line += f" = {r['median_extra_s'] / args.epoch_s:+.2%} of a {args.epoch_s:g} s epoch"
        print(line)
    print(f"load average {result['load_average']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
