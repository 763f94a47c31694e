"""The errors kubeml raises, one tree under `KubeMLError`.

    KubeMLError
    ├── InvalidInputError          422  a request field or an uploaded file is wrong
    │   ├── InvalidDatasetError    422  arrays with bad shapes, dtypes, lengths, or pickle
    │   ├── InvalidFunctionError   422  function code that does not compile or has no main()
    │   ├── PayloadTooLargeError   413  an upload or request body over the server's limit
    │   └── InvalidInferenceInputError 422  the function's infer() rejected the input
    ├── NotFoundError              404  unknown function, dataset, task or model
    ├── AlreadyExistsError         409  a name that is taken
    ├── UnauthorizedError          401  missing or wrong API token
    ├── CapacityError              409  parallelism larger than the backend can ever run
    ├── FunctionError              500  the user's code raised, hung or returned NaN
    │   ├── FunctionTimeoutError   500  a function did not reach the next round in time
    │   └── FunctionExitError      500  user code exited (SystemExit, KeyboardInterrupt...)
    ├── DeviceError                500  gpu=True without a usable CUDA device
    ├── BackendError               503  a worker died or a backend is unusable
    ├── StorageError               500  the dataset or model store failed
    ├── MissingDependencyError     500  an optional extra (ray) is not installed
    └── ServerUnavailableError     503  the client could not reach the control plane

Every class has a stable `code` string (used on the wire) and an HTTP status. All of them
survive pickling, so they cross worker processes and Ray unchanged.
"""

from __future__ import annotations

from typing import Any


class KubeMLError(Exception):
    """Base of every error kubeml raises on purpose."""

    code = "kubeml_error"
    http_status = 500

    def __init__(self, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details  # e.g. the user's traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.details))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[KubeMLError], message: str, details: str | None) -> KubeMLError:
    err = cls.__new__(cls)
    KubeMLError.__init__(err, message, details=details)
    return err


class InvalidInputError(KubeMLError):
    code = "invalid_input"
    http_status = 422


class InvalidDatasetError(InvalidInputError):
    code = "invalid_dataset"


class InvalidFunctionError(InvalidInputError):
    code = "invalid_function"


class PayloadTooLargeError(InvalidInputError):
    code = "payload_too_large"
    http_status = 413


class InvalidInferenceInputError(InvalidInputError):
    code = "invalid_inference_input"


class NotFoundError(KubeMLError):
    code = "not_found"
    http_status = 404


class AlreadyExistsError(KubeMLError):
    code = "already_exists"
    http_status = 409


class UnauthorizedError(KubeMLError):
    code = "unauthorized"
    http_status = 401


class CapacityError(KubeMLError):
    code = "capacity"
    http_status = 409


class FunctionError(KubeMLError):
    code = "function_error"
    http_status = 500


class FunctionTimeoutError(FunctionError):
    code = "function_timeout"


class FunctionExitError(FunctionError):
    """User code raised a `BaseException` that is not an `Exception`; its worker is replaced."""

    code = "function_exit"


class DeviceError(KubeMLError):
    code = "device_error"
    http_status = 500


class BackendError(KubeMLError):
    code = "backend_error"
    http_status = 503


class StorageError(KubeMLError):
    code = "storage_error"
    http_status = 500


class MissingDependencyError(KubeMLError):
    code = "missing_dependency"
    http_status = 500


class ServerUnavailableError(KubeMLError):
    code = "server_unavailable"
    http_status = 503


def _all_errors() -> dict[str, type[KubeMLError]]:
    found: dict[str, type[KubeMLError]] = {}
    stack: list[type[KubeMLError]] = [KubeMLError]
    while stack:
        cls = stack.pop()
        found[cls.code] = cls
        stack.extend(cls.__subclasses__())
    return found


def error_class(code: str) -> type[KubeMLError]:
    """Map a wire `code` back to its class (unknown codes give `KubeMLError`)."""
    return _all_errors().get(code, KubeMLError)
