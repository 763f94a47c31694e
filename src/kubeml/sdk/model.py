"""`KubeModel`: the user's network and its hooks; the runtime drives them."""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Protocol

import torch
from torch import nn

from kubeml.errors import InvalidFunctionError
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


class KubeModel(ABC):
    """Base class of the user's model: wraps a torch network and its dataset.

    Inside the hooks the user has `self.lr`, `self.batch_size`, `self.epoch`,
    `self.optimizer` (built by `configure_optimizers` at the start of a round),
    `self.device`, `self.logger`, `self(x)` (the forward pass), `self.parameters()`,
    `self.apply(fn)` and `self.dataset.is_training()`. The system moves batches to
    `self.device`, switches the network between train and eval mode and disables
    gradients while validating and inferring.

    `gpu=True` runs function `func_id` on `cuda:(func_id % device_count)`; with no CUDA
    device the task fails (there is no silent CPU fallback).
    """

    def __init__(self, network: nn.Module, dataset: KubeDataset, gpu: bool = False) -> None:
        self._network = network
        self.dataset = dataset
        self.gpu = gpu
        self.lr: float = 0.01
        self.batch_size: int = 64
        self.epoch: int = 0
        self.func_id: int = 0
        self.parallelism: int = 1
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

    @abstractmethod
    def infer(self, data: list[Any]) -> Any:
        """Predictions for `data` (a JSON list): a tensor, an array or a list."""

    @abstractmethod
    def init(self, model: nn.Module) -> None:
        """Initialise the network's weights (once per task)."""

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
