"""Model store: the task's reference model, each function's published weights, final models.

Transient weights (reference and published) live in flat files in shared memory
(`/dev/shm` when the OS has it) and are memory-mapped once per process, so a K-AVG round
moves whole buffers and never pickles. Final models are `torch.save`d under the kubeml
home and loaded with `weights_only=True`; they stay until the task's history is deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeml.errors import NotFoundError
from kubeml.procs import pid_alive
from kubeml.stores.files import allocate, write_whole
from kubeml.stores.flat import FlatLayout
from kubeml.stores.function_state import FunctionStateFiles
from kubeml.stores.interfaces import ControlModels, FunctionModels, Groups

if TYPE_CHECKING:
    import torch


class LocalModelStore(FunctionModels, ControlModels):
    """Model store on this machine: shared-memory scratch plus files under the home.

    One object works on every side: functions (in worker processes that unpickle it) and
    the control plane map the same shared-memory files. A function's tensors live in its
    published file (`share_into`), so the merge reads them in place and writes the new
    model back there (`shares_published`)."""

    shares_published = True

    def __init__(self, scratch_dir: Path, models_dir: Path) -> None:
        self._open(Path(scratch_dir), Path(models_dir))

    def _open(self, scratch_dir: Path, models_dir: Path) -> None:
        self.scratch_dir, self.models_dir = scratch_dir, models_dir
        self.finals = FinalModelFiles(self.models_dir)
        self._state_files = FunctionStateFiles(self.scratch_dir)
        self.states = self._state_files
        self._maps: dict[Path, Any] = {}
        self._inodes: dict[Path, int] = {}  # of each mapped file, to see it replaced
        self._layouts: dict[str, FlatLayout] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"scratch_dir": self.scratch_dir, "models_dir": self.models_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._open(state["scratch_dir"], state["models_dir"])  # maps are per process

    # -- files --------------------------------------------------------------------------
    def _task_dir(self, task_id: str) -> Path:
        return self.scratch_dir / task_id

    def _groups(self, path: Path, layout: FlatLayout, *, create: bool) -> Groups:
        import numpy as np
        import torch

        with self._lock:
            mm = self._maps.get(path)
            if mm is None:
                if create and not path.exists():
                    allocate(path, layout.nbytes)
                elif not path.exists():
                    raise NotFoundError(f"no weights at {path}: the task's transient state is gone")
                mm = np.memmap(path, dtype=np.uint8, mode="r+", shape=(layout.nbytes,))
                self._maps[path] = mm
                self._inodes[path] = os.stat(path).st_ino
        groups = {}
        for dtype, offset, numel in layout.byte_spans():
            tdtype = getattr(torch, dtype)
            raw = torch.from_numpy(mm[offset : offset + numel * tdtype.itemsize])
            groups[dtype] = raw.view(tdtype)
        return groups

    def layout(self, task_id: str) -> FlatLayout:
        layout = self._layouts.get(task_id)
        if layout is None:
            path = self._task_dir(task_id) / "layout.json"
            try:
                layout = FlatLayout.from_json(path.read_text())
            except FileNotFoundError as exc:
                raise NotFoundError(f"task {task_id!r} has no reference model yet") from exc
            self._layouts[task_id] = layout
        return layout

    # -- function side ------------------------------------------------------------------
    def write_reference(self, task_id: str, state: dict[str, torch.Tensor]) -> None:
        layout = FlatLayout.from_state(state)
        task_dir = self._task_dir(task_id)
        write_whole(
            task_dir / "layout.json",
            lambda f: f.write(layout.to_json().encode()),
            f"cannot write the reference model of task {task_id!r}",
        )
        self._layouts[task_id] = layout
        layout.flatten_into(state, self._groups(task_dir / "reference.bin", layout, create=True))

    def load_reference_into(self, task_id: str, state: dict[str, torch.Tensor]) -> None:
        layout = self.layout(task_id)
        groups = self._groups(self._task_dir(task_id) / "reference.bin", layout, create=False)
        layout.unflatten_into(groups, state)

    def publish(self, task_id: str, func_id: int, state: dict[str, torch.Tensor]) -> Any:
        layout = self.layout(task_id)
        path = self._task_dir(task_id) / f"function-{func_id}.bin"
        layout.flatten_into(state, self._groups(path, layout, create=True))
        return None

    def load_published_into(
        self, task_id: str, func_id: int, state: dict[str, torch.Tensor]
    ) -> None:
        layout = self.layout(task_id)
        path = self._task_dir(task_id) / f"function-{func_id}.bin"
        layout.unflatten_into(self._groups(path, layout, create=False), state)

    def share_into(self, task_id: str, func_id: int, network: torch.nn.Module) -> None:
        """The network's parameters and buffers become views of the function's published
        file (`tensor.data` is swapped: the Parameter objects, and optimizers holding
        them, stay), so `publish` finds them in place. Left alone, and copied at each
        publish as before: tensors on a GPU, non-contiguous ones (channels-last), and any
        whose shape or dtype differs from the task's layout (`publish` then fails as
        before)."""
        import torch

        layout = self.layout(task_id)
        path = self._task_dir(task_id) / f"function-{func_id}.bin"
        places = layout.views(self._groups(path, layout, create=True))
        with torch.no_grad():
            for name, tensor in network.state_dict(keep_vars=True).items():
                place = places.get(name)
                if place is not None and _shareable(tensor, place):
                    place.copy_(tensor)
                    tensor.data = place

    # -- parameter-server side ----------------------------------------------------------
    def published_groups(self, task_id: str, func_id: int, handle: Any) -> Groups:
        path = self._task_dir(task_id) / f"function-{func_id}.bin"
        return self._groups(path, self.layout(task_id), create=False)

    def reference_groups(self, task_id: str) -> Groups:
        path = self._task_dir(task_id) / "reference.bin"
        return self._groups(path, self.layout(task_id), create=False)

    def clear_task(self, task_id: str) -> None:
        task_dir = self._task_dir(task_id)
        with self._lock:
            for path in [p for p in self._maps if p.parent == task_dir]:
                del self._maps[path]
                self._inodes.pop(path, None)
        self._layouts.pop(task_id, None)
        self._state_files.forget(task_id)
        shutil.rmtree(task_dir, ignore_errors=True)

    def begin(self, task_id: str) -> None:
        """Unmap every task's files but this one's (warm workers call it between tasks),
        and this task's files that were removed or replaced since (a task resumed on a
        warm worker that ran it before: the control plane cleared and re-created them)."""
        keep = self._task_dir(task_id)
        replaced = False
        with self._lock:
            for path in list(self._maps):
                mine = path.parent == keep
                if not mine or not _same_file(path, self._inodes.get(path)):
                    replaced |= mine
                    del self._maps[path]
                    self._inodes.pop(path, None)
        for other in [t for t in self._layouts if t != task_id or replaced]:
            del self._layouts[other]
        self._state_files.forget(task_id, others=True)  # its own re-map when re-created

    # -- scratch ownership --------------------------------------------------------------
    def claim_scratch(self) -> None:
        """Own the scratch folder; what a dead server left there is removed first."""
        owner = self.scratch_dir / ".owner"
        try:
            pid: int | None = int(owner.read_text())
        except (OSError, ValueError):
            pid = None
        if pid is not None and pid != os.getpid() and pid_alive(pid):
            return  # another live server uses this home's scratch: leave it alone
        if pid != os.getpid():
            shutil.rmtree(self.scratch_dir, ignore_errors=True)
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        owner.write_text(str(os.getpid()))

    def release_scratch(self) -> None:
        """Remove the scratch folder this server owns (at shutdown)."""
        owner = self.scratch_dir / ".owner"
        with contextlib.suppress(OSError, ValueError):
            if int(owner.read_text()) == os.getpid():
                shutil.rmtree(self.scratch_dir, ignore_errors=True)

    # -- durable models -----------------------------------------------------------------
    def save_final(self, task_id: str) -> None:
        self.finals.save(task_id, self.layout(task_id).views(self.reference_groups(task_id)))

    def load_final(self, task_id: str) -> dict[str, torch.Tensor]:
        return self.finals.load(task_id)

    def has_final(self, task_id: str) -> bool:
        return self.finals.exists(task_id)

    def final_version(self, task_id: str) -> str | None:
        return self.finals.version(task_id)

    def delete_final(self, task_id: str) -> None:
        self.finals.delete(task_id)


def _shareable(tensor: torch.Tensor, place: torch.Tensor) -> bool:
    return (
        tensor.device.type == "cpu"
        and tensor.layout == place.layout
        and tensor.dtype == place.dtype
        and tensor.shape == place.shape
        and tensor.is_contiguous()
        and not tensor.is_quantized
    )


def _same_file(path: Path, inode: int | None) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except FileNotFoundError:
        return False


class FinalModelFiles:
    """Trained models on disk, one `torch.save` file per task, for every control-plane store.

    Files are written whole or not at all (`write_whole`: a full disk leaves the last
    model as it was) and loaded with `weights_only=True`, so a model file can never run
    code.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, task_id: str) -> Path:
        return self.root / f"{task_id}.pt"

    def save(self, task_id: str, state: dict[str, torch.Tensor]) -> None:
        import torch

        # Clone: a view into a flat buffer would otherwise save the whole buffer each time.
        state = {k: v.clone() for k, v in state.items()}
        write_whole(
            self._path(task_id),
            lambda f: torch.save(state, f),
            f"cannot save the model of task {task_id!r}",
            then=f"`kubeml task resume --id {task_id}` continues from the last checkpoint",
        )

    def load(self, task_id: str) -> dict[str, torch.Tensor]:
        import torch

        path = self._path(task_id)
        if not path.exists():
            raise NotFoundError(f"task {task_id!r} has no trained model")
        return torch.load(path, weights_only=True, map_location="cpu")

    def exists(self, task_id: str) -> bool:
        return self._path(task_id).exists()

    def version(self, task_id: str) -> str | None:
        """Inode, size and modification time: every save replaces the file, so a new
        model never shows the old one's version."""
        try:
            st = self._path(task_id).stat()
        except FileNotFoundError:
            return None
        return f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"

    def delete(self, task_id: str) -> None:
        self._path(task_id).unlink(missing_ok=True)
