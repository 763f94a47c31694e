"""Datasets registered where they already are: a directory every node can read, or a URL
that fsspec opens (`s3://bucket/prefix` with s3fs installed). Their bytes never pass
through the server.

A registered location holds the four arrays as `.npy` files in C order: `train_x.npy`,
`train_y.npy`, `test_x.npy` and `test_y.npy`. Registering reads each file's header (its
first bytes) and its fingerprint (size and modification time, or the object store's
ETag), and runs the checks of an upload that need only headers. The home keeps
`source.json` (the location, the headers, the fingerprints) beside `info.json`. Whoever
trains reads its sample ranges straight from the location and checks their values as they
arrive (NaN/inf, negative class ids), so a bad sample fails the task with the file and the
sample named; a file whose fingerprint changed since it was registered is refused, not
trained on. Deleting the dataset deletes the home's two small files, never the user's.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from kubeml.errors import InvalidDatasetError, InvalidInputError, StorageError
from kubeml.stores.arrays import (
    ARRAY_FIELDS,
    MAX_HEADER_BYTES,
    Header,
    check_data_size,
    check_header,
    check_together,
    check_values,
    parse_header,
)
from kubeml.stores.chunks import check_ranges, chunk_samples_for

if TYPE_CHECKING:
    import numpy as np

SOURCE = "source.json"
FORMAT = 1
# What a file's info says about its version, for the stores fsspec knows: an object's
# content hash where the store keeps one, else its size, modification time and inode.
_VERSION_KEYS = ("size", "ETag", "etag", "md5Hash", "crc32c", "mtime", "LastModified", "ino")


@dataclass(frozen=True)
class SourceFile:
    """One registered `.npy` file: where its data starts, what it holds, its version."""

    path: str  # as the location's filesystem names it
    offset: int
    shape: tuple[int, ...]
    dtype: str  # numpy's dtype.str
    fingerprint: str

    @property
    def row_bytes(self) -> int:
        import numpy as np

        return math.prod(self.shape[1:]) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Source:
    """A registered dataset's location and its four files."""

    url: str
    files: dict[str, SourceFile]

    def to_json(self) -> dict[str, Any]:
        files = {
            field: {
                "path": f.path,
                "offset": f.offset,
                "shape": list(f.shape),
                "dtype": f.dtype,
                "fingerprint": f.fingerprint,
            }
            for field, f in self.files.items()
        }
        return {"format": FORMAT, "url": self.url, "files": files}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Source:
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, this version reads {FORMAT}")
        files = {
            field: SourceFile(
                str(f["path"]),
                int(f["offset"]),
                tuple(int(d) for d in f["shape"]),
                str(f["dtype"]),
                str(f["fingerprint"]),
            )
            for field, f in raw["files"].items()
        }
        if sorted(files) != sorted(ARRAY_FIELDS):
            raise ValueError(f"files {sorted(files)}, not {', '.join(ARRAY_FIELDS)}")
        return cls(str(raw["url"]), files)


def write_source(folder: Path, source: Source) -> None:
    (folder / SOURCE).write_text(json.dumps(source.to_json()))


def read_source(folder: Path) -> Source:
    path = folder / SOURCE
    try:
        return Source.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise
    except Exception as exc:  # not JSON, or a shape this version does not know
        raise StorageError(
            f"dataset {folder.name!r} is damaged ({path} does not parse: "
            f"{type(exc).__name__}: {exc}); delete it and register it again"
        ) from exc


def open_location(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of `url` and the location's path on it.

    Raises:
        InvalidInputError: a relative path, a protocol fsspec does not know, or one whose
            package is not installed.
    """
    import fsspec

    if "://" not in url and not PurePosixPath(url).is_absolute():
        raise InvalidInputError(
            f"url: {url!r} is a relative path; give an absolute path every node can read "
            "(a shared directory) or a URL such as s3://bucket/prefix"
        )
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise InvalidInputError(
            f"url: {url!r} needs a package this server lacks ({exc}); for s3:// install "
            "kubeml[s3] on the server and on every node"
        ) from exc
    except Exception as exc:  # fsspec's own checks of a URL raise whatever they raise
        raise InvalidInputError(f"url: {url!r}: {exc}") from exc
    if "memory" in fs.protocol:  # a process's own memory: no other process could read it
        raise InvalidInputError(f"url: {url!r}: memory:// is private to one process")
    return fs, str(path).rstrip("/")


def fingerprint(fs: Any, path: str) -> str:
    """A short digest of what the filesystem says about the file's version."""
    fs.invalidate_cache(path)  # a listing cached by the filesystem would hide a change
    info = fs.info(path)
    parts = {key: str(info[key]) for key in _VERSION_KEYS if key in info}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def inspect_location(url: str) -> tuple[Source, dict[str, Header]]:
    """Read the headers and fingerprints of the four files at `url`, checking that they
    can train together (the content checks run as the samples are read).

    Raises:
        InvalidInputError: the location is not one fsspec opens.
        InvalidDatasetError: a file is missing, unreadable, not `.npy`, in Fortran order,
            cut short, or does not fit with the others.
    """
    fs, root = open_location(url)
    seen: dict[str, tuple[str, Header]] = {}
    files = {}
    for field in ARRAY_FIELDS:
        path = f"{root}/{field}.npy"
        shown = f"{field} ({url.rstrip('/')}/{field}.npy)"
        try:
            size = int(fs.info(path)["size"])
            prefix = fs.cat_file(path, start=0, end=min(size, 8 + 4 + MAX_HEADER_BYTES))
            version = fingerprint(fs, path)
        except FileNotFoundError:
            raise InvalidDatasetError(
                f"{shown}: not found; a registered location holds {', '.join(ARRAY_FIELDS)} "
                "as .npy files named after them"
            ) from None
        except Exception as exc:  # permissions, credentials, the network: name the file
            raise InvalidDatasetError(
                f"{shown}: cannot read it ({type(exc).__name__}: {exc})"
            ) from exc
        header = parse_header(prefix, shown)
        if header is None:
            raise InvalidDatasetError(f"{shown}: truncated .npy file (it ends inside its header)")
        check_header(field, shown, header)
        seen[field] = (shown, header)
        check_together(seen)
        if header.fortran_order:
            raise InvalidDatasetError(
                f"{shown}: stored in Fortran order; a registered file is read by sample "
                "ranges, so save it in C order: numpy.save(path, numpy.ascontiguousarray(a))"
            )
        check_data_size(size, shown, header)
        files[field] = SourceFile(path, header.offset, header.shape, header.dtype.str, version)
    return Source(url, files), {field: header for field, (_, header) in seen.items()}


class SourceSplit:
    """Reads sample ranges of one split of a registered dataset from its location.

    Picklable (the filesystem is opened again where it lands), so the control plane can
    hand it to functions on other nodes, which then read the location themselves.
    """

    def __init__(self, name: str, source: Source, split: str) -> None:
        self.name, self.source, self.split = name, source, split
        self.x, self.y = source.files[f"{split}_x"], source.files[f"{split}_y"]
        self.samples = self.x.shape[0]
        self.chunk_samples = chunk_samples_for(self.x.row_bytes)
        self._fs: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "split": self.split}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["source"], state["split"])  # type: ignore[misc]

    def read(self, ranges: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        check_ranges(self.name, self.split, self.samples, ranges)
        if self._fs is None:
            self._fs = open_location(self.source.url)[0]
        out = []
        for field, file in ((f"{self.split}_x", self.x), (f"{self.split}_y", self.y)):
            dtype = np.dtype(file.dtype)
            total = sum(b - a for a, b in ranges)
            array = np.empty((total, *file.shape[1:]), dtype=dtype)
            wanted = [(a, b) for a, b in ranges if b > a]
            if wanted:
                self._check_unchanged(field, file)
                self._read_into(field, file, wanted, array)
            out.append(array)
        return out[0], out[1]

    def _shown(self, field: str) -> str:
        return f"{field} ({self.source.url.rstrip('/')}/{field}.npy)"

    def _check_unchanged(self, field: str, file: SourceFile) -> None:
        try:
            now = fingerprint(self._fs, file.path)
        except Exception as exc:  # gone, or out of reach
            raise StorageError(
                f"dataset {self.name!r}: cannot read {self._shown(field)} ({type(exc).__name__}: "
                f"{exc}); every node that trains needs to reach it"
            ) from exc
        if now != file.fingerprint:
            raise StorageError(
                f"dataset {self.name!r}: {self._shown(field)} changed since it was registered "
                "(its size, modification time or checksum differ), so it is not trained on; "
                "register it again under a new name, or restore the file"
            )

    def _read_into(
        self, field: str, file: SourceFile, ranges: list[tuple[int, int]], out: np.ndarray
    ) -> None:
        import numpy as np

        row = file.row_bytes
        starts = [file.offset + a * row for a, _ in ranges]
        ends = [file.offset + b * row for _, b in ranges]
        try:
            pieces = self._fs.cat_ranges([file.path] * len(ranges), starts, ends)
        except Exception as exc:
            raise StorageError(
                f"dataset {self.name!r}: cannot read {self._shown(field)} "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        at = 0
        for (a, b), data in zip(ranges, pieces, strict=True):
            if isinstance(data, BaseException):
                raise StorageError(
                    f"dataset {self.name!r}: cannot read {self._shown(field)} "
                    f"({type(data).__name__}: {data})"
                ) from data
            if len(data) != (b - a) * row:
                raise StorageError(
                    f"dataset {self.name!r}: {self._shown(field)} ends before sample {b}; it "
                    "changed since it was registered"
                )
            values = np.frombuffer(data, dtype=out.dtype).reshape(b - a, *out.shape[1:])
            check_values(field, self._shown(field), values, a)
            out[at : at + b - a] = values
            at += b - a
