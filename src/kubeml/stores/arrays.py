"""Checks that a dataset's four array files can train: their headers first, then contents.

A `.npy` header (shape, dtype, order) fits in its first bytes, so a dataset whose files do
not fit together is refused before its data is read; the contents are checked a chunk
at a time as the store writes its chunks (`kubeml.stores.chunk_writer`), so checking a
1 GiB file needs no 1 GiB of RAM.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeml.errors import InvalidDatasetError

if TYPE_CHECKING:
    import numpy as np

ARRAY_FIELDS = ("train_x", "train_y", "test_x", "test_y")
LABEL_FIELDS = ("train_y", "test_y")
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
MAX_HEADER_BYTES = 65_536  # numpy itself refuses headers over 10,000 bytes by default
_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float
_CLASS_ID_KINDS = "biu"


@dataclass(frozen=True)
class Header:
    """What a `.npy` header says: enough to check a file without reading its data."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran_order: bool
    offset: int  # bytes before the data

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def header_of_array(array: Any) -> Header:
    import numpy as np

    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(array).__name__}")
    return Header(tuple(array.shape), array.dtype, False, 0)


def parse_header(prefix: bytes, source: str) -> Header | None:
    """The header at the start of a `.npy` file, or None while `prefix` is too short for it.

    Raises:
        InvalidDatasetError: the bytes are not a `.npy` header.
    """
    import numpy as np

    if len(prefix) < len(NPY_MAGIC) + 2:
        if not NPY_MAGIC.startswith(prefix[: len(NPY_MAGIC)]):
            raise not_numpy(source)
        return None
    if not prefix.startswith(NPY_MAGIC):
        raise not_numpy(source)
    major = prefix[6]
    size_bytes = 2 if major == 1 else 4
    if major not in (1, 2, 3):
        raise InvalidDatasetError(f"{source}: unsupported .npy format version {major}")
    if len(prefix) < 8 + size_bytes:
        return None
    header_len = int.from_bytes(prefix[8 : 8 + size_bytes], "little")
    if header_len > MAX_HEADER_BYTES:
        raise InvalidDatasetError(
            f"{source}: .npy header of {header_len} bytes is larger than {MAX_HEADER_BYTES}"
        )
    offset = 8 + size_bytes + header_len
    if len(prefix) < offset:
        return None
    stream = io.BytesIO(prefix[8:offset])
    formats = np.lib.format
    read = formats.read_array_header_1_0 if major == 1 else formats.read_array_header_2_0
    try:
        shape, fortran_order, dtype = read(stream, max_header_size=MAX_HEADER_BYTES)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise InvalidDatasetError(f"{source}: damaged .npy header ({exc})") from exc
    return Header(tuple(shape), dtype, bool(fortran_order), offset)


def read_header(path: Path, source: str) -> Header:
    """The header of the `.npy` file at `path` (reads at most its first 64 KiB)."""
    with open(path, "rb") as file:
        prefix = file.read(8 + 4 + MAX_HEADER_BYTES)
    header = parse_header(prefix, source)
    if header is None:
        raise InvalidDatasetError(f"{source}: truncated .npy file (it ends inside its header)")
    return header


def not_numpy(source: str) -> InvalidDatasetError:
    return InvalidDatasetError(
        f"{source}: not a .npy or .npz file; save the array with numpy.save (or numpy.savez "
        "for one array in an .npz)"
    )


def check_header(field: str, source: str, header: Header) -> None:
    """One file on its own: a numeric array of one or more samples; labels 1-D."""
    dtype = header.dtype
    if dtype.hasobject:
        raise InvalidDatasetError(
            f"{source}: holds Python objects (dtype {dtype}), which would need pickle to "
            "load; upload a numeric array, e.g. array.astype('float32')"
        )
    if dtype.kind not in _NUMERIC_KINDS or dtype.names is not None:
        raise InvalidDatasetError(
            f"{source}: unsupported dtype {dtype}; use a numeric (int, uint, float, bool) array"
        )
    if len(header.shape) == 0:
        raise InvalidDatasetError(
            f"{source}: a 0-d array (a single value); a dataset file holds one row per sample"
        )
    if header.shape[0] == 0:
        raise InvalidDatasetError(f"{source}: empty; a dataset needs at least one sample")
    if field in LABEL_FIELDS and len(header.shape) != 1:
        raise InvalidDatasetError(
            f"{source}: labels must be 1-D, one class id (or regression target) per sample, "
            f"got shape {header.shape}; for one-hot labels upload labels.argmax(axis=1), for "
            "a column upload labels.ravel()"
        )
    if math.prod(header.shape[1:]) == 0:
        raise InvalidDatasetError(
            f"{source}: each sample has shape {header.shape[1:]}, which holds no values"
        )


def check_together(headers: Mapping[str, tuple[str, Header]]) -> None:
    """The files seen so far fit together: as many labels as samples, one sample shape."""
    for split in ("train", "test"):
        if f"{split}_x" in headers and f"{split}_y" in headers:
            x_source, x = headers[f"{split}_x"]
            y_source, y = headers[f"{split}_y"]
            if x.shape[0] != y.shape[0]:
                raise InvalidDatasetError(
                    f"{y_source}: has {y.shape[0]} labels but {x_source} has {x.shape[0]} "
                    "samples; both need one row per sample"
                )
    if "train_x" in headers and "test_x" in headers:
        (train_source, train), (test_source, test) = headers["train_x"], headers["test_x"]
        if train.shape[1:] != test.shape[1:]:
            raise InvalidDatasetError(
                f"{test_source}: sample shape {test.shape[1:]} differs from {train_source}'s "
                f"{train.shape[1:]}"
            )
    if "train_y" in headers and "test_y" in headers:
        (train_source, train), (test_source, test) = headers["train_y"], headers["test_y"]
        if _label_kind(train) != _label_kind(test):
            raise InvalidDatasetError(
                f"{test_source}: holds {_label_kind(test)} ({test.dtype}) but {train_source} "
                f"holds {_label_kind(train)} ({train.dtype}); use one kind of label for both"
            )


def _label_kind(header: Header) -> str:
    return "class ids" if header.dtype.kind in _CLASS_ID_KINDS else "regression targets"


def check_file_size(path: Path, source: str, header: Header) -> None:
    check_data_size(path.stat().st_size, source, header)


def check_data_size(size: int, source: str, header: Header) -> None:
    """A file of `size` bytes holds all the data its header promises."""
    if size < header.offset + header.data_bytes:
        raise InvalidDatasetError(
            f"{source}: truncated: its header promises {header.data_bytes} bytes of data "
            f"for shape {header.shape}, the file holds {max(0, size - header.offset)}"
        )


def check_values(field: str, source: str, values: np.ndarray, first_sample: int) -> None:
    """One chunk's samples (C order, sample-major): floats finite, class ids not negative.

    `first_sample` is the chunk's first sample in the file, so an error names the sample.
    """
    kind = values.dtype.kind
    if kind in "bu" or (kind == "i" and field not in LABEL_FIELDS) or values.size == 0:
        return  # integers are finite; only signed class ids can be out of range
    flat = values.reshape(-1)
    bad = _first_bad(flat, kind)
    if bad is None:
        return
    index, value = bad
    sample = first_sample + index // (flat.size // len(values))
    if kind == "f":
        raise InvalidDatasetError(
            f"{source}: holds {value} at sample {sample} (and maybe more); "
            "training on it gives NaN losses: drop or repair those samples first"
        )
    raise InvalidDatasetError(
        f"{source}: class ids must be 0 or more, found {value} at sample {sample}"
    )


def _first_bad(chunk: np.ndarray, kind: str) -> tuple[int, Any] | None:
    import numpy as np

    mask = ~np.isfinite(chunk) if kind == "f" else chunk < 0
    hits = np.flatnonzero(mask)
    if len(hits) == 0:
        return None
    index = int(hits[0])
    value = chunk[index].item()
    return index, ("NaN" if kind == "f" and math.isnan(value) else value)
