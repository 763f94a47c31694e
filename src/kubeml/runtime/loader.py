"""Check and import deployed function files; a warm worker keeps each module it imported."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import sys
import tempfile
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
        if code.source is not None:
            # Carried code wins, so a worker on another node never reads the control plane's
            # files; written atomically, as warm workers on one node may load it at once.
            path = Path(tempfile.gettempdir()) / "kubeml-functions" / f"{code.sha256}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
            staging.write_text(code.source)
            staging.replace(path)
        elif not path.exists():
            raise FunctionError(f"function {code.name!r}: code file {path} is not readable here")
        module_name = f"kubeml_function_{code.name.replace('-', '_').replace('.', '_')}"
        module_name += f"_{code.sha256[:12]}"
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
