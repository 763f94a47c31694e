"""A model state as a few flat buffers, one per dtype, so weights move as whole blocks.

Copying a state dict tensor by tensor costs a Python call per tensor; copying one flat
buffer per dtype is a memcpy. The layout is derived from the state dict once per task and
shared by the parameter server and every function of the task.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

_ALIGN = 64  # bytes; every group starts on a cache line


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # in elements, inside its dtype group

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class FlatLayout:
    """Where each tensor of a state dict lives inside the per-dtype flat buffers."""

    entries: tuple[Entry, ...]
    group_numel: tuple[tuple[str, int], ...]  # (dtype, numel), in file order

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> FlatLayout:
        sizes: dict[str, int] = {}
        entries = []
        for name, tensor in state.items():
            dtype = str(tensor.dtype).removeprefix("torch.")
            offset = sizes.get(dtype, 0)
            entries.append(Entry(name, dtype, tuple(tensor.shape), offset))
            sizes[dtype] = offset + tensor.numel()
        return cls(tuple(entries), tuple(sorted(sizes.items())))

    def to_json(self) -> str:
        return json.dumps(
            {
                "entries": [[e.name, e.dtype, list(e.shape), e.offset] for e in self.entries],
                "groups": [list(g) for g in self.group_numel],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> FlatLayout:
        raw = json.loads(text)
        entries = tuple(Entry(n, d, tuple(s), o) for n, d, s, o in raw["entries"])
        return cls(entries, tuple((d, int(n)) for d, n in raw["groups"]))

    def byte_spans(self) -> list[tuple[str, int, int]]:
        """(dtype, byte offset, numel) for each group of a flat file."""
        import torch

        spans, pos = [], 0
        for dtype, numel in self.group_numel:
            spans.append((dtype, pos, numel))
            nbytes = numel * getattr(torch, dtype).itemsize
            pos += -(-nbytes // _ALIGN) * _ALIGN
        return spans

    @property
    def nbytes(self) -> int:
        import torch

        total = 0
        for dtype, numel in self.group_numel:
            total += -(-(numel * getattr(torch, dtype).itemsize) // _ALIGN) * _ALIGN
        return total

    def over(self, buffer: np.ndarray) -> dict[str, torch.Tensor]:
        """Flat per-dtype tensors over one byte buffer of `nbytes` (no copy)."""
        import torch

        groups = {}
        with warnings.catch_warnings():
            # Buffers from Ray's object store are read-only; they are only read through these.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for dtype, offset, numel in self.byte_spans():
                tdtype = getattr(torch, dtype)
                raw = torch.from_numpy(buffer[offset : offset + numel * tdtype.itemsize])
                groups[dtype] = raw.view(tdtype)
        return groups

    def views(self, groups: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict as views into the flat groups (no copy)."""
        return {
            e.name: groups[e.dtype][e.offset : e.offset + e.numel].view(e.shape)
            for e in self.entries
        }

    def flatten_into(self, state: dict[str, torch.Tensor], groups: dict[str, torch.Tensor]) -> None:
        """Copy every tensor of `state` into its place in `groups`; a tensor that already
        lives there (`LocalModelStore.share_into`) is not copied onto itself."""
        import torch

        starts = _starts(groups)
        with torch.no_grad():
            for e in self.entries:
                source = state[e.name]
                if not _lives_at(source, starts[e.dtype], e.offset):
                    groups[e.dtype][e.offset : e.offset + e.numel].copy_(source.reshape(-1))

    def unflatten_into(
        self, groups: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
    ) -> None:
        """Copy the flat groups back into the (live) tensors of `state`, in place; a
        tensor that lives in `groups` already is not copied onto itself."""
        import torch

        starts = _starts(groups)
        with torch.no_grad():
            for e in self.entries:
                target = state[e.name]
                if not _lives_at(target, starts[e.dtype], e.offset):
                    target.copy_(groups[e.dtype][e.offset : e.offset + e.numel].view(e.shape))

    def check_matches(self, state: dict[str, torch.Tensor]) -> None:
        if FlatLayout.from_state(state) != self:
            from kubeml.errors import StorageError

            raise StorageError(
                "the model's parameters differ from the task's reference model "
                "(did the network change between invocations?)"
            )


def _starts(groups: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """(address, item size) of each group, to find a tensor in place without slicing."""
    return {dtype: (g.data_ptr(), g.element_size()) for dtype, g in groups.items()}


def _lives_at(tensor: torch.Tensor, start: tuple[int, int], offset: int) -> bool:
    """The tensor is the group's elements from `offset` on (checked per entry, every
    round: two integer reads, not a slice; shapes match by the task's layout)."""
    address, itemsize = start
    return tensor.data_ptr() == address + offset * itemsize and tensor.is_contiguous()
