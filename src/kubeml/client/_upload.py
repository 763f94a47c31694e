"""The multipart parts of a dataset upload: a path becomes an open file, an array `.npy`
bytes (numpy is imported only then)."""

from __future__ import annotations

import io
import os
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from kubeml.errors import InvalidDatasetError, InvalidInputError

FIELDS = {"train_x": "traindata", "train_y": "trainlabels",
          "test_x": "testdata", "test_y": "testlabels"}  # fmt: skip
CHECK_UPLOADS_OVER = 64 * 2**20  # ask the server's limit only for uploads this large


def file_part(field: str, source: Any, stack: ExitStack) -> tuple[str, Any, str]:
    """A multipart file part: an open file for a path, .npy bytes for an array."""
    flag = FIELDS[field]
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"{flag}: no such file {str(path)!r}")
        handle: IO[bytes] = stack.enter_context(open(path, "rb"))  # noqa: SIM115 - stack closes
        return path.name, handle, "application/octet-stream"
    import numpy as np

    array = np.asarray(source)
    if array.dtype.kind not in "biuf":
        raise InvalidDatasetError(
            f"{flag}: unsupported dtype {array.dtype}; use a numeric (int, uint, float, bool) array"
        )
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return f"{field}.npy", buffer.getvalue(), "application/octet-stream"


def part_size(content: Any) -> int:
    if isinstance(content, bytes):
        return len(content)
    return os.fstat(content.fileno()).st_size
