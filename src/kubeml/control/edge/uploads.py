"""Dataset uploads, streamed from the multipart body into the dataset store's staging folder.

The body never sits in memory whole: each file part is written to its own file as it
arrives, and its `.npy` header is checked as soon as its first bytes are in, against the
files already received. An upload refused early is read to its end (so the client, still
sending, gets the answer) but nothing more of it is kept.
"""

from __future__ import annotations

import shutil
from pathlib import PurePath
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from kubeml.api.datasets import DatasetInfo
from kubeml.api.schemas import NAME_RULE
from kubeml.errors import (
    AlreadyExistsError,
    InvalidInputError,
    KubeMLError,
    NotFoundError,
    PayloadTooLargeError,
)
from kubeml.stores.datasets import ARRAY_FIELDS, DatasetStore, check_name
from kubeml.stores.files import disk_error

TEXT_FIELDS = ("name", "allow_pickle")
MAX_TEXT_BYTES = 1024
DISK_RESERVE_BYTES = 256 * 2**20
_BATCH_BYTES = 2**20  # hand the parser 1 MiB at a time: few thread hops, little memory
_FILE_DOC = {
    "train_x": "training features, .npy or .npz (one array)",
    "train_y": "training labels: 1-D integer class ids or float regression targets",
    "test_x": "test features, same sample shape as train_x",
    "test_y": "test labels, same kind as train_y",
}
OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", *ARRAY_FIELDS],
                    "properties": {
                        "name": {"type": "string", "maxLength": 64, "description": NAME_RULE},
                        "allow_pickle": {
                            "type": "boolean",
                            "default": False,
                            "description": "accept .pkl files (loading one runs code)",
                        },
                        **{
                            field: {"type": "string", "format": "binary", "description": doc}
                            for field, doc in _FILE_DOC.items()
                        },
                    },
                }
            }
        },
    }
}


async def receive_dataset(request: Request, datasets: DatasetStore) -> DatasetInfo:
    """Stream a multipart dataset upload into `datasets`; the checked dataset's info."""
    receiver = DatasetReceiver(datasets, request.headers.get("content-type", ""))
    declared = request.headers.get("content-length", "")
    try:
        await run_in_threadpool(receiver.open, int(declared) if declared.isdigit() else 0)
        batch = bytearray()
        try:
            async for chunk in request.stream():
                batch += chunk
                if len(batch) >= _BATCH_BYTES:
                    await run_in_threadpool(receiver.feed, bytes(batch))
                    batch.clear()
        except ClientDisconnect as exc:  # nobody to answer; keep it out of the error log
            raise InvalidInputError("body: the client went away during the upload") from exc
        await run_in_threadpool(receiver.feed, bytes(batch))
        return await run_in_threadpool(receiver.finish)
    finally:
        await run_in_threadpool(receiver.close)


def disk_reserve(total_bytes: int) -> int:
    """Bytes an upload leaves free on the home's disk: 256 MiB, or a sixteenth of a disk
    too small for that (a fixed 256 MiB would refuse every upload to a small home)."""
    return min(DISK_RESERVE_BYTES, total_bytes // 16)


class DatasetReceiver:
    """Multipart parts -> a `StagedDataset`; remembers the first refusal and ignores the rest."""

    def __init__(self, datasets: DatasetStore, content_type: str) -> None:
        kind, options = parse_options_header(content_type)
        if kind != b"multipart/form-data" or b"boundary" not in options:
            raise InvalidInputError(
                f"body: a dataset upload is a multipart/form-data form with the fields name, "
                f"{', '.join(ARRAY_FIELDS)} (got content type {content_type or 'none'!r})"
            )
        self.datasets = datasets
        self.refusal: KubeMLError | None = None
        self.text: dict[str, str] = {}
        self._boundary = options[b"boundary"]
        self._staged: Any = None
        self._parser: MultipartParser | None = None
        self._header_name = self._header_value = b""
        self._disposition = b""
        self._field: str | None = None
        self._is_file = False
        self._buffer = bytearray()
        self._ended = False

    def open(self, declared_bytes: int = 0) -> None:
        try:
            self._staged = self.datasets.stage()
            disk = shutil.disk_usage(self._staged.dir)
        except OSError as exc:
            raise disk_error("cannot stage the upload", exc.filename or "", exc) from exc
        reserve = disk_reserve(disk.total)  # a full disk would break the home's SQLite too
        free = disk.free - reserve
        if declared_bytes > free:
            raise PayloadTooLargeError(
                f"the upload is {declared_bytes / 2**20:.1f} MiB but the disk of "
                f"{self._staged.root} has {max(0, free) / 2**20:.1f} MiB to spare (it keeps "
                f"{reserve / 2**20:.0f} MiB free); free space there and send it again"
            )
        self._parser = MultipartParser(
            self._boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value_part,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def feed(self, data: bytes) -> None:
        if self.refusal is not None or not data or self._parser is None:
            return  # refused: drain the rest of the body without keeping it
        try:
            self._parser.write(data)
        except KubeMLError as exc:
            self._refuse(exc)
        except OSError as exc:  # the disk filled while the body streamed in
            what = f"cannot store the upload's {self._field or 'file'}"
            self._refuse(disk_error(what, self._staged.dir, exc, "send it again"))
        except MultipartParseError as exc:
            self._refuse(InvalidInputError(f"body: not a valid multipart form ({exc})"))

    def finish(self) -> DatasetInfo:
        if self.refusal is None and not self._ended:
            self._refuse(InvalidInputError("body: ended before the multipart form did (cut off?)"))
        if self.refusal is not None:
            raise self.refusal
        if "name" not in self.text:
            raise InvalidInputError("name: missing; send the dataset's name as a form field")
        flag = self.text.get("allow_pickle", "false").strip().lower()
        if flag not in ("true", "false", "1", "0"):
            raise InvalidInputError(f"allow_pickle: must be true or false (got {flag!r})")
        self._check_new(self.text["name"])
        try:
            return self._staged.publish(self.text["name"], allow_pickle=flag in ("true", "1"))
        except OSError as exc:  # unpacking a pickle or an archive ran out of room
            what = f"cannot store dataset {self.text['name']!r}"
            raise disk_error(what, self._staged.dir, exc, "send it again") from exc

    def close(self) -> None:
        if self._staged is not None:
            self._staged.discard()

    def _refuse(self, error: KubeMLError) -> None:
        self.refusal = error
        self.close()  # free the disk now; the rest of the body is only drained

    def _check_new(self, name: str) -> None:
        check_name("dataset", name)
        try:
            self.datasets.get(name)
        except NotFoundError:
            return
        except KubeMLError:
            pass  # a damaged dataset of this name still takes the name
        raise AlreadyExistsError(f"dataset {name!r} already exists; delete it first")

    # -- parser callbacks (raise to refuse) ------------------------------------------------
    def _part_begin(self) -> None:
        self._disposition = b""
        self._field, self._is_file = None, False
        self._buffer.clear()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        field = options.get(b"name", b"").decode("utf-8", "replace")
        self._field, self._is_file = field, b"filename" in options
        if self._is_file:
            if field not in ARRAY_FIELDS:
                raise InvalidInputError(
                    f"{field or 'a file part'}: unknown file field; send {', '.join(ARRAY_FIELDS)}"
                )
            filename = options[b"filename"].decode("utf-8", "replace")
            self._staged.begin_file(field, PurePath(filename).name or f"{field}.npy")
        elif field in ARRAY_FIELDS:
            raise InvalidInputError(f"{field}: send it as a file part (with a filename)")
        elif field not in TEXT_FIELDS:
            raise InvalidInputError(
                f"{field or 'a part without a name'}: unknown form field; send name, "
                f"allow_pickle and the files {', '.join(ARRAY_FIELDS)}"
            )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self._staged.write(data[start:end])
            return
        self._buffer += data[start:end]
        if len(self._buffer) > MAX_TEXT_BYTES:
            raise InvalidInputError(f"{self._field}: longer than {MAX_TEXT_BYTES} bytes")

    def _part_end(self) -> None:
        if self._is_file:
            self._staged.end_file()
            return
        assert self._field is not None
        try:
            value = self._buffer.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{self._field}: not UTF-8 text") from exc
        self.text[self._field] = value
        if self._field == "name":
            self._check_new(value)  # a taken name is refused before the files arrive

    def _end(self) -> None:
        self._ended = True
