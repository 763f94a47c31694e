"""`KubeModel`: the user's network, its hooks, and the loop the system runs around them."""

from __future__ import annotations

import inspect
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from kubeml.errors import DeviceError, FunctionError
from kubeml.runtime.invocation import (
    InvocationContext,
    InvocationResult,
    Mode,
    current_context,
    peek_context,
)
from kubeml.runtime.seeds import derive_seed
from kubeml.runtime.sync import RoundReport
from kubeml.sdk.batching import BatchReader, batch_length, to_device
from kubeml.sdk.dataset import KubeDataset


def _hook_arity(hook: Callable[..., Any], name: str) -> int:
    """2 for `(batch, batch_index)`, 3 for `(x, y, batch_index)` (the seed's form)."""
    params = [
        p
        for p in inspect.signature(hook).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) not in (2, 3):
        raise FunctionError(
            f"{name}() must take (x, y, batch_index) or (batch, batch_index), "
            f"not {len(params)} arguments"
        )
    return len(params)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


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
        ctx = peek_context()
        inv = ctx.invocation if ctx else None
        self.lr: float = inv.lr if inv else 0.01
        self.batch_size: int = inv.batch_size if inv else 64
        self.epoch: int = inv.epoch if inv else 0
        self.func_id: int = inv.func_id if inv else 0
        self.parallelism: int = inv.parallelism if inv else 1
        self.optimizer: torch.optim.Optimizer | None = None
        self.logger: logging.Logger = ctx.logger if ctx else logging.getLogger("kubeml.function")
        self.device = torch.device("cpu")

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

    # -- the system's side ------------------------------------------------------------------
    def start(self) -> InvocationResult:
        """Run this invocation (init, an epoch of training, validation or inference)."""
        ctx = current_context()
        self.device = self._resolve_device(ctx.invocation.func_id)
        self._network.to(self.device)
        run = {
            Mode.INIT: self._run_init,
            Mode.TRAIN: self._run_train,
            Mode.VALIDATE: self._run_validate,
            Mode.INFER: self._run_infer,
        }[ctx.invocation.mode]
        ctx.result = run(ctx)
        return ctx.result

    def _resolve_device(self, func_id: int) -> torch.device:
        if not self.gpu:
            return torch.device("cpu")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(
                f"gpu=True but no CUDA device is visible to function {func_id} "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                "run on a machine with a GPU or pass gpu=False"
            )
        return torch.device(f"cuda:{func_id % count}")

    def _run_init(self, ctx: InvocationContext) -> InvocationResult:
        self.init(self._network)
        ctx.models.write_reference(ctx.invocation.task_id, self._network.state_dict())
        return InvocationResult(ctx.invocation.func_id, Mode.INIT)

    def _run_train(self, ctx: InvocationContext) -> InvocationResult:
        inv, models = ctx.invocation, ctx.models
        if ctx.sync is None:
            raise FunctionError("a train invocation needs a sync channel")
        train_step = self._step_fn(self.train, "train")
        state = self._network.state_dict()
        rng = np.random.default_rng(derive_seed(inv.seed, inv.epoch, inv.func_id, "order"))
        batches = BatchReader(self.dataset, self.batch_size, rng.permutation(len(self.dataset)))
        n_batches = len(batches)
        k = inv.k if inv.k > 0 else max(1, n_batches)
        it = iter(batches)
        self._network.train()
        batch_index, round_index, total_loss, total_samples = 0, 0, 0.0, 0
        while True:
            models.load_reference_into(inv.task_id, state)
            if self.optimizer is None or inv.optimizer_state == "reset":
                self.optimizer = self.configure_optimizers()
            loss_sum, samples, start_index = 0.0, 0, batch_index
            while batch_index < n_batches and batch_index - start_index < k:
                batch = to_device(next(it), self.device)
                loss = float(train_step(batch, batch_index))
                if not math.isfinite(loss):
                    raise FunctionError(
                        f"train() returned loss {loss} at epoch {inv.epoch}, batch "
                        f"{batch_index} (func_id {inv.func_id}); lower the learning rate or "
                        "check the data"
                    )
                loss_sum += loss
                samples += batch_length(batch)
                batch_index += 1
            final = batch_index >= n_batches
            handle = models.publish(inv.task_id, inv.func_id, state)
            report = RoundReport(
                inv.task_id,
                inv.func_id,
                round_index,
                samples,
                loss_sum,
                batch_index - start_index,
                final,
                handle,
            )
            release = ctx.sync.publish(report)
            total_loss += loss_sum
            total_samples += samples
            round_index += 1
            if final or not release.proceed:
                break
        return InvocationResult(
            inv.func_id,
            Mode.TRAIN,
            samples=total_samples,
            loss=total_loss / batch_index if batch_index else None,
            rounds=round_index,
        )

    def _run_validate(self, ctx: InvocationContext) -> InvocationResult:
        inv = ctx.invocation
        validate_step = self._step_fn(self.validate, "validate")
        ctx.models.load_reference_into(inv.task_id, self._network.state_dict())
        batches = BatchReader(self.dataset, self.batch_size, np.arange(len(self.dataset)))
        self._network.eval()
        acc_sum = loss_sum = 0.0
        samples = 0
        with torch.no_grad():
            for batch_index, batch in enumerate(batches):
                batch = to_device(batch, self.device)
                accuracy, loss = validate_step(batch, batch_index)
                n = batch_length(batch)
                acc_sum += float(accuracy) * n
                loss_sum += float(loss) * n
                samples += n
        return InvocationResult(
            inv.func_id,
            Mode.VALIDATE,
            samples=samples,
            loss=loss_sum / samples if samples else None,
            accuracy=acc_sum / samples if samples else None,
        )

    def _run_infer(self, ctx: InvocationContext) -> InvocationResult:
        inv = ctx.invocation
        self._network.load_state_dict(ctx.models.load_final(inv.task_id))
        self._network.eval()
        with torch.no_grad():
            output = self.infer(list(inv.infer_data or []))
        return InvocationResult(inv.func_id, Mode.INFER, output=_jsonable(output))

    def _step_fn(self, hook: Callable[..., Any], name: str) -> Callable[[Any, int], Any]:
        if _hook_arity(hook, name) == 3:
            return lambda batch, index: hook(batch[0], batch[1], index)
        return hook
