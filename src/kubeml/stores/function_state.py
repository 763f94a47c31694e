"""Functions' own state between rounds (their optimizers'), in shared memory, so a round
replayed on a fresh worker or resumed from a checkpoint starts from the same bits.

A state dict is split into its tensors, copied into one flat file (a memcpy per dtype,
like published weights), and a small skeleton (everything else, with the tensors' places
marked) saved beside it after the data, so a function killed while writing leaves the
older skeleton, which does not name this round. Each function keeps two rounds by parity:
the state for round r+1 is written while round r is still unmerged, and a replay of round
r reads the other file. An epoch's first round has its own two files, by the epoch's
parity: the next epoch's is written at this epoch's end, while a replay of this epoch's
first round may still read this one.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeml.errors import StorageError
from kubeml.stores.files import allocate, write_whole
from kubeml.stores.flat import FlatLayout
from kubeml.stores.interfaces import FunctionStates

if TYPE_CHECKING:
    import torch

_TENSOR = "__kubeml_tensor__"


class FunctionStateFiles(FunctionStates):
    """`state-<func_id>-<slot>.bin` (the tensors) and `.meta` (epoch, round, layout,
    skeleton) in a task's scratch folder under `scratch_dir`; the slot is the round's
    parity, or `e` and the epoch's parity for an epoch's first round."""

    def __init__(self, scratch_dir: Path) -> None:
        self.scratch_dir = Path(scratch_dir)
        self._maps: dict[Path, tuple[Any, int]] = {}  # path -> (memmap, inode), per process
        self._claimed: set[tuple[str, int, int]] = set()  # (task, func_id, bytes), per process
        self._lock = threading.Lock()

    def save(
        self, task_id: str, func_id: int, epoch: int, round_index: int, state: dict[str, Any]
    ) -> None:

        tensors: dict[str, torch.Tensor] = {}
        skeleton = _split(state, "", tensors)
        layout = FlatLayout.from_state(tensors)
        base = self._base(task_id, func_id, epoch, round_index)
        self._claim(task_id, func_id, layout, skeleton)
        meta = base.with_suffix(".meta")
        meta.unlink(missing_ok=True)  # the data below is not whole until the new meta
        groups = self._groups(base.with_suffix(".bin"), layout)
        assert groups is not None  # created
        layout.flatten_into(tensors, groups)
        _write_meta(meta, task_id, func_id, epoch, round_index, layout, skeleton)

    def load(
        self, task_id: str, func_id: int, epoch: int, round_index: int
    ) -> dict[str, Any] | None:
        import torch

        base = self._base(task_id, func_id, epoch, round_index)
        try:
            meta = torch.load(base.with_suffix(".meta"), weights_only=True)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StorageError(f"the kept state at {base} is unreadable: {exc}") from exc
        if (meta.get("epoch"), meta.get("round")) != (epoch, round_index):
            return None
        layout = FlatLayout.from_json(meta["layout"])
        groups = self._groups(base.with_suffix(".bin"), layout, create=False)
        if groups is None:
            return None
        views = layout.views(groups)
        # Copies: the function writes this file again two rounds on.
        return _join(meta["skeleton"], {k: v.clone() for k, v in views.items()})

    def _claim(self, task_id: str, func_id: int, layout: FlatLayout, skeleton: Any) -> None:
        """Every slot's files of `func_id` take their space at the function's first save (a
        skeleton that names no round holds the meta's), so a scratch that fills later never
        stops an epoch's end from keeping its state."""
        if (task_id, func_id, layout.nbytes) in self._claimed:
            return
        for slot in ("0", "1", "e0", "e1"):
            path = self.scratch_dir / task_id / f"state-{func_id}-{slot}.bin"
            try:
                claimed = path.stat().st_size == layout.nbytes
            except FileNotFoundError:
                claimed = False
            if not claimed:
                allocate(path, layout.nbytes)
            meta = path.with_suffix(".meta")
            if not meta.exists():
                _write_meta(meta, task_id, func_id, -1, -1, layout, skeleton)
        self._claimed.add((task_id, func_id, layout.nbytes))

    def _base(self, task_id: str, func_id: int, epoch: int, round_index: int) -> Path:
        slot = f"{round_index % 2}" if round_index else f"e{epoch % 2}"
        return self.scratch_dir / task_id / f"state-{func_id}-{slot}"

    def forget(self, task_id: str, *, others: bool = False) -> None:
        """Unmap a task's files (its scratch is being removed); `others`: every task's
        but this one's (a warm worker starting an invocation of `task_id`), so their
        shared-memory pages go with their files."""
        task_dir = self.scratch_dir / task_id
        with self._lock:
            for path in [p for p in self._maps if (p.parent == task_dir) != others]:
                del self._maps[path]

    def _groups(
        self, path: Path, layout: FlatLayout, *, create: bool = True
    ) -> dict[str, torch.Tensor] | None:
        """The file's flat groups, mapped once per process; `create`: (re)allocate it to
        the layout's size, else None when it is missing or of another size."""
        import numpy as np
        import torch

        with self._lock:
            mapped = self._maps.get(path)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            if st is None or st.st_size != layout.nbytes:
                if not create:
                    return None
                allocate(path, layout.nbytes)  # space behind it: no SIGBUS on a full scratch
                st, mapped = os.stat(path), None
            # New, re-created, or resized (same inode) since it was mapped here.
            if mapped is None or mapped[1] != st.st_ino or len(mapped[0]) != layout.nbytes:
                mapped = (
                    np.memmap(path, dtype=np.uint8, mode="r+", shape=(layout.nbytes,)),
                    st.st_ino,
                )
                self._maps[path] = mapped
            mm = mapped[0]
        groups = {}
        for dtype, offset, numel in layout.byte_spans():
            tdtype = getattr(torch, dtype)
            groups[dtype] = torch.from_numpy(mm[offset : offset + numel * tdtype.itemsize]).view(
                tdtype
            )
        return groups


def _write_meta(
    meta: Path, task_id: str, func_id: int, epoch: int, round_index: int,
    layout: FlatLayout, skeleton: Any,
) -> None:  # fmt: skip
    import torch

    kept = {"epoch": epoch, "round": round_index, "layout": layout.to_json(), "skeleton": skeleton}
    write_whole(
        meta,
        lambda f: torch.save(kept, f),
        f"cannot keep the optimizer state of function {func_id} of task {task_id!r}",
        then=f"`kubeml task resume --id {task_id}` continues from the last checkpoint",
    )


def _split(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` with every tensor moved to `tensors` under its path and marked in place."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu()
        return (_TENSOR, path)
    if isinstance(value, dict):
        return {k: _split(v, f"{path}/{k}", tensors) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_split(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    return value


def _join(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, tuple) and len(skeleton) == 2 and skeleton[0] == _TENSOR:
        return tensors[skeleton[1]]
    if isinstance(skeleton, dict):
        return {k: _join(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list | tuple):
        items = [_join(v, tensors) for v in skeleton]
        return items if isinstance(skeleton, list) else tuple(items)
    return skeleton
