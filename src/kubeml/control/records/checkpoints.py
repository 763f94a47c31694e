"""Durable checkpoints of train tasks: the reference model and its exact position, atomically."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeml.api.schemas import EpochRecord
from kubeml.control.plan.position import Position
from kubeml.errors import KubeMLError, StorageError
from kubeml.stores.files import write_whole

if TYPE_CHECKING:
    import torch

    # Returns a checkpoint's model and outer state, taken earlier, gathered late.
    Fill = Callable[[], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]


@dataclass
class Checkpoint:
    """Everything a task continues from: nothing here is derived from what is not here.

    `records` are the epochs completed so far (the history is rewritten from them on
    resume, so the two never disagree); `outer_state` is the state of a server-side
    optimizer (tensors by name), empty when the merge is a plain average;
    `function_states` are the live functions' optimizer states at the position (by
    func_id; empty at an epoch's start, where every function starts afresh).
    """

    position: Position
    model: dict[str, torch.Tensor]
    records: list[EpochRecord]
    outer_state: dict[str, Any] = field(default_factory=dict)
    function_states: dict[int, dict[str, Any]] = field(default_factory=dict)
    sequence: int = 0  # a later checkpoint of the same run has a larger sequence

    @property
    def label(self) -> str:
        p = self.position
        if p.round == 0:
            return f"epoch {p.epoch + 1} start"
        return f"epoch {p.epoch + 1}, round {p.round} ({p.samples} samples merged)"


class CheckpointStore:
    """One checkpoint file per task under the home: written to a temporary file, fsynced,
    then renamed over the old one, so a crash or a full disk leaves the old or the new
    one, never half (and no temporary file).
    Loaded with `weights_only=True`, so a checkpoint can never run code."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._written: dict[str, int] = {}

    def _path(self, task_id: str) -> Path:
        return self.root / f"{task_id}.ckpt"

    def save(self, task_id: str, checkpoint: Checkpoint) -> bool:
        """Write `checkpoint`; False (and nothing written) when a later one is already on disk."""
        import torch

        payload = {
            "version": 1,
            "sequence": checkpoint.sequence,
            "position": checkpoint.position.to_state(),
            "model": checkpoint.model,
            "records": [r.model_dump(mode="json") for r in checkpoint.records],
            "outer_state": checkpoint.outer_state,
            "function_states": checkpoint.function_states,
        }
        path = self._path(task_id)
        with self._lock:
            if self._written.get(task_id, -1) > checkpoint.sequence:
                return False
            write_whole(
                path,
                lambda f: torch.save(payload, f),
                f"cannot write the checkpoint of task {task_id!r}",
                durable=True,  # the rename itself survives a power cut
                then=f"`kubeml task resume --id {task_id}` continues from the last checkpoint",
            )
            self._written[task_id] = checkpoint.sequence
            return True

    def load(self, task_id: str) -> Checkpoint | None:
        import torch

        path = self._path(task_id)
        if not path.exists():
            return None
        try:
            payload = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as exc:
            raise StorageError(f"the checkpoint of task {task_id!r} is unreadable: {exc}") from exc
        return Checkpoint(
            position=Position.from_state(payload["position"]),
            model=payload["model"],
            records=[EpochRecord.model_validate(r) for r in payload["records"]],
            outer_state=payload.get("outer_state", {}),
            function_states=payload.get("function_states", {}),  # absent before 0.2
            sequence=int(payload.get("sequence", 0)),
        )

    def delete(self, task_id: str) -> None:
        with self._lock:
            self._path(task_id).unlink(missing_ok=True)
            self._written.pop(task_id, None)


class CheckpointWriter:
    """Takes one task's checkpoints: at once at epoch ends and stops, in a thread
    mid-epoch (so the functions never wait for the disk), at most one at a time and
    every `every_s` seconds; a later checkpoint always wins over an earlier one."""

    def __init__(
        self,
        store: CheckpointStore | None,
        task_id: str,
        every_s: float,
        log: Callable[[str], None],
    ) -> None:
        self.store, self.task_id, self.every_s, self.log = store, task_id, every_s, log
        self.sequence = 0
        self._last = time.monotonic()
        self._thread: threading.Thread | None = None

    def _busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def due(self) -> bool:
        return self.every_s > 0 and time.monotonic() - self._last >= self.every_s

    def accepts(self, background: bool) -> bool:
        return self.store is not None and not (background and self._busy())

    def write(self, checkpoint: Checkpoint, *, background: bool, fill: Fill | None = None) -> None:
        """Save `checkpoint` now, or in a thread; `fill` (in the thread) returns its model
        and outer state, fixed when it was taken but gathered from elsewhere."""
        if self.store is None:
            return
        checkpoint.sequence, self.sequence = self.sequence, self.sequence + 1
        self._last = time.monotonic()
        if not background:
            self.store.save(self.task_id, checkpoint)
            return
        self._thread = threading.Thread(
            target=self._save_quietly, args=(checkpoint, fill), daemon=True
        )
        self._thread.start()

    def _save_quietly(self, checkpoint: Checkpoint, fill: Fill | None) -> None:
        assert self.store is not None
        try:
            if fill is not None:
                checkpoint.model, checkpoint.outer_state = fill()
            self.store.save(self.task_id, checkpoint)
        except KubeMLError as exc:  # the next one may succeed; the epoch-end one must
            self.log(f"checkpoint at {checkpoint.label} failed: {exc}")

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def delete(self) -> None:
        """The task succeeded: its final model stands, the checkpoint goes."""
        if self.store is not None:
            self.join()
            self.store.delete(self.task_id)
