"""Dataset store: named train/test arrays; functions read only the ranges they are given.

Each dataset is a folder of four `.npy` files under the kubeml home. Readers memory-map
them and copy out just their sample ranges, so N functions never each load the whole set.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import threading
from abc import abstractmethod
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeml.api.schemas import DatasetInfo
from kubeml.errors import AlreadyExistsError, InvalidDatasetError, NotFoundError, StorageError
from kubeml.stores.interfaces import ShardSource, Split

if TYPE_CHECKING:
    import numpy as np

ARRAY_FIELDS = ("train_x", "train_y", "test_x", "test_y")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float


def check_name(kind: str, name: str) -> str:
    """Names are 1-64 characters of letters, digits, `_`, `.`, `-`, starting alphanumeric."""
    if not isinstance(name, str) or not _NAME.match(name):
        from kubeml.errors import InvalidInputError

        raise InvalidInputError(
            f"invalid {kind} name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def read_array_file(data: bytes, filename: str, *, allow_pickle: bool = False) -> np.ndarray:
    """Decode an uploaded `.npy`, `.npz` (one array) or, if allowed, `.pkl` file."""
    import numpy as np

    lower = filename.lower()
    try:
        if lower.endswith(".pkl") or lower.endswith(".pickle"):
            if not allow_pickle:
                raise InvalidDatasetError(
                    f"{filename}: pickle files can run code when loaded; convert it to .npy, "
                    "or pass --allow-pickle if you trust it"
                )
            import pickle

            array = np.asarray(pickle.loads(data))
        elif lower.endswith(".npz"):
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                if len(archive.files) != 1:
                    raise InvalidDatasetError(
                        f"{filename}: an .npz upload must hold exactly one array, "
                        f"found {len(archive.files)}"
                    )
                array = archive[archive.files[0]]
        elif lower.endswith(".npy"):
            array = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            raise InvalidDatasetError(f"{filename}: unsupported file type; use .npy or .npz")
    except InvalidDatasetError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise InvalidDatasetError(
                f"{filename}: holds Python objects, which need pickle to load; "
                "upload a numeric array (pass --allow-pickle only for .pkl files you trust)"
            ) from exc
        raise InvalidDatasetError(f"{filename}: not a valid numpy file ({exc})") from exc
    except Exception as exc:  # truncated or garbage bytes raise many different types
        raise InvalidDatasetError(f"{filename}: not a valid numpy file ({exc})") from exc
    return array


def validate_arrays(arrays: dict[str, np.ndarray]) -> None:
    """Check the four arrays of a dataset: numeric, non-empty, matching lengths and shapes."""
    import numpy as np

    for field in ARRAY_FIELDS:
        if field not in arrays or arrays[field] is None:
            raise InvalidDatasetError(f"{field}: missing")
        array = arrays[field]
        if not isinstance(array, np.ndarray):
            raise InvalidDatasetError(
                f"{field}: expected a numpy array, got {type(array).__name__}"
            )
        if array.dtype.kind not in _NUMERIC_KINDS:
            raise InvalidDatasetError(
                f"{field}: unsupported dtype {array.dtype}; use a numeric (int, uint, float, bool)"
                " array"
            )
        if array.ndim == 0 or len(array) == 0:
            raise InvalidDatasetError(f"{field}: empty; a dataset needs at least one sample")
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if len(x) != len(y):
            raise InvalidDatasetError(
                f"{split}_y: has {len(y)} labels but {split}_x has {len(x)} samples"
            )
    if arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
        raise InvalidDatasetError(
            f"test_x: sample shape {arrays['test_x'].shape[1:]} differs from train_x's "
            f"{arrays['train_x'].shape[1:]}"
        )


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


class LocalDatasetStore(DatasetStore):
    """Datasets as `.npy` files under one folder, memory-mapped by readers."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._maps: dict[tuple[str, str, int], Any] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"])  # type: ignore[misc]

    def _dir(self, name: str) -> Path:
        return self.root / check_name("dataset", name)

    def create(self, name: str, arrays: dict[str, np.ndarray]) -> DatasetInfo:
        import numpy as np

        target = self._dir(name)
        validate_arrays(arrays)
        if target.exists():
            raise AlreadyExistsError(f"dataset {name!r} already exists; delete it first")
        info = DatasetInfo(
            name=name,
            train_size=len(arrays["train_x"]),
            test_size=len(arrays["test_x"]),
            feature_shape=list(arrays["train_x"].shape[1:]),
            feature_dtype=str(arrays["train_x"].dtype),
            label_dtype=str(arrays["train_y"].dtype),
            created_at=datetime.now(timezone.utc),
        )
        staging = self.root / f".staging-{name}-{threading.get_ident()}"
        try:
            staging.mkdir(parents=True, exist_ok=False)
            for field in ARRAY_FIELDS:
                np.save(staging / f"{field}.npy", np.ascontiguousarray(arrays[field]))
            (staging / "info.json").write_text(info.model_dump_json())
            staging.rename(target)  # atomic: a reader sees the whole dataset or none of it
        except FileExistsError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise AlreadyExistsError(f"dataset {name!r} already exists; delete it first") from exc
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise StorageError(f"cannot store dataset {name!r}: {exc}") from exc
        return info

    def get(self, name: str) -> DatasetInfo:
        path = self._dir(name) / "info.json"
        try:
            return DatasetInfo.model_validate(json.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise NotFoundError(f"dataset {name!r} not found") from exc

    def list(self) -> list[DatasetInfo]:
        if not self.root.exists():
            return []
        infos = []
        for path in sorted(self.root.glob("*/info.json")):
            infos.append(DatasetInfo.model_validate(json.loads(path.read_text())))
        return infos

    def delete(self, name: str) -> None:
        target = self._dir(name)
        if not (target / "info.json").exists():
            raise NotFoundError(f"dataset {name!r} not found")
        with self._lock:
            for key in [k for k in self._maps if k[0] == name]:
                del self._maps[key]
        # Rename first so a concurrent reader never sees half a dataset.
        trash = self.root / f".deleting-{name}-{threading.get_ident()}"
        target.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

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
