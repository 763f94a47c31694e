"""Check and import deployed function files; a warm worker keeps each module it imported."""

from __future__ import annotations

import ast
import hashlib
import importlib.abc
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

from kubeml.errors import FunctionError, InvalidFunctionError
from kubeml.runtime.invocation import FunctionCode

_modules: dict[str, ModuleType] = {}
_lock = threading.Lock()


def code_sha256(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def check_source(name: str, source: str) -> None:
    """Fail early on code that cannot be a function: syntax errors, no top-level main()."""
    try:
        tree = ast.parse(source, filename=f"{name}.py")
    except SyntaxError as exc:
        raise InvalidFunctionError(
            f"function {name!r}: syntax error at line {exc.lineno}: {exc.msg}"
        ) from exc
    except (MemoryError, RecursionError) as exc:  # the parser's limits, e.g. "- - - ... 1"
        raise InvalidFunctionError(
            f"function {name!r}: too deeply nested for Python to parse ({type(exc).__name__})"
        ) from exc
    has_main = any(
        isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "main"
        for node in tree.body
    )
    if not has_main:
        raise InvalidFunctionError(
            f"function {name!r}: the file defines no top-level main(); add "
            "`def main(): return YourModel(network, dataset).start()`"
        )


def load_function(code: FunctionCode) -> ModuleType:
    """Import a function's module once per code version (the serverless warm container)."""
    with _lock:
        module = _modules.get(code.sha256)
        if module is not None:
            return module
        path = Path(code.path)
        module_name = f"kubeml_function_{code.name.replace('-', '_').replace('.', '_')}"
        module_name += f"_{code.sha256[:12]}"
        if code.source is not None:
            # Carried code is imported from memory, so a worker on another node needs no
            # file: the control plane's file under its home stays the one copy.
            carried = _CarriedSource(code.source, code.path)
            spec = importlib.util.spec_from_file_location(module_name, path, loader=carried)
        elif not path.exists():
            raise FunctionError(f"function {code.name!r}: code file {path} is not readable here")
        else:
            spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise FunctionError(f"function {code.name!r}: cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickle look modules up here
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(module_name, None)
            import traceback

            raise FunctionError(
                f"function {code.name!r} failed to import: {type(exc).__name__}: {exc}",
                details=traceback.format_exc(),
            ) from None
        if not callable(getattr(module, "main", None)):
            raise FunctionError(f"function {code.name!r} has no main()")
        _modules[code.sha256] = module
        return module


class _CarriedSource(importlib.abc.SourceLoader):
    """Imports code that came with the invocation; tracebacks still show its lines."""

    def __init__(self, source: str, path: str) -> None:
        self.source, self.path = source, path  # the control plane's file, for tracebacks

    def get_filename(self, fullname: str) -> str:
        return self.path

    def get_data(self, path: str) -> bytes:
        return self.source.encode()
