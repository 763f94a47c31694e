"""`KubeModel`: the user's network and its hooks; the runtime drives them."""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from kubeml.errors import FunctionError, InvalidFunctionError
from kubeml.sdk.dataset import KubeDataset


class Driver(Protocol):
    """What the runtime installs while it runs a function's `main()` (see
    `kubeml.runtime.rounds`): it fills in a new model's attributes and runs the invocation
    when the model calls `start()`. The SDK knows only this shape, never the runtime."""

    def attach(self, model: KubeModel) -> None: ...

    def run(self, model: KubeModel) -> Any: ...


_driver: ContextVar[Driver | None] = ContextVar("kubeml_driver", default=None)


@contextlib.contextmanager
def driven_by(driver: Driver) -> Iterator[None]:
    """Models built and started inside this block are driven by `driver`."""
    token = _driver.set(driver)
    try:
        yield
    finally:
        _driver.reset(token)


@dataclass(frozen=True)
class KubeArgs:
    """The arguments of the running invocation, as `self.args` (the 2021 library's
    `_KubeArgs`, whose private names `_job_id`, `_N`, `_K`, `_task` and `_func_id` are
    kept as aliases so code written for it reads them unchanged)."""

    job_id: str = ""
    task: str = "init"  # "init", "train", "val" or "infer", the 2021 names
    func_id: int = 0
    parallelism: int = 1  # N
    k: int = -1  # local steps per round; -1: once per epoch
    lr: float = 0.01
    batch_size: int = 64
    epoch: int = 0

    @property
    def _job_id(self) -> str:
        return self.job_id

    @property
    def _task(self) -> str:
        return self.task

    @property
    def _func_id(self) -> int:
        return self.func_id

    @property
    def _N(self) -> int:
        return self.parallelism

    @property
    def _K(self) -> int:
        return self.k


class KubeModel(ABC):
    """Base class of the user's model: wraps a torch network and its dataset.

    Inside the hooks the user has `self.lr`, `self.batch_size`, `self.epoch` (from 1, as
    the history numbers epochs; 0 in `init` and `infer`),
    `self.optimizer` (built by `configure_optimizers` at the start of a round),
    `self.device`, `self.logger`, `self(x)` (the forward pass), `self.parameters()`,
    `self.apply(fn)` and `self.dataset.is_training()`; and, as the 2021 library offered
    them, `self.task` ("init", "train", "val" or "infer"), `self.args` (a `KubeArgs`)
    and `self.platform` ("gpu" or "cpu"). The system moves batches to `self.device`,
    switches the network between train and eval mode and disables gradients while
    validating and inferring.

    The hooks may take the seed's or the 2021 library's arguments: `init(self, model)`
    or `init(self)`, `train`/`validate` as `(self, x, y, batch_index)` or
    `(self, batch, batch_index)`, `infer(self, data)` or `infer(self, network, data)`.
    `init` may be left out (the network keeps torch's initialisation), and so may `infer`
    (inference then fails with a message saying so).

    `gpu=True` runs function `func_id` on `cuda:(func_id % device_count)`; with no CUDA
    device the task fails (there is no silent CPU fallback).
    """

    def __init__(self, network: nn.Module, dataset: KubeDataset, gpu: bool = False) -> None:
        self._network = network
        self.dataset = dataset
        self.gpu = gpu
        self.platform = "gpu" if gpu else "cpu"
        self.lr: float = 0.01
        self.batch_size: int = 64
        self.epoch: int = 0
        self.func_id: int = 0
        self.parallelism: int = 1
        self.task: str = "init"
        self.args = KubeArgs()
        self.optimizer: torch.optim.Optimizer | None = None
        self.logger: logging.Logger = logging.getLogger("kubeml.function")
        self.device = torch.device("cpu")
        driver = _driver.get()
        if driver is not None:
            driver.attach(self)

    # -- the user's hooks -----------------------------------------------------------------
    @abstractmethod
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Build the optimizer; called at the start of every round (or once per epoch)."""

    @abstractmethod
    def train(self, *args: Any) -> float:
        """One training step on a batch; returns the loss."""

    @abstractmethod
    def validate(self, *args: Any) -> tuple[float, float]:
        """Score one test batch; returns (accuracy in percent, loss)."""

    def infer(self, *args: Any) -> Any:
        """Predictions for `data` (a JSON list): a tensor, an array or a list. Takes
        `(data)` or, as the 2021 library called it, `(network, data)`."""
        raise FunctionError(
            f"{type(self).__name__} defines no infer(): add `def infer(self, data)` returning "
            "the predictions (a tensor, an array or a list) to the function's model class",
            details="for example:\n    def infer(self, data):\n"
            "        return self(torch.tensor(data, dtype=torch.float32)).argmax(dim=1)",
        )

    def init(self, *args: Any) -> None:
        """Initialise the network's weights (once per task). Takes `(model)` (the network)
        or, as the 2021 library called it, no argument; left out, the network keeps
        torch's default initialisation."""
        return None  # optional, as in the 2021 library: not an abstract method

    # -- what the user can call -----------------------------------------------------------
    @property
    def network(self) -> nn.Module:
        return self._network

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._network(*args, **kwargs)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return self._network.parameters(recurse)

    def apply(self, fn: Callable[[nn.Module], None]) -> KubeModel:
        self._network.apply(fn)
        return self

    def start(self) -> Any:
        """Hand this model to kubeml, which runs the invocation it was started for (init,
        an epoch of training, validation or inference) and returns its result."""
        driver = _driver.get()
        if driver is None:
            raise InvalidFunctionError(
                "KubeModel.start() runs only inside a kubeml invocation: deploy this file "
                "with `kubeml function create --name NAME --code FILE` and start it with "
                "`kubeml train`"
            )
        return driver.run(self)
