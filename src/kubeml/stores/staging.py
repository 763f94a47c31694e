"""A dataset being uploaded: its files land in a staging folder as checked chunks as they
arrive (`kubeml.stores.arrays`, `kubeml.stores.chunk_writer`), and the folder is renamed
into place once whole."""

from __future__ import annotations

import math
import secrets
import shutil
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from kubeml.api.datasets import DatasetInfo
from kubeml.api.schemas import check_name, utc_now
from kubeml.errors import AlreadyExistsError, InvalidDatasetError, StorageError
from kubeml.stores.arrays import (
    ARRAY_FIELDS,
    MAX_HEADER_BYTES,
    NPY_MAGIC,
    ZIP_MAGIC,
    Header,
    check_file_size,
    check_header,
    check_together,
    header_of_array,
    not_numpy,
    parse_header,
)
from kubeml.stores.chunk_writer import ChunkWriter
from kubeml.stores.chunks import SplitManifest, chunk_samples_for, write_manifest
from kubeml.stores.files import is_full
from kubeml.stores.sources import Source, write_source

_PREFIX_BYTES = 8 + 4 + MAX_HEADER_BYTES
_COPY_BYTES = 2**20


class StagedDataset:
    """A dataset being written: its arrays land in a staging folder as chunks, checked as
    they arrive, then the folder is renamed into place.

    Files arrive one at a time (`begin_file`, `write`..., `end_file`) or as arrays
    (`add_array`). Each `.npy` header is checked as soon as its bytes are in, against the
    headers already seen; a C-order `.npy` whose chunk size is known (its split's features'
    header is in) is cut into checked chunks as it streams. The rest (`.npz`, pickles,
    Fortran order, labels sent before their features) is kept whole and chunked by
    `publish`, which then writes the manifest and renames the folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / f".staging-{secrets.token_hex(8)}"
        self.dir.mkdir(parents=True)
        self.headers: dict[str, tuple[str, Header]] = {}
        self._pickles: dict[str, tuple[str, Path]] = {}
        self._whole: dict[str, Any] = {}  # field -> a path to a whole .npy, or an array
        self._crcs: dict[str, list[int]] = {}  # fields already chunked
        self._file: IO[bytes] | None = None
        self._writer: ChunkWriter | None = None
        self._field = self._source = ""
        self._format: str | None = None
        self._prefix = bytearray()

    def chunk_samples(self, split: str) -> int | None:
        """Samples per chunk of `split`: set by its features' sample size, once known."""
        features = self.headers.get(f"{split}_x")
        if features is None:
            return None
        shape, dtype = features[1].shape, features[1].dtype
        return chunk_samples_for(math.prod(shape[1:]) * dtype.itemsize)

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
        self._writer = None
        if self._format == "pkl":
            self._open_part()

    def write(self, data: bytes) -> None:
        """Take the next bytes of the current file; refuses as soon as its header shows
        it cannot fit, or a chunk of its data cannot train."""
        if self._writer is not None:
            self._writer.feed(data)
            return
        if self._file is not None:
            self._file.write(data)
            return
        self._prefix += data
        prefix = bytes(self._prefix)
        if self._format is None and len(prefix) >= len(ZIP_MAGIC):
            if prefix.startswith(ZIP_MAGIC):
                self._format = "npz"
                self._open_part()
                return
            if not prefix.startswith(NPY_MAGIC[: len(ZIP_MAGIC)]):
                raise not_numpy(self._source)
            self._format = "npy"
        if self._format == "npy":
            header = parse_header(prefix, self._source)
            if header is not None:
                self._accept(self._field, self._source, header)
                self._stream(header)

    def _stream(self, header: Header) -> None:
        """Where the bytes after a parsed header go: chunks, or a whole file for later."""
        size = self.chunk_samples(self._field.split("_")[0])
        if size is None or header.fortran_order:
            self._open_part()
            return
        self._writer = ChunkWriter(self.dir, self._field, self._source, header, size)
        self._writer.feed(memoryview(self._prefix)[header.offset :])
        self._prefix = bytearray()

    def _open_part(self) -> None:
        self._file = open(self.dir / f"{self._field}.part", "wb")  # noqa: SIM115 - end_file
        self._file.write(self._prefix)
        self._prefix = bytearray()

    def end_file(self) -> None:
        field, source = self._field, self._source
        if self._writer is not None:
            self._crcs[field] = self._writer.finish()
            self._writer = None
            return
        if self._file is not None:
            self._file.close()
            self._file = None
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
        self._whole[field] = path

    def add_array(self, field: str, array: Any, source: str = "") -> None:
        source = source or field
        try:
            header = header_of_array(array)
        except TypeError as exc:
            raise InvalidDatasetError(f"{source}: {exc}") from exc
        self._accept(field, source, header)  # before a byte is written
        self._whole[field] = array  # chunked by publish, once the chunk size is known

    def publish(self, name: str, *, allow_pickle: bool = False) -> DatasetInfo:
        """Chunk and check what is still whole, then move the dataset into place."""
        import numpy as np

        check_name("dataset", name)
        for field, (source, part) in self._pickles.items():
            self._unpickle(field, source, part, allow_pickle)
        missing = [field for field in ARRAY_FIELDS if field not in self.headers]
        if missing:
            raise InvalidDatasetError(
                f"{', '.join(missing)}: missing; a dataset needs all of {', '.join(ARRAY_FIELDS)}"
            )
        check_together(self.headers)
        for field, whole in self._whole.items():
            source, header = self.headers[field]
            size = self.chunk_samples(field.split("_")[0])
            assert size is not None  # every features header is in
            writer = ChunkWriter(self.dir, field, source, header, size)
            if isinstance(whole, Path):
                writer.add(np.load(whole, mmap_mode="r", allow_pickle=False))
                whole.unlink()
            else:
                writer.add(whole)
            self._crcs[field] = writer.finish()
        self._whole.clear()
        splits = {split: self._manifest(split) for split in ("train", "test")}
        return self._place(name, None, lambda: write_manifest(self.dir, splits))

    def publish_source(self, name: str, source: Source, headers: dict[str, Header]) -> DatasetInfo:
        """A registered dataset (`kubeml.stores.sources`): where it is read from, in place
        of its chunks."""
        self.headers = {field: (field, header) for field, header in headers.items()}
        return self._place(name, source.url, lambda: write_source(self.dir, source))

    def _place(self, name: str, source: str | None, write: Callable[[], None]) -> DatasetInfo:
        """Write the dataset's description (`write`, then its info) and move it into place."""
        target = self.root / check_name("dataset", name)
        tx, ty, sx = (self.headers[field][1] for field in ("train_x", "train_y", "test_x"))
        info = DatasetInfo(
            name=name,
            train_size=tx.shape[0],
            test_size=sx.shape[0],
            feature_shape=list(tx.shape[1:]),
            feature_dtype=str(tx.dtype),
            label_dtype=str(ty.dtype),
            created_at=utc_now(),
            source=source,
        )
        try:
            write()
            (self.dir / "info.json").write_text(info.model_dump_json())
            self.dir.rename(target)  # atomic: a reader sees the whole dataset or none of it
        except OSError as exc:
            if target.exists():
                raise AlreadyExistsError(
                    f"dataset {name!r} already exists; delete it first"
                ) from exc
            raise StorageError(f"cannot store dataset {name!r}: {exc}") from exc
        return info

    def _manifest(self, split: str) -> SplitManifest:
        x, y = self.headers[f"{split}_x"][1], self.headers[f"{split}_y"][1]
        size = self.chunk_samples(split)
        assert size is not None
        return SplitManifest(
            samples=x.shape[0],
            chunk_samples=size,
            x_shape=x.shape[1:],
            x_dtype=x.dtype.str,
            y_dtype=y.dtype.str,
            x_crc=tuple(self._crcs[f"{split}_x"]),
            y_crc=tuple(self._crcs[f"{split}_y"]),
        )

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._writer = None
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
