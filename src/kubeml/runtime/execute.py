"""Run one invocation: set the context, call the user's `main()`, return its result."""

from __future__ import annotations

import contextlib
import logging
import traceback

from kubeml.errors import FunctionError, KubeMLError
from kubeml.runtime.invocation import (
    Invocation,
    InvocationContext,
    InvocationResult,
    LogSink,
    Mode,
    _current,
)
from kubeml.runtime.loader import load_function
from kubeml.runtime.seeds import derive_seed
from kubeml.runtime.sync import SyncChannel
from kubeml.stores.datasets import DatasetStore
from kubeml.stores.models import ModelStore


class SinkHandler(logging.Handler):
    """Sends log records of user code to the task log, tagged with the function id."""

    def __init__(self, sink: LogSink, source: str) -> None:
        super().__init__(logging.INFO)
        self.sink, self.source = sink, source
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a log line must never fail the invocation
            self.sink(self.source, self.format(record))


def function_logger(inv: Invocation, sink: LogSink) -> logging.Logger:
    logger = logging.getLogger(f"kubeml.function.{inv.task_id}.{inv.func_id}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(SinkHandler(sink, f"function-{inv.func_id}"))
    return logger


def execute(
    inv: Invocation,
    *,
    datasets: DatasetStore,
    models: ModelStore,
    sync: SyncChannel | None,
    log: LogSink,
) -> InvocationResult:
    """Run `inv` in this process and thread. User errors become `FunctionError`s that
    carry the user's traceback in `details`."""
    import torch

    torch.set_num_threads(max(1, inv.threads))
    # The network is built inside main(), so seeding here makes default init reproducible.
    if inv.mode is Mode.INIT:
        torch.manual_seed(inv.seed)
    else:
        torch.manual_seed(derive_seed(inv.seed, inv.epoch, inv.func_id, inv.mode.value))
    module = load_function(inv.function)
    logger = function_logger(inv, log)
    ctx = InvocationContext(inv, datasets, models, sync, logger)
    token = _current.set(ctx)
    try:
        returned = module.main()
    except KubeMLError as exc:
        if exc.details is None:
            exc.details = traceback.format_exc()
        raise
    except Exception as exc:
        raise FunctionError(
            f"function {inv.function.name!r} (func_id {inv.func_id}, {inv.mode.value}, "
            f"epoch {inv.epoch}) raised {type(exc).__name__}: {exc}",
            details=traceback.format_exc(),
        ) from None
    finally:
        _current.reset(token)
        for handler in logger.handlers:
            handler.flush()
    result = returned if isinstance(returned, InvocationResult) else ctx.result
    if result is None:
        raise FunctionError(
            f"function {inv.function.name!r}: main() never called KubeModel.start(); "
            "end main() with `return model.start()`"
        )
    return result
