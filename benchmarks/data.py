"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (no downloads).

The arrays are written once per run as `.npy` files, so baseline processes memory-map the
same bytes kubeml's dataset store holds instead of each re-reading the gzip files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from examples.data import load_fashion_mnist as read_fashion_mnist

FIELDS = ("train_x", "train_y", "test_x", "test_y")


@dataclass(frozen=True)
class Arrays:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in FIELDS:
            np.save(folder / f"{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, folder: Path) -> Arrays:
        return cls(*(np.load(folder / f"{name}.npy", mmap_mode="r") for name in FIELDS))


def load_fashion_mnist(train_size: int | None = None, test_size: int | None = None) -> Arrays:
    """The real 60,000/10,000 set, optionally cut to its first `train_size`/`test_size`."""
    arrays = read_fashion_mnist()  # the examples' reader: one parser of the idx format
    for split, size in (("train", train_size), ("test", test_size)):
        if size is not None:
            arrays[f"{split}_x"] = arrays[f"{split}_x"][:size]
            arrays[f"{split}_y"] = arrays[f"{split}_y"][:size]
    return Arrays(**{k: np.ascontiguousarray(v) for k, v in arrays.items()})
