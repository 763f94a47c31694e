"""Files written whole or not at all, and the error that says which file failed and why.

Every file kubeml keeps (checkpoints, models, function code, a function's kept state) is
written to a temporary file beside it and renamed over it, so a full disk or a crash
leaves the old file or the new one, never half of one, and never the temporary file.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from kubeml.errors import StorageError

_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_error(what: str, path: Path | str, exc: BaseException, then: str = "") -> StorageError:
    """`what` failed at `path`, with the cause in words; a full disk says so and what to do.

    `then` is what to do once there is space (resume the task, send the upload again).
    """
    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    message = f"{what}: {path}: {cause}"
    if isinstance(exc, OSError) and exc.errno in _FULL:
        message += f"; free space on that disk{', then ' + then if then else ''}"
    return StorageError(message)


def is_full(exc: BaseException) -> bool:
    """Whether `exc` is a disk (or quota) that has no room left."""
    return isinstance(exc, OSError) and exc.errno in _FULL


def write_whole(
    path: Path,
    write: Callable[[IO[bytes]], Any],
    what: str,
    *,
    durable: bool = False,
    then: str = "",
) -> None:
    """Write `path` with `write(file)`: all of it, or nothing and the old file as it was.

    `durable` fsyncs the file and its folder, so the rename survives a power cut. A
    failure raises `StorageError` naming `path` and the cause; writers that hide the
    operating system's error (`torch.save` turns it into a RuntimeError) still report it.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    sink: _Sink | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as raw:
            sink = _Sink(raw)
            write(sink)  # type: ignore[arg-type]
            raw.flush()
            if durable:
                os.fsync(raw.fileno())
        tmp.replace(path)
        if durable:
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        cause = sink.error if sink is not None and sink.error is not None else exc
        if isinstance(cause, OSError):
            raise disk_error(what, path, cause, then) from exc
        raise


class _Sink:
    """A file that remembers the first error the operating system gave it."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise


def allocate(path: Path, nbytes: int) -> None:
    """Create `path` with `nbytes` of space behind it. A file only truncated to its size
    is sparse: on a full tmpfs, writing its pages through the memory map raises SIGBUS
    and kills the process; allocated here, a full scratch is a `StorageError` instead."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
    except OSError as exc:
        raise disk_error("cannot create a weights file of the model store", path, exc) from exc
    try:
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.ftruncate(fd, nbytes)  # a filesystem that cannot allocate ahead: as before
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise disk_error(
            "cannot create a weights file of the model store's scratch (its shared memory; "
            "KUBEML_SHM_DIR moves it)",
            path,
            exc,
            then="resume the task",
        ) from exc
    os.close(fd)
