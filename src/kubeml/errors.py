"""The errors kubeml raises, one tree under `KubeMLError`, each with its code and HTTP status.

    KubeMLError                    500  kubeml_error        (never raised itself)
    ├── InternalError              500  internal_error      a server bug: an unexpected exception
    ├── InvalidInputError          422  invalid_input       a request field or file is wrong
    │   ├── InvalidDatasetError    422  invalid_dataset     arrays with bad shapes or dtypes
    │   ├── InvalidFunctionError   422  invalid_function    code that does not compile
    │   ├── PayloadTooLargeError   413  payload_too_large   a body over the server's limit
    │   └── InvalidInferenceInputError
    │                              422  invalid_inference_input  infer() rejected the input
    ├── NotFoundError              404  not_found           unknown function, dataset, task
    ├── ConflictError              409  conflict            in use, or still running
    │   └── AlreadyExistsError     409  already_exists      a name that is taken
    ├── CapacityError              409  capacity            parallelism above the capacity
    ├── UnauthorizedError          401  unauthorized        missing or wrong API token
    ├── MethodNotAllowedError      405  method_not_allowed  an HTTP method a route lacks
    ├── FunctionError              500  function_error      the user's code raised or hung
    │   ├── FunctionTimeoutError   500  function_timeout    no next round in time
    │   ├── FunctionExitError      500  function_exit       user code exited (SystemExit...)
    │   └── FunctionMemoryError    500  function_out_of_memory  over its memory limit
    ├── DeviceError                500  device_error        gpu=True without a usable CUDA
    ├── BackendError               503  backend_error       a worker died, a backend unusable
    ├── StorageError               500  storage_error       the dataset or model store failed
    ├── MissingDependencyError     500  missing_dependency  an optional extra is not installed
    ├── TaskFailedError            500  task_failed         a watched task ended FAILED
    └── ServerUnavailableError     503  server_unavailable  the client cannot reach the server

`code` is the wire name; defining a class without one, or with a taken one, raises at
import time. `HTTP_STATUS` is the one table from class to status: the server answers with
it and the client maps an unknown code back through it. Every error survives pickling,
so it crosses worker processes and Ray unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar

_BY_CODE: dict[str, type[KubeMLError]] = {}


class KubeMLError(Exception):
    """Base of every error kubeml raises on purpose; raise a subclass, never this one."""

    code: ClassVar[str] = "kubeml_error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("code")
        if not isinstance(code, str) or not code:
            raise TypeError(f"{cls.__qualname__} must define its own `code` string")
        taken = _BY_CODE.get(code)
        if taken is not None or code == KubeMLError.code:
            owner = (taken or KubeMLError).__qualname__
            raise TypeError(f"{cls.__qualname__}: error code {code!r} is taken by {owner}")
        _BY_CODE[code] = cls

    def __init__(self, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details  # e.g. the user's traceback

    @property
    def http_status(self) -> int:
        return status_of(type(self))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.details))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[KubeMLError], message: str, details: str | None) -> KubeMLError:
    err = cls.__new__(cls)
    KubeMLError.__init__(err, message, details=details)
    return err


class InternalError(KubeMLError):
    code = "internal_error"


class InvalidInputError(KubeMLError):
    code = "invalid_input"


class InvalidDatasetError(InvalidInputError):
    code = "invalid_dataset"


class InvalidFunctionError(InvalidInputError):
    code = "invalid_function"


class PayloadTooLargeError(InvalidInputError):
    code = "payload_too_large"


class InvalidInferenceInputError(InvalidInputError):
    code = "invalid_inference_input"


class NotFoundError(KubeMLError):
    code = "not_found"


class ConflictError(KubeMLError):
    """The request is right but clashes with the current state: in use, still running."""

    code = "conflict"


class AlreadyExistsError(ConflictError):
    code = "already_exists"


class CapacityError(KubeMLError):
    code = "capacity"


class UnauthorizedError(KubeMLError):
    code = "unauthorized"


class MethodNotAllowedError(KubeMLError):
    code = "method_not_allowed"


class FunctionError(KubeMLError):
    code = "function_error"


class FunctionTimeoutError(FunctionError):
    code = "function_timeout"


class FunctionExitError(FunctionError):
    """User code raised a `BaseException` that is not an `Exception`; its worker is replaced."""

    code = "function_exit"


class FunctionMemoryError(FunctionError):
    """A function went over its memory limit and the kernel killed its worker (the cgroup
    recorded the kill): a fault of the user's code, which would recur, so never replayed."""

    code = "function_out_of_memory"


class DeviceError(KubeMLError):
    code = "device_error"


class BackendError(KubeMLError):
    code = "backend_error"


class RoundLostError(BackendError):
    """A round could not be merged (a parameter shard was lost); the job trains it again."""

    code = "round_lost"


class StorageError(KubeMLError):
    code = "storage_error"


class DamagedRecordError(StorageError):
    """A stored record exists but does not parse (damaged, or written by another version):
    the request clashes with what is stored, so 409; deleting the record clears it."""

    code = "damaged_record"


class MissingDependencyError(KubeMLError):
    code = "missing_dependency"


class TaskFailedError(KubeMLError):
    code = "task_failed"


class ServerUnavailableError(KubeMLError):
    code = "server_unavailable"


# The one table from error class to HTTP status. Where classes share a status, the first
# one listed is what a bare status (a proxy's error page, no JSON body) maps back to.
HTTP_STATUS: dict[type[KubeMLError], int] = {
    InternalError: 500,
    InvalidInputError: 422,
    InvalidDatasetError: 422,
    InvalidFunctionError: 422,
    PayloadTooLargeError: 413,
    InvalidInferenceInputError: 422,
    NotFoundError: 404,
    ConflictError: 409,
    AlreadyExistsError: 409,
    CapacityError: 409,
    DamagedRecordError: 409,
    UnauthorizedError: 401,
    MethodNotAllowedError: 405,
    FunctionError: 500,
    FunctionTimeoutError: 500,
    FunctionExitError: 500,
    FunctionMemoryError: 500,
    DeviceError: 500,
    StorageError: 500,
    MissingDependencyError: 500,
    TaskFailedError: 500,
    ServerUnavailableError: 503,
    BackendError: 503,
    RoundLostError: 503,
    KubeMLError: 500,
}


def status_of(cls: type[KubeMLError]) -> int:
    """The HTTP status of an error class (a class defined elsewhere gets its parent's)."""
    return next(HTTP_STATUS[k] for k in cls.__mro__ if k in HTTP_STATUS)


def error_class(code: str) -> type[KubeMLError] | None:
    """Map a wire `code` back to its class; `None` for a code this version does not know."""
    return _BY_CODE.get(code)


def error_for_status(status: int) -> type[KubeMLError] | None:
    """The class a bare HTTP status maps back to; `None` for a status not in the table."""
    return next((cls for cls, s in HTTP_STATUS.items() if s == status), None)
