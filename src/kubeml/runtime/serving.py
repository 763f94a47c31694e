"""Trained models a warm worker keeps loaded, so repeated inference skips main() and the
file; and what `infer()` returns, as JSON."""

from __future__ import annotations

import json
import reprlib
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kubeml.errors import FunctionError, InvalidInferenceInputError
from kubeml.runtime.hooks import positional_count
from kubeml.runtime.invocation import Invocation, InvocationResult, Mode

if TYPE_CHECKING:
    from kubeml.runtime.rounds import RoundDriver
    from kubeml.sdk.model import KubeModel

# A worker serves a handful of tasks at most; each entry holds a whole network.
MAX_SERVED_MODELS = 4

ServedKey = tuple[str, str, str]  # (task id, function sha256, final-model version)


class ServedModels:
    """The `KubeModel`s of recent inference invocations, with their trained weights loaded.

    An entry is found only by the same task, function code and final-model version: a
    retrained, resumed or re-created model has another version, so it is loaded afresh and
    its stale entry dropped. Least recently used entries go first; the whole cache goes
    with the worker when it idles out.
    """

    def __init__(self, capacity: int = MAX_SERVED_MODELS) -> None:
        self.capacity = capacity
        self._models: OrderedDict[ServedKey, KubeModel] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(inv: Invocation) -> ServedKey | None:
        """None when the control plane sent no model version: nothing may be cached."""
        if not inv.model_version:
            return None
        return inv.task_id, inv.function.sha256, inv.model_version

    def get(self, inv: Invocation) -> KubeModel | None:
        key = self.key(inv)
        if key is None:
            return None
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
            return model

    def keep(self, inv: Invocation, model: KubeModel) -> None:
        key = self.key(inv)
        if key is None:
            return
        with self._lock:
            for stale in [k for k in self._models if k[0] == inv.task_id]:
                del self._models[stale]
            self._models[key] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)

    def __len__(self) -> int:
        return len(self._models)


served_models = ServedModels()  # one per worker process (or Ray actor)


def serve(driver: RoundDriver, model: KubeModel) -> InvocationResult:
    """Predictions of `model`, built and holding the trained weights already, for the
    invocation `driver` runs."""
    inv = driver.ctx.invocation
    driver.attach(model)
    model.network.eval()
    driver.hook = "infer()"
    data = list(inv.infer_data or [])
    try:
        with torch.no_grad():
            if positional_count(model.infer) >= 2:  # the 2021 library's (network, data)
                output = model.infer(model.network, data)
            else:
                output = model.infer(data)
    except FunctionError:
        raise  # the model defines no infer(): not the input's fault
    except Exception as exc:
        import traceback

        # The input is the only thing that changes between inferences of one model.
        raise InvalidInferenceInputError(
            f"the function's infer() rejected the input: {type(exc).__name__}: {exc}",
            details=traceback.format_exc(),
        ) from None
    driver.hook = "main()"
    return InvocationResult(inv.func_id, Mode.INFER, output=predictions(output))


_SHORT = reprlib.Repr()  # what an error shows of a returned value: a line, not a dump
_SHORT.maxother = _SHORT.maxstring = 80


def predictions(output: Any) -> Any:
    """What `infer()` returned, as JSON values; a clear error, naming the hook and what it
    returned, for None or anything JSON cannot hold (the answer must cross HTTP)."""
    hint = (
        "infer() must return the predictions as a tensor, a numpy array, a list, a dict "
        "or a number, holding only finite numbers, strings, booleans or None"
    )
    if output is None:
        raise FunctionError("infer() returned None: return the predictions", details=hint)
    value = jsonable(output)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        shown = _SHORT.repr(output)
        raise FunctionError(
            f"infer() returned {type(output).__name__} {shown}, which cannot become JSON: {exc}",
            details=hint,
        ) from None
    return value


def jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value
