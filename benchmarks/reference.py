"""What every row of a workload trains: the network, data maths and optimizer of its function file.

The kubeml rows deploy a function file (`benchmarks/functions/`); the baselines load the
same file and take from it the network class (its `nn.Module`), the per-batch data maths
(its `KubeDataset.__getitem__`) and the optimizer (its `KubeModel.configure_optimizers`),
so every row trains the same thing by construction. The network is built right after
`torch.manual_seed(seed)` and then given to the file's `init` hook, as kubeml's init
invocation does, so the same seed gives the same initial weights everywhere.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MethodType, ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ROOT / "benchmarks" / "functions"
FUNCTION_FILE = FUNCTIONS / "lenet_fashion_default.py"  # the reference workload's function


@dataclass(frozen=True)
class FunctionParts:
    """The classes of one function file."""

    network: type[nn.Module]
    dataset: type[Any]  # a KubeDataset subclass
    model: type[Any]  # a KubeModel subclass


@functools.cache
def load_function(path: str | Path | None = None) -> FunctionParts:
    """The network, dataset and model classes a function file defines (one of each)."""
    from kubeml import KubeDataset, KubeModel

    path = Path(path or FUNCTION_FILE)
    path = path if path.is_absolute() else ROOT / path
    spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found: dict[type, list[type]] = {nn.Module: [], KubeDataset: [], KubeModel: []}
    for value in vars(module).values():
        if isinstance(value, type) and value.__module__ == module.__name__:
            for base in found:
                if issubclass(value, base):
                    found[base].append(value)
    for base, classes in found.items():
        if len(classes) != 1:
            raise SystemExit(f"{path}: expected one {base.__name__} subclass, found {classes}")
    return FunctionParts(found[nn.Module][0], found[KubeDataset][0], found[KubeModel][0])


def build_model(seed: int, function_file: str | Path | None = None) -> nn.Module:
    """The function's network right after `torch.manual_seed(seed)`, then its `init` hook,
    in the order kubeml's init invocation runs them (`main()` builds, `init` re-initialises)."""
    torch.manual_seed(seed)
    parts = load_function(function_file)
    network = parts.network()
    init = MethodType(parts.model.init, _Params(network, 0.0))
    # As kubeml's `positional_count` (not imported: it would add kubeml's runtime to the
    # peers' start-up): the 2021 library's `init(self)` takes no network.
    kinds = {p.kind for p in inspect.signature(init).parameters.values()}
    positional = {inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD}
    if kinds & (positional | {inspect.Parameter.VAR_POSITIONAL}):
        init(network)
    else:
        init()
    return network


def make_optimizer(
    model: nn.Module, lr: float, function_file: str | Path | None = None
) -> torch.optim.Optimizer:
    """The function's own `configure_optimizers`, run outside kubeml."""
    return load_function(function_file).model.configure_optimizers(_Params(model, lr))


class _Params:
    """Just enough of a KubeModel for `configure_optimizers` and `init` to run outside
    kubeml: `lr`, and the network's own attributes (`parameters`, `apply`, ...)."""

    def __init__(self, model: nn.Module, lr: float) -> None:
        self._model, self.lr = model, lr

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@dataclass
class Split:
    """One split as stored (uint8 images, int labels), turned into batches by the
    function's own `__getitem__`, as kubeml's functions do."""

    x: np.ndarray
    y: np.ndarray
    function_file: str | Path | None = None

    def __post_init__(self) -> None:
        dataset_cls = load_function(self.function_file).dataset
        self._dataset = dataset_cls.__new__(dataset_cls)  # no kubeml context: set the arrays
        self._dataset.data, self._dataset.labels = self.x, self.y

    def batch(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._dataset[index]
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y))

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


def wait_quiet(pid: int, timeout_s: float = 60.0, every_s: float = 0.5) -> float:
    """Wait until a process and its children use under 5% of a core (a server whose
    spare worker still imports torch is not yet in the steady state a timing wants);
    the seconds waited."""
    import os

    from kubeml.procs import children, cpu_ticks

    tick = os.sysconf("SC_CLK_TCK")

    def cpu_s() -> float:
        total = 0
        for one in [pid, *children(pid)]:
            with contextlib.suppress(OSError):  # gone between the listing and the read
                total += cpu_ticks(one)
        return total / tick

    started = time.monotonic()
    before = cpu_s()
    while time.monotonic() - started < timeout_s:
        time.sleep(every_s)
        now = cpu_s()
        if now - before < 0.05 * every_s:
            break
        before = now
    return time.monotonic() - started


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (for a server the benchmark starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
