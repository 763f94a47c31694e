"""Deployed functions: the code file under the home is the one copy of each version."""

from __future__ import annotations

from pathlib import Path

from kubeml.api.schemas import FunctionInfo
from kubeml.control.records.metadata import MetadataStore
from kubeml.errors import KubeMLError
from kubeml.runtime.invocation import FunctionCode
from kubeml.runtime.loader import check_source, code_sha256
from kubeml.stores.datasets import check_name
from kubeml.stores.files import write_whole


class FunctionStore:
    """Function code as `<root>/<name>/<sha256>.py`; SQLite keeps name, hash and times.

    Every version's file stays after an update or a delete, so a finished task can still
    run inference with the code it trained with.
    """

    def __init__(self, root: Path, metadata: MetadataStore) -> None:
        self.root = root
        self.metadata = metadata
        for name, sha, code in metadata.legacy_code():
            # Homes from before this layout kept the code in SQLite as well.
            path = self._path(name, sha)
            if not path.exists():
                self._write(path, code, f"cannot move the code of function {name!r} to a file")
        metadata.clear_legacy_code()

    def put(self, name: str, code: str, *, update: bool) -> FunctionInfo:
        check_name("function", name)
        check_source(name, code)
        sha = code_sha256(code)
        path = self._path(name, sha)
        new = not path.exists()
        # Before the row, so no row ever names a missing file.
        self._write(path, code, f"cannot store the code of function {name!r}")
        try:
            return self.metadata.put_function(name, sha, update=update)
        except KubeMLError:
            if new:
                path.unlink(missing_ok=True)  # a refused create or update leaves nothing
            raise

    def get(self, name: str) -> FunctionInfo:
        return self.metadata.get_function(name)

    def list(self) -> list[FunctionInfo]:
        return self.metadata.list_functions()

    def delete(self, name: str) -> None:
        self.metadata.delete_function(name)  # code files stay: finished tasks still infer

    def code(self, name: str, sha256: str) -> FunctionCode:
        """What an invocation needs to load one version of a function."""
        return FunctionCode(name, sha256, str(self._path(name, sha256)))

    def _path(self, name: str, sha256: str) -> Path:
        return self.root / name / f"{sha256}.py"

    @staticmethod
    def _write(path: Path, code: str, what: str) -> None:
        # A reader never sees half a file; a full disk leaves no staging file behind.
        write_whole(path, lambda f: f.write(code.encode()), what, then="deploy it again")
