"""The workloads' data, from files installed on this machine (no downloads): Fashion-MNIST
from the Debian package `dataset-fashion-mnist`, and Python source text from the standard
library of the interpreter that runs the harness.

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


# The standard-library modules whose source text the character model reads, in this order.
STDLIB_MODULES = (
    "argparse", "ast", "dataclasses", "inspect", "pathlib", "subprocess", "tarfile", "typing",
)  # fmt: skip
CONTEXT = 32  # characters a sample holds; its label is the character that follows
VOCAB = 97  # 0: any other character, 1-95: printable ASCII (32-126), 96: newline


def encode(text: str) -> np.ndarray:
    """Characters to classes (uint8): printable ASCII, newline, and 0 for the rest."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    out = np.where((codes >= 32) & (codes <= 126), codes - 31, 0)
    return np.where(codes == 10, VOCAB - 1, out).astype(np.uint8)


def load_stdlib_chars(
    train_size: int = 40_000, test_size: int = 8_000, held_out: float = 0.1
) -> Arrays:
    """Next-character samples from `STDLIB_MODULES`' source: the last `held_out` of each
    file is the test text, the rest the training text; `train_size`/`test_size` windows of
    `CONTEXT` characters start at offsets drawn without replacement (seeded: the same
    arrays on every run of one Python version)."""
    import importlib.util

    train, test = [], []
    for name in STDLIB_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        codes = encode(Path(spec.origin).read_text(encoding="utf-8"))
        cut = round(len(codes) * (1 - held_out))
        train.append(codes[:cut])
        test.append(codes[cut:])
    rng = np.random.default_rng(0)
    out = {}
    for split, parts, size in (("train", train, train_size), ("test", test, test_size)):
        text = np.concatenate(parts)
        starts = rng.choice(len(text) - CONTEXT, size=size, replace=False)
        windows = starts[:, None] + np.arange(CONTEXT + 1)
        out[f"{split}_x"] = np.ascontiguousarray(text[windows[:, :-1]])
        out[f"{split}_y"] = np.ascontiguousarray(text[windows[:, -1]])
    return Arrays(**out)
