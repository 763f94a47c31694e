"""The user's hooks as the runtime calls them, and the device a function trains on."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from kubeml.errors import DeviceError, FunctionError

if TYPE_CHECKING:
    from kubeml.sdk.model import KubeModel


def resolve_device(gpu: bool, func_id: int) -> torch.device:
    """`cuda:(func_id % device_count)` for `gpu=True`; never a silent CPU fallback."""
    if not gpu:
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceError(
            f"gpu=True but no CUDA device is visible to function {func_id} "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
            "run on a machine with a GPU or pass gpu=False"
        )
    return torch.device(f"cuda:{func_id % count}")


def call_init(model: KubeModel) -> None:
    """The user's `init(network)`, or the 2021 library's `init(self)`."""
    if positional_count(model.init) == 0:
        model.init()
    else:
        model.init(model.network)


def positional_count(hook: Callable[..., Any]) -> int:
    """How many positional arguments a bound hook names (`*args` counts as one: the
    SDK's defaults take the seed's form)."""
    params = inspect.signature(hook).parameters.values()
    named = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    return named or int(any(p.kind is p.VAR_POSITIONAL for p in params))


def hook_arity(hook: Callable[..., Any], name: str) -> int:
    """2 for `(batch, batch_index)`, 3 for `(x, y, batch_index)` (the seed's form)."""
    count = positional_count(hook)
    if count not in (2, 3):
        raise FunctionError(
            f"{name}() must take (x, y, batch_index) or (batch, batch_index), not {count} arguments"
        )
    return count


def step_fn(hook: Callable[..., Any], name: str) -> Callable[[Any, int], Any]:
    """The user's train/validate hook as `step(batch, batch_index)`, whatever its form."""
    if hook_arity(hook, name) == 3:
        return lambda batch, index: hook(batch[0], batch[1], index)
    return hook
