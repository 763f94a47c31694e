"""Run one invocation: install the round driver, call the user's `main()`, return its result."""

from __future__ import annotations

import contextlib
import logging
import traceback

from kubeml.errors import FunctionError, FunctionExitError, KubeMLError
from kubeml.runtime.invocation import Invocation, InvocationResult, LogSink, Mode
from kubeml.runtime.loader import load_function
from kubeml.runtime.rounds import FunctionContext, RoundDriver
from kubeml.runtime.seeds import derive_seed
from kubeml.runtime.serving import serve, served_models
from kubeml.runtime.sync import SyncChannel
from kubeml.sdk.model import driven_by
from kubeml.stores.interfaces import FunctionModels, ShardSource


class SinkHandler(logging.Handler):
    """Sends log records of user code to the task log, tagged with the function id."""

    def __init__(self, sink: LogSink, source: str) -> None:
        super().__init__(logging.INFO)
        self.sink, self.source = sink, source
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a log line must never fail the invocation
            self.sink(self.source, self.format(record))


def warm_up() -> None:
    """What a fresh worker does once, while idle, so its first invocation does not: import
    torch (~1.3 s) and build and step one optimizer, whose first use imports torch's
    compiler stack (~1.2 s; the next ones take 0.1 ms)."""
    import torch

    weight = torch.nn.Parameter(torch.zeros(1))
    torch.optim.SGD([weight], lr=0.1, momentum=0.9).step()


def set_level(logger: logging.Logger, level: int) -> None:
    """Only a change: every `setLevel` clears the cache of every logger in the process
    (torch has hundreds), 0.1 ms a call on a warm inference."""
    if logger.level != level:
        logger.setLevel(level)


def function_logger(inv: Invocation, sink: LogSink) -> logging.Logger:
    logger = logging.getLogger(f"kubeml.function.{inv.task_id}.{inv.func_id}")
    set_level(logger, logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(SinkHandler(sink, f"function-{inv.func_id}"))
    return logger


def execute(
    inv: Invocation,
    *,
    shards: ShardSource,
    models: FunctionModels,
    sync: SyncChannel | None,
    log: LogSink,
) -> InvocationResult:
    """Run `inv` in this process and thread. User errors become `FunctionError`s naming
    the function, its id and the hook, with the user's traceback in `details`; user code
    that exits (SystemExit, KeyboardInterrupt, ...) becomes a `FunctionExitError`."""
    import torch

    torch.set_num_threads(max(1, inv.threads))
    # A warm worker that served this model before skips main(): the network is built and
    # holds the trained weights (see kubeml.runtime.serving).
    served = served_models.get(inv) if inv.mode is Mode.INFER else None
    if served is None:
        # The network is built inside main(), so seeding here makes default init reproducible.
        if inv.mode is Mode.INIT or inv.rebuild_init:
            torch.manual_seed(inv.seed)
        else:
            torch.manual_seed(derive_seed(inv.seed, inv.epoch, inv.func_id, inv.mode.value))
        main = load_function(inv.function).main
    logger = function_logger(inv, log)
    driver = RoundDriver(FunctionContext(inv, shards, models, sync, logger))
    try:
        with driven_by(driver):
            if served is None:
                main()
            else:
                driver.result = serve(driver, served)
    except KubeMLError as exc:
        if exc.details is None:
            exc.details = traceback.format_exc()
        raise
    except BaseException as exc:
        where = (
            f"function {inv.function.name!r} (func_id {inv.func_id}, {inv.mode.value}, "
            f"epoch {inv.epoch}): {driver.hook}"
        )
        if isinstance(exc, Exception):
            raise FunctionError(
                f"{where} raised {type(exc).__name__}: {exc}", details=traceback.format_exc()
            ) from None
        raise FunctionExitError(
            f"{where} raised {type(exc).__name__}({exc}): user code must return, not exit "
            "its worker; the worker was replaced",
            details=traceback.format_exc(),
        ) from None
    finally:
        for handler in logger.handlers:
            handler.flush()
    if driver.result is None:
        raise FunctionError(
            f"function {inv.function.name!r}: main() never called KubeModel.start(); "
            "end main() with `return model.start()`"
        )
    return driver.result
