"""Datasets as chunks: how many samples a chunk holds, the manifest that describes a
stored dataset, and reading sample ranges back out of the chunk files.

A split of `n` samples is cut into chunks of `chunk_samples` samples (the last may be
short); chunk `i` holds samples `[i * chunk_samples, (i + 1) * chunk_samples)` as two raw
files, `<split>_x/<i>.bin` (C order) and `<split>_y/<i>.bin`. The manifest keeps each
file's CRC-32, checked the first time a process reads the whole chunk.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeml.errors import StorageError

if TYPE_CHECKING:
    import numpy as np

CHUNK_UNIT = 64  # samples; chunks and the job's plan are cut at multiples of it
CHUNK_TARGET_BYTES = 4 * 2**20  # a chunk's features and labels (int64 assumed) together
WINDOW_CHUNKS = 8  # the plan shuffles samples within windows of this many chunks
MANIFEST = "manifest.json"
FORMAT = 2  # 1: four memory-mapped .npy files (homes written before chunks)


def chunk_samples_for(sample_bytes: int) -> int:
    """Samples per chunk for samples of `sample_bytes` feature bytes: whole 64-sample
    units filling 2-4 MiB (labels counted as 8 bytes); one unit when 64 samples already
    exceed that, so a chunk stays within 16 MiB up to samples of 256 KiB (beyond, a chunk
    is 64 samples, whatever their size)."""
    per_unit = CHUNK_UNIT * (max(1, sample_bytes) + 8)
    return max(1, CHUNK_TARGET_BYTES // per_unit) * CHUNK_UNIT


def chunk_file(field: str, index: int) -> str:
    return f"{field}/{index:06d}.bin"


@dataclass(frozen=True)
class SplitManifest:
    """One split as stored: its samples, their shapes and dtypes, and its chunks' CRCs."""

    samples: int
    chunk_samples: int
    x_shape: tuple[int, ...]  # of one sample
    x_dtype: str  # numpy's dtype.str, byte order included
    y_dtype: str
    x_crc: tuple[int, ...]
    y_crc: tuple[int, ...]

    @property
    def chunks(self) -> int:
        return -(-self.samples // self.chunk_samples)

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "chunk_samples": self.chunk_samples,
            "x": {"shape": list(self.x_shape), "dtype": self.x_dtype},
            "y": {"dtype": self.y_dtype},
            "chunks": [[x, y] for x, y in zip(self.x_crc, self.y_crc, strict=True)],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SplitManifest:
        crcs = [(int(x), int(y)) for x, y in raw["chunks"]]
        split = cls(
            samples=int(raw["samples"]),
            chunk_samples=int(raw["chunk_samples"]),
            x_shape=tuple(int(d) for d in raw["x"]["shape"]),
            x_dtype=str(raw["x"]["dtype"]),
            y_dtype=str(raw["y"]["dtype"]),
            x_crc=tuple(x for x, _ in crcs),
            y_crc=tuple(y for _, y in crcs),
        )
        if split.chunk_samples <= 0 or len(crcs) != split.chunks:
            raise ValueError(
                f"{len(crcs)} chunks listed for {split.samples} samples of "
                f"{split.chunk_samples} a chunk"
            )
        return split


def write_manifest(folder: Path, splits: dict[str, SplitManifest]) -> None:
    body = {"format": FORMAT, "splits": {name: s.to_json() for name, s in splits.items()}}
    (folder / MANIFEST).write_text(json.dumps(body))


def read_manifest(folder: Path) -> dict[str, SplitManifest]:
    path = folder / MANIFEST
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, this version reads {FORMAT}")
        splits = {name: SplitManifest.from_json(s) for name, s in raw["splits"].items()}
        if sorted(splits) != ["test", "train"]:
            raise ValueError(f"splits {sorted(splits)}, not train and test")
        return splits
    except FileNotFoundError:
        raise
    except Exception as exc:  # not JSON, or a shape this version does not know
        raise StorageError(
            f"dataset {folder.name!r} is damaged ({path} does not parse: "
            f"{type(exc).__name__}: {exc}); delete it and upload it again"
        ) from exc


def check_ranges(name: str, split: str, samples: int, ranges: Sequence[tuple[int, int]]) -> None:
    """Every (start, stop) of `ranges` lies within the split's `samples`."""
    for a, b in ranges:
        if not 0 <= a <= b <= samples:
            raise StorageError(
                f"dataset {name!r}: samples [{a}, {b}) are outside its {split} split of {samples}"
            )


class ChunkedSplit:
    """Reads sample ranges of one stored split straight from its chunk files into the
    arrays it returns (one copy, as from a memory map)."""

    def __init__(self, folder: Path, split: str, manifest: SplitManifest) -> None:
        import numpy as np

        self.folder, self.split, self.manifest = folder, split, manifest
        self.x_dtype, self.y_dtype = np.dtype(manifest.x_dtype), np.dtype(manifest.y_dtype)
        self._verified: set[tuple[str, int]] = set()  # (field, chunk) whose CRC matched
        self._lock = threading.Lock()

    @property
    def chunk_samples(self) -> int:
        return self.manifest.chunk_samples

    def read(self, ranges: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        m = self.manifest
        total = sum(b - a for a, b in ranges)
        check_ranges(self.folder.name, self.split, m.samples, ranges)
        x = np.empty((total, *m.x_shape), dtype=self.x_dtype)
        y = np.empty((total,), dtype=self.y_dtype)
        if total == 0:
            return x, y
        for field, out, crcs in ((f"{self.split}_x", x, m.x_crc), (f"{self.split}_y", y, m.y_crc)):
            flat = out.reshape(total, -1).view(np.uint8)  # one row of bytes per sample
            row, at = flat.shape[1], 0
            for a, b in ranges:
                for index, lo, hi in self._pieces(a, b):
                    self._read_into(field, index, lo, hi, flat[at : at + hi - lo], row, crcs)
                    at += hi - lo
        return x, y

    def _pieces(self, a: int, b: int) -> list[tuple[int, int, int]]:
        """(chunk, first, stop) of `[a, b)`, as sample offsets inside each chunk."""
        size = self.manifest.chunk_samples
        out = []
        while a < b:
            index = a // size
            stop = min(b, (index + 1) * size)
            out.append((index, a - index * size, stop - index * size))
            a = stop
        return out

    def _read_into(
        self, field: str, index: int, lo: int, hi: int, out: Any, row: int, crcs: tuple[int, ...]
    ) -> None:
        path = self.folder / chunk_file(field, index)
        view = memoryview(out).cast("B")
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise self._damaged(path, f"cannot open it ({exc.strerror})") from exc
        try:
            done = 0
            while done < len(view):
                got = os.preadv(fd, [view[done:]], lo * row + done)
                if got == 0:
                    raise self._damaged(path, "it is shorter than the manifest says")
                done += got
        finally:
            os.close(fd)
        whole = lo == 0 and hi == min(
            self.manifest.chunk_samples, self.manifest.samples - index * self.manifest.chunk_samples
        )
        if whole and (field, index) not in self._verified:
            if zlib.crc32(view) != crcs[index]:
                raise self._damaged(path, "its bytes do not match the manifest's checksum")
            with self._lock:
                self._verified.add((field, index))

    def _damaged(self, path: Path, why: str) -> StorageError:
        return StorageError(
            f"dataset {self.folder.name!r} is damaged: chunk {path} is unreadable, {why}; "
            f"delete the dataset and upload it again"
        )
