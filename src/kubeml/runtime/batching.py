"""Turning a shard into device batches through the user's `__getitem__`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import default_collate

if TYPE_CHECKING:
    from kubeml.sdk.dataset import KubeDataset


def _as_tensors(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray | np.generic):
        return torch.as_tensor(value)
    if isinstance(value, tuple | list):
        return type(value)(_as_tensors(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_tensors(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return False


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(v, device) for v in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def batch_length(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, tuple | list | dict):
        first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
        return batch_length(first)
    return 1


class BatchReader:
    """Yields collated batches of `dataset` in `order`.

    Calling `__getitem__` once per sample costs a few microseconds each; calling it once
    with an index array costs one numpy gather. The first batch is built both ways and the
    batched path is kept only if the two agree exactly (so random augmentations, or code
    that only accepts integers, keep the per-sample path).
    """

    def __init__(self, dataset: KubeDataset, batch_size: int, order: np.ndarray) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.order = order
        self.batched = dataset.batched_getitem

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, len(self.order), self.batch_size):
            yield self._fetch(self.order[start : start + self.batch_size])

    def _fetch(self, idx: np.ndarray) -> Any:
        if self.batched:
            return _as_tensors(self.dataset[idx])
        per_sample = default_collate([self.dataset[int(i)] for i in idx])
        if self.batched is None:
            self.batched = self._probe(idx, per_sample)
        return per_sample

    def _probe(self, idx: np.ndarray, expected: Any) -> bool:
        try:
            return _same(_as_tensors(self.dataset[idx]), expected)
        except Exception:
            return False
