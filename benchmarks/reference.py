"""The reference workload shared by every row: LeNet-5, its init, data normalisation, loop.

The kubeml rows deploy `examples/lenet_fashion.py`; `check_function_matches` proves at the
start of a run that it builds the same network, initialises it the same way and normalises
the data the same way as the baselines below, so every row trains the same thing.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
FUNCTION_FILE = ROOT / "examples" / "lenet_fashion.py"
MEAN, STD = 0.2860, 0.3530  # of the Fashion-MNIST training images
MOMENTUM, WEIGHT_DECAY = 0.9, 1e-4


class LeNet(nn.Module):
    """LeNet-5 for 28x28 grey images (padding 2 on the first convolution)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform weights, biases 0.01 (what the kubeml function's `init` does)."""
    if isinstance(module, nn.Conv2d | nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.constant_(module.bias, 0.01)


def build_model(seed: int) -> LeNet:
    torch.manual_seed(seed)
    model = LeNet()
    model.apply(init_weights)
    return model


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 images (B, 28, 28) -> float32 (B, 1, 28, 28), the function's `__getitem__` maths."""
    x = (images.astype(np.float32) / 255.0 - MEAN) / STD
    return x[..., None, :, :]


@dataclass
class Split:
    """One split as uint8 images and int64 labels (normalised per batch, like the function)."""

    x: np.ndarray
    y: np.ndarray

    def batch(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(normalise(self.x[index])), torch.from_numpy(
            self.y[index].astype(np.int64)
        )

    def __len__(self) -> int:
        return len(self.x)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """A full sample-level permutation per epoch: the same shuffling quality as kubeml's
    (which shuffles 64-sample chunks, then permutes every sample inside each shard)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Split,
    order: np.ndarray,
    batch_size: int,
    after_step: Callable[[], None] | None = None,
) -> tuple[int, float]:
    """Train on `order` in batches; returns (samples, mean loss)."""
    model.train()
    samples, loss_sum, steps = 0, 0.0, 0
    for start in range(0, len(order), batch_size):
        x, y = data.batch(order[start : start + batch_size])
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        loss_sum += loss.item()
        samples += len(y)
        steps += 1
    return samples, loss_sum / max(1, steps)


def evaluate(
    model: nn.Module, data: Split, start: int, stop: int, batch_size: int
) -> tuple[int, int]:
    """(correct, count) on samples [start, stop) of `data`, in batches like kubeml's."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for first in range(start, stop, batch_size):
            x, y = data.batch(np.arange(first, min(first + batch_size, stop)))
            correct += int((model(x).argmax(1) == y).sum())
    return correct, stop - start


def even_slice(n: int, parts: int, index: int) -> tuple[int, int]:
    """Contiguous part `index` of `parts` of range(n), sizes differing by at most one."""
    return n * index // parts, n * (index + 1) // parts


def now() -> float:
    """Wall-clock seconds, comparable across processes and with kubeml's log timestamps."""
    return time.time()


def _load_function_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_bench_lenet_function", FUNCTION_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_function_matches() -> None:
    """Fail unless the deployed function file trains exactly the baselines' workload."""
    fn = _load_function_module()
    if (fn.MEAN, fn.STD) != (MEAN, STD):
        raise SystemExit(f"{FUNCTION_FILE}: normalisation differs from benchmarks/reference.py")
    ours = build_model(seed=0)
    torch.manual_seed(0)
    theirs = fn.LeNet()
    fn.KubeLeNet.init(None, theirs)  # the hook uses no instance state
    a, b = ours.state_dict(), theirs.state_dict()
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
        raise SystemExit(f"{FUNCTION_FILE}: network or init differs from benchmarks/reference.py")
    x = torch.randn(3, 1, 28, 28)
    if not torch.equal(ours(x), theirs(x)):
        raise SystemExit(f"{FUNCTION_FILE}: forward pass differs from benchmarks/reference.py")
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    probe = fn.FashionDataset.__new__(fn.FashionDataset)
    probe.data, probe.labels = images, np.array([1, 2])
    if not np.array_equal(probe[np.arange(2)][0], normalise(images)):
        raise SystemExit(f"{FUNCTION_FILE}: data normalisation differs")
    params = ours.parameters()
    optimizer = fn.KubeLeNet.configure_optimizers(_Params(params))
    group = optimizer.param_groups[0]
    if (group["momentum"], group["weight_decay"]) != (MOMENTUM, WEIGHT_DECAY):
        raise SystemExit(f"{FUNCTION_FILE}: optimizer differs (momentum, weight decay)")


class _Params:
    """Just enough of a KubeModel for `configure_optimizers` to run outside kubeml."""

    lr = 0.01

    def __init__(self, params: object) -> None:
        self._params = params

    def parameters(self) -> object:
        return self._params
