"""Writing one array of an upload as chunk files, checking each chunk as it completes.

An upload's bytes stream in (`feed`), or an array is at hand already (`add`); either way
every `chunk_samples` samples become one raw file, whose values are checked (NaN/inf,
negative class ids) and whose CRC-32 goes to the manifest. A refusal names the file and
the sample; what was written stays in the staging folder, which the refusal discards.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeml.errors import InvalidDatasetError
from kubeml.stores.arrays import Header, check_values
from kubeml.stores.chunks import chunk_file

if TYPE_CHECKING:
    import numpy as np


class ChunkWriter:
    """The chunks of one field (`train_x`...) of a dataset being staged."""

    def __init__(
        self, folder: Path, field: str, source: str, header: Header, chunk_samples: int
    ) -> None:
        import math

        self.folder, self.field, self.source = folder, field, source
        self.header, self.chunk_samples = header, chunk_samples
        self.sample_bytes = math.prod(header.shape[1:]) * header.dtype.itemsize
        self.crcs: list[int] = []
        self.received = 0  # data bytes, the header's excluded
        self._buffer = bytearray()
        (folder / field).mkdir(parents=True, exist_ok=True)

    @property
    def _chunk_bytes(self) -> int:
        return self.chunk_samples * self.sample_bytes

    def feed(self, data: bytes | memoryview) -> None:
        """The next bytes of the array's data (C order); past the data's end ignored, as
        `numpy.load` ignores them."""
        wanted = self.header.data_bytes - self.received
        data = memoryview(data)[: max(0, wanted)]
        self.received += len(data)
        while len(data):
            room = self._chunk_bytes - len(self._buffer)
            self._buffer += data[:room]
            data = data[room:]
            if len(self._buffer) == self._chunk_bytes:
                self._write(self._buffer)
                self._buffer = bytearray()

    def add(self, array: Any) -> None:
        """The whole array (an in-memory or memory-mapped one, any order), chunk by chunk."""
        import numpy as np

        for start in range(0, len(array), self.chunk_samples):
            chunk = np.ascontiguousarray(array[start : start + self.chunk_samples])
            self._write(chunk.data.cast("B"))
        self.received = self.header.data_bytes

    def finish(self) -> list[int]:
        """The chunks' CRCs, once every byte the header promised has arrived.

        Raises:
            InvalidDatasetError: the file ended before its data did.
        """
        if self.received < self.header.data_bytes:
            raise InvalidDatasetError(
                f"{self.source}: truncated: its header promises {self.header.data_bytes} bytes "
                f"of data for shape {self.header.shape}, the file holds {self.received}"
            )
        if self._buffer:
            self._write(self._buffer)
            self._buffer = bytearray()
        return self.crcs

    def _write(self, data: bytearray | memoryview) -> None:
        import numpy as np

        index = len(self.crcs)
        shape = (len(data) // self.sample_bytes, *self.header.shape[1:])
        values: np.ndarray = np.frombuffer(data, dtype=self.header.dtype).reshape(shape)
        check_values(self.field, self.source, values, index * self.chunk_samples)
        with open(self.folder / chunk_file(self.field, index), "wb") as file:
            file.write(data)
        self.crcs.append(zlib.crc32(data))
