"""Dataset store: named train/test arrays; functions read only the ranges they are given.

Each dataset is a folder of four `.npy` files under the kubeml home. Readers memory-map
them and copy out just their sample ranges, so N functions never each load the whole set.
A new dataset is written into a staging folder, checked there (`kubeml.stores.arrays`),
and renamed into place: a reader sees a whole, checked dataset or none.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import threading
import time
import zipfile
import zlib
from abc import abstractmethod
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kubeml.api.schemas import DatasetInfo, name_error
from kubeml.errors import (
    AlreadyExistsError,
    InvalidDatasetError,
    InvalidInputError,
    NotFoundError,
    StorageError,
)
from kubeml.stores.arrays import (
    ARRAY_FIELDS,
    MAX_HEADER_BYTES,
    NPY_MAGIC,
    ZIP_MAGIC,
    Header,
    check_contents,
    check_file_size,
    check_header,
    check_together,
    header_of_array,
    not_numpy,
    parse_header,
    read_header,
)
from kubeml.stores.files import disk_error, is_full
from kubeml.stores.interfaces import ShardSource, Split

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ARRAY_FIELDS", "DatasetStore", "LocalDatasetStore", "StagedDataset", "check_name"]

log = logging.getLogger("kubeml.datasets")

_PREFIX_BYTES = 8 + 4 + MAX_HEADER_BYTES
_COPY_BYTES = 2**20
STALE_AFTER_S = 24 * 3600.0  # no upload runs this long; a staging folder this old is litter


def check_name(kind: str, name: str) -> str:
    """Names are 1-64 characters of letters, digits, `_`, `.`, `-`, starting alphanumeric."""
    problem = name_error(kind, name)
    if problem:
        raise InvalidInputError(problem)
    return name


class DatasetStore(ShardSource):
    """Named datasets of train and test features and labels (the control plane's side)."""

    @abstractmethod
    def create(self, name: str, arrays: dict[str, np.ndarray]) -> DatasetInfo: ...

    @abstractmethod
    def get(self, name: str) -> DatasetInfo: ...

    @abstractmethod
    def list(self) -> list[DatasetInfo]: ...

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def read(
        self, name: str, split: Split, ranges: Sequence[tuple[int, int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Copy out the samples in `ranges` (start, stop) of one split, in order."""

    def stage(self) -> StagedDataset:
        """A staging folder to stream an upload into (stores that keep files locally)."""
        raise StorageError(f"{type(self).__name__} takes no streamed uploads")

    def damaged(self) -> Sequence[str]:
        """Stored datasets that cannot be read back, each with the reason."""
        return []


class StagedDataset:
    """A dataset being written: its files land in a staging folder, are checked, then published.

    Files arrive one at a time (`begin_file`, `write`..., `end_file`) or as arrays
    (`add_array`). Each `.npy` header is checked as soon as its bytes are in, against the
    headers already seen; `publish` then scans the contents and renames the folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / f".staging-{secrets.token_hex(8)}"
        self.dir.mkdir(parents=True)
        self.headers: dict[str, tuple[str, Header]] = {}
        self._pickles: dict[str, tuple[str, Path]] = {}
        self._file: IO[bytes] | None = None
        self._field = self._source = ""
        self._format: str | None = None
        self._prefix = bytearray()

    def begin_file(self, field: str, filename: str) -> None:
        if field in self.headers or field in self._pickles:
            raise InvalidDatasetError(
                f"{field}: sent twice; send each of {', '.join(ARRAY_FIELDS)} once"
            )
        named = filename and filename != f"{field}.npy"  # the client names arrays so
        self._field, self._source = field, f"{field} ({filename})" if named else field
        lower = filename.lower()
        self._format = "pkl" if lower.endswith((".pkl", ".pickle")) else None
        self._prefix = bytearray()
        self._file = open(self.dir / f"{field}.part", "wb")  # noqa: SIM115 - closed in end_file

    def write(self, data: bytes) -> None:
        """Append to the current file; refuses as soon as its header shows it cannot fit."""
        assert self._file is not None, "write() outside begin_file()/end_file()"
        self._file.write(data)
        if self._format == "pkl" or (self._format == "npy" and self._field in self.headers):
            return
        if len(self._prefix) < _PREFIX_BYTES:
            self._prefix += data[: _PREFIX_BYTES - len(self._prefix)]
        prefix = bytes(self._prefix)
        if self._format is None and len(prefix) >= len(ZIP_MAGIC):
            if prefix.startswith(ZIP_MAGIC):
                self._format = "npz"
            elif prefix.startswith(NPY_MAGIC[: len(ZIP_MAGIC)]):
                self._format = "npy"
            else:
                raise not_numpy(self._source)
        if self._format == "npy":
            header = parse_header(prefix, self._source)
            if header is not None:
                self._accept(self._field, self._source, header)

    def end_file(self) -> None:
        assert self._file is not None, "end_file() without begin_file()"
        self._file.close()
        self._file = None
        field, source = self._field, self._source
        part, path = self.dir / f"{field}.part", self.dir / f"{field}.npy"
        if self._format == "pkl":
            self._pickles[field] = (source, part)  # loaded in publish, once allow_pickle is known
            return
        if self._format == "npz":
            self._extract(part, path, field, source)
        elif self._format == "npy" and field in self.headers:
            part.rename(path)
        elif self._format == "npy":
            raise InvalidDatasetError(f"{source}: truncated .npy file (it ends inside its header)")
        else:
            raise not_numpy(source)
        check_file_size(path, source, self.headers[field][1])

    def add_array(self, field: str, array: Any, source: str = "") -> None:
        import numpy as np

        source = source or field
        try:
            header = header_of_array(array)
        except TypeError as exc:
            raise InvalidDatasetError(f"{source}: {exc}") from exc
        self._accept(field, source, header)  # before a byte is written
        np.save(self.dir / f"{field}.npy", np.ascontiguousarray(array), allow_pickle=False)

    def publish(self, name: str, *, allow_pickle: bool = False) -> DatasetInfo:
        """Check the contents, then move the dataset into place under `name`."""
        target = self.root / check_name("dataset", name)
        for field, (source, part) in self._pickles.items():
            self._unpickle(field, source, part, allow_pickle)
        missing = [field for field in ARRAY_FIELDS if field not in self.headers]
        if missing:
            raise InvalidDatasetError(
                f"{', '.join(missing)}: missing; a dataset needs all of {', '.join(ARRAY_FIELDS)}"
            )
        check_together(self.headers)
        for field in ARRAY_FIELDS:
            source, _ = self.headers[field]
            path = self.dir / f"{field}.npy"
            header = read_header(path, source)  # with the offset of the file as written
            check_file_size(path, source, header)
            check_contents(field, source, path, header)
        tx, ty, sx = (self.headers[field][1] for field in ("train_x", "train_y", "test_x"))
        info = DatasetInfo(
            name=name,
            train_size=tx.shape[0],
            test_size=sx.shape[0],
            feature_shape=list(tx.shape[1:]),
            feature_dtype=str(tx.dtype),
            label_dtype=str(ty.dtype),
            created_at=datetime.now(timezone.utc),
        )
        try:
            (self.dir / "info.json").write_text(info.model_dump_json())
            self.dir.rename(target)  # atomic: a reader sees the whole dataset or none of it
        except OSError as exc:
            if target.exists():
                raise AlreadyExistsError(
                    f"dataset {name!r} already exists; delete it first"
                ) from exc
            raise StorageError(f"cannot store dataset {name!r}: {exc}") from exc
        return info

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def _accept(self, field: str, source: str, header: Header) -> None:
        check_header(field, source, header)
        self.headers[field] = (source, header)
        check_together(self.headers)

    def _extract(self, part: Path, path: Path, field: str, source: str) -> None:
        """The one array of an `.npz`, streamed out to `path` once its header passed."""
        try:
            with zipfile.ZipFile(part) as archive:
                members = archive.namelist()
                if len(members) != 1:
                    raise InvalidDatasetError(
                        f"{source}: an .npz upload must hold exactly one array, found "
                        f"{len(members)}"
                    )
                with archive.open(members[0]) as member, open(path, "wb") as out:
                    prefix = member.read(_PREFIX_BYTES)
                    header = parse_header(prefix, source)
                    if header is None:
                        raise InvalidDatasetError(f"{source}: truncated array inside the .npz")
                    self._accept(field, source, header)
                    size = header.offset + header.data_bytes
                    free = shutil.disk_usage(self.dir).free
                    if size > free:  # a small compressed archive can unpack to any size
                        raise InvalidDatasetError(
                            f"{source}: its array unpacks to {size / 2**20:.0f} MiB, more than "
                            f"the {free / 2**20:.0f} MiB free on the server's disk"
                        )
                    out.write(prefix[:size])
                    _copy_at_most(member, out, size - min(size, len(prefix)))
        # A damaged, encrypted or exotically compressed archive fails in any of these ways.
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError,
                NotImplementedError) as exc:  # fmt: skip
            if is_full(exc):
                raise  # the disk, not the archive (the caller names the folder)
            raise InvalidDatasetError(f"{source}: damaged .npz file ({exc})") from exc
        part.unlink()

    def _unpickle(self, field: str, source: str, part: Path, allow_pickle: bool) -> None:
        import pickle

        import numpy as np

        if not allow_pickle:
            raise InvalidDatasetError(
                f"{source}: pickle files can run code when loaded; convert it to .npy, or "
                "pass --allow-pickle if you trust it"
            )
        try:
            with open(part, "rb") as file:
                array = np.asarray(pickle.load(file))
        except Exception as exc:  # a bad pickle raises anything at all
            raise InvalidDatasetError(f"{source}: cannot unpickle ({exc})") from exc
        self.add_array(field, array, source)
        part.unlink()


def _copy_at_most(source: IO[bytes], target: IO[bytes], limit: int) -> None:
    while limit > 0:
        chunk = source.read(min(_COPY_BYTES, limit))
        if not chunk:
            return
        target.write(chunk)
        limit -= len(chunk)


class LocalDatasetStore(DatasetStore):
    """Datasets as `.npy` files under one folder, memory-mapped by readers."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._maps: dict[tuple[str, str, int], Any] = {}
        self._lock = threading.Lock()
        self._reported: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"])  # type: ignore[misc]

    def _dir(self, name: str) -> Path:
        return self.root / check_name("dataset", name)

    def stage(self) -> StagedDataset:
        self._sweep()
        return StagedDataset(self.root)

    def _sweep(self) -> None:
        """Remove what a server killed mid-upload or mid-delete left behind a day ago."""
        if not self.root.exists():
            return
        cutoff = time.time() - STALE_AFTER_S
        for folder in self.root.glob(".*-*"):
            try:
                if folder.name.startswith((".staging-", ".deleting-")) and (
                    folder.stat().st_mtime < cutoff
                ):
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue

    def create(self, name: str, arrays: dict[str, np.ndarray]) -> DatasetInfo:
        if self._dir(name).exists():
            raise AlreadyExistsError(f"dataset {name!r} already exists; delete it first")
        for field in ARRAY_FIELDS:
            if arrays.get(field) is None:
                raise InvalidDatasetError(f"{field}: missing")
        staged = self.stage()
        try:
            for field in ARRAY_FIELDS:
                staged.add_array(field, arrays[field])
            return staged.publish(name)
        except OSError as exc:  # a full disk: the staged files go, the error says where
            raise disk_error(f"cannot store dataset {name!r}", staged.dir, exc) from exc
        finally:
            staged.discard()

    def get(self, name: str) -> DatasetInfo:
        folder = self._dir(name)
        if not folder.is_dir():
            raise NotFoundError(f"dataset {name!r} not found")
        info, problem = self._load_info(folder)
        if info is None:
            raise StorageError(
                f"dataset {name!r} is damaged ({problem}); delete it with `kubeml dataset "
                f"delete -n {name}` and upload it again"
            )
        return info

    def list(self) -> list[DatasetInfo]:
        return [info for info, _ in self._scan() if info is not None]

    def damaged(self) -> Sequence[str]:
        return [problem for info, problem in self._scan() if info is None]

    def _scan(self) -> Sequence[tuple[DatasetInfo | None, str]]:
        if not self.root.exists():
            return []
        found = []
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir():
                continue  # staging and deleting folders
            info, problem = self._load_info(folder)
            found.append((info, f"dataset {folder.name!r}: {problem}"))
        return found

    def _load_info(self, folder: Path) -> tuple[DatasetInfo | None, str]:
        """A dataset's info.json, or None and why it does not parse (logged once)."""
        try:
            return DatasetInfo.model_validate(json.loads((folder / "info.json").read_text())), ""
        except Exception as exc:  # missing, not JSON, or a shape this version does not know
            problem = f"{folder / 'info.json'} does not parse: {type(exc).__name__}: {exc}"
            problem = problem.splitlines()[0] if len(problem) > 300 else problem
            if folder.name not in self._reported:
                self._reported.add(folder.name)
                log.warning("skipping damaged dataset %r: %s", folder.name, problem)
            return None, problem

    def delete(self, name: str) -> None:
        target = self._dir(name)
        if not target.is_dir():
            raise NotFoundError(f"dataset {name!r} not found")
        with self._lock:
            for key in [k for k in self._maps if k[0] == name]:
                del self._maps[key]
        # Rename first so a concurrent reader never sees half a dataset.
        trash = self.root / f".deleting-{name}-{threading.get_ident()}"
        target.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        self._reported.discard(name)

    def _array(self, name: str, field: str) -> np.ndarray:
        import numpy as np

        path = self._dir(name) / f"{field}.npy"
        try:
            inode = path.stat().st_ino  # a re-created dataset of the same name is a new file
        except FileNotFoundError as exc:
            raise NotFoundError(f"dataset {name!r} not found") from exc
        key = (name, field, inode)
        with self._lock:
            array = self._maps.get(key)
            if array is None:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                self._maps[key] = array
        return array

    def read(
        self, name: str, split: Split, ranges: Sequence[tuple[int, int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        x_all, y_all = self._array(name, f"{split}_x"), self._array(name, f"{split}_y")
        if not ranges:
            return x_all[:0].copy(), y_all[:0].copy()
        x = np.concatenate([x_all[a:b] for a, b in ranges])
        y = np.concatenate([y_all[a:b] for a, b in ranges])
        return x, y
