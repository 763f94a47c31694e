"""Dataset store: named train/test arrays; functions read only the ranges they are given.

Each dataset is a folder under the kubeml home: its splits as chunks of a few MiB with a
manifest (`kubeml.stores.chunks`). Readers copy out just their sample ranges from the
chunk files, so N functions never each load the whole set. A new dataset is written into
a staging folder, checked there chunk by chunk (`kubeml.stores.staging`), and renamed into
place: a reader sees a whole, checked dataset or none. Datasets written before chunks
(four `.npy` files) are read as they are, through memory maps.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeml.api.datasets import DatasetInfo
from kubeml.api.schemas import check_name
from kubeml.errors import (
    AlreadyExistsError,
    InvalidDatasetError,
    NotFoundError,
    StorageError,
)
from kubeml.stores.arrays import ARRAY_FIELDS
from kubeml.stores.chunks import MANIFEST, ChunkedSplit, chunk_samples_for, read_manifest
from kubeml.stores.files import disk_error
from kubeml.stores.interfaces import ShardSource, Split
from kubeml.stores.sources import SOURCE, SourceSplit, inspect_location, read_source
from kubeml.stores.staging import StagedDataset

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ARRAY_FIELDS", "DatasetStore", "LocalDatasetStore", "StagedDataset", "check_name"]

log = logging.getLogger("kubeml.datasets")

_Reader = ChunkedSplit | SourceSplit  # a stored split's chunks, or a registered location
STALE_AFTER_S = 24 * 3600.0  # no upload runs this long; a staging folder this old is litter


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

    def chunk_samples(self, name: str) -> int:
        """Samples per stored chunk of the training split: the unit the job's epoch order
        shuffles. Derived from the sample size, as an upload cuts them (stores that keep
        a manifest say what it holds)."""
        import numpy as np

        info = self.get(name)
        return chunk_samples_for(
            math.prod(info.feature_shape) * np.dtype(info.feature_dtype).itemsize
        )

    def stage(self) -> StagedDataset:
        """A staging folder to stream an upload into (stores that keep files locally)."""
        raise StorageError(f"{type(self).__name__} takes no streamed uploads")

    def register(self, name: str, url: str) -> DatasetInfo:
        """Keep a dataset where it is (`kubeml.stores.sources`): only its description is
        stored; whoever trains reads the samples from `url`."""
        raise StorageError(f"{type(self).__name__} takes no registered datasets")

    def damaged(self) -> Sequence[str]:
        """Stored datasets that cannot be read back, each with the reason."""
        return []


class LocalDatasetStore(DatasetStore):
    """Datasets as chunk files under one folder (older ones as `.npy` files, memory-mapped)."""

    prefetches = True  # reads are thread-safe and release the GIL: a feed may read ahead

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._maps: dict[tuple[str, str, int], Any] = {}  # old datasets' memory maps
        # Chunk readers, by the version (inode, mtime) of the manifest they read.
        self._splits: dict[tuple[str, str], tuple[tuple[int, int], _Reader]] = {}
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

    def register(self, name: str, url: str) -> DatasetInfo:
        if self._dir(name).exists():
            raise AlreadyExistsError(f"dataset {name!r} already exists; delete it first")
        source, headers = inspect_location(url)  # before anything is written
        staged = self.stage()
        try:
            return staged.publish_source(name, source, headers)
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
            for split in ("train", "test"):
                self._splits.pop((name, split), None)
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

    def chunk_samples(self, name: str) -> int:
        chunked = self._chunked(name, "train")
        if chunked is None:  # written before chunks: its order's unit all the same
            return super().chunk_samples(name)
        return chunked.chunk_samples

    def source_split(self, name: str, split: Split) -> SourceSplit | None:
        """The reader of a registered dataset's split (None for a stored one)."""
        reader = self._chunked(name, split)
        return reader if isinstance(reader, SourceSplit) else None

    def _chunked(self, name: str, split: Split) -> _Reader | None:
        """The reader of a split: of its chunks, or of its registered location; None for a
        dataset stored as `.npy` files."""
        folder = self._dir(name)
        described = folder / MANIFEST
        if not described.exists() and (folder / SOURCE).exists():
            described = folder / SOURCE
        try:
            stat = described.stat()  # a re-created dataset: a new description
            version = (stat.st_ino, stat.st_mtime_ns)
        except FileNotFoundError:
            if (folder / f"{split}_x.npy").exists():
                return None
            raise NotFoundError(f"dataset {name!r} not found") from None
        with self._lock:
            cached = self._splits.get((name, split))
            if cached is not None and cached[0] == version:
                return cached[1]
        reader: _Reader
        if described.name == SOURCE:
            reader = SourceSplit(name, read_source(folder), split)
        else:
            reader = ChunkedSplit(folder, split, read_manifest(folder)[split])
        with self._lock:
            self._splits[(name, split)] = (version, reader)
        return reader

    def read(
        self, name: str, split: Split, ranges: Sequence[tuple[int, int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        chunked = self._chunked(name, split)
        if chunked is not None:
            return chunked.read(ranges)
        import numpy as np

        x_all, y_all = self._array(name, f"{split}_x"), self._array(name, f"{split}_y")
        if not ranges:
            return x_all[:0].copy(), y_all[:0].copy()
        x = np.concatenate([x_all[a:b] for a, b in ranges])
        y = np.concatenate([y_all[a:b] for a, b in ranges])
        return x, y
