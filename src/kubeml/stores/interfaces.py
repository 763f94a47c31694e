"""The store interfaces, split by who uses them: a function, the parameter server, the
trained models. A backend builds the implementations it needs (`create_backend`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch

    from kubeml.stores.flat import FlatLayout

Split = Literal["train", "test"]
Groups = dict[str, "torch.Tensor"]  # flat per-dtype buffers of one model state


# -- what a function uses ---------------------------------------------------------------------
class FunctionStates(ABC):
    """A function's own state between rounds (its optimizer's), kept so that a round
    replayed on a fresh worker, or resumed from a checkpoint, starts from the same bits,
    and so that the next epoch's lane goes on with it. A state is named by the round it
    starts: (epoch, round); an epoch's last round keeps (epoch + 1, 0). Two rounds are kept
    per function: a function lost after keeping the next round's state, but before its
    round merged, is replayed from the older one."""

    @abstractmethod
    def save(
        self, task_id: str, func_id: int, epoch: int, round_index: int, state: dict[str, Any]
    ) -> None:
        """Keep `state` as what `func_id` starts round `round_index` of `epoch` with."""

    @abstractmethod
    def load(
        self, task_id: str, func_id: int, epoch: int, round_index: int
    ) -> dict[str, Any] | None:
        """What `save` kept for that round; None if nothing was."""

    def gather(
        self, task_id: str, epoch: int, round_index: int, func_ids: Sequence[int]
    ) -> dict[int, dict[str, Any]]:
        """Every one of `func_ids`' states for the round (a checkpoint), or none."""
        states = {f: self.load(task_id, f, epoch, round_index) for f in func_ids}
        if any(state is None for state in states.values()):
            return {}
        return states  # type: ignore[return-value]


class ShardSource(ABC):
    """Where a function reads the samples of its shard.

    A train invocation reads its lane a piece at a time (a window or two of chunks, see
    `kubeml.runtime.feed`), each piece as one `read` of sorted ranges."""

    # True: `read` may run on a background thread while the function trains (read-ahead).
    prefetches = False

    @abstractmethod
    def read(
        self, name: str, split: Split, ranges: Sequence[tuple[int, int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Copy out the samples in `ranges` (start, stop) of one split, in order."""

    def begin(self, task_id: str) -> None:  # noqa: B027 - only caching readers need it
        """An invocation of `task_id` starts here: drop what other tasks left cached."""


# The user's init run again where a function starts (None: it raised).
InitialBuild = Callable[[], "dict[str, torch.Tensor] | None"]


class FunctionModels(ABC):
    """A function's view of the weights: the reference in, its own weights out."""

    @abstractmethod
    def write_reference(self, task_id: str, state: dict[str, torch.Tensor]) -> None:
        """Publish `state` as the task's reference model (init; fixes the task's layout)."""

    @abstractmethod
    def load_reference_into(self, task_id: str, state: dict[str, torch.Tensor]) -> None:
        """Overwrite the live tensors of `state` with the reference model, in place."""

    @abstractmethod
    def publish(self, task_id: str, func_id: int, state: dict[str, torch.Tensor]) -> Any:
        """Store a function's weights for the current round; returns a handle for the job."""

    @abstractmethod
    def load_final(self, task_id: str) -> dict[str, torch.Tensor]:
        """The task's trained model (inference)."""

    def load_model_into(self, task_id: str, state: dict[str, torch.Tensor]) -> None:
        """The task's model as it stands (validation). The reference, except where the
        functions train from a compressed copy of it (a sharded task's `view`)."""
        self.load_reference_into(task_id, state)

    def adopt_initial(self, task_id: str, build: InitialBuild) -> bool:
        """Keep the initial model `build()` makes here (the user's init again) if it is
        the task's, bit for bit, instead of reading it (a sharded task's functions)."""
        return False

    def begin(self, task_id: str) -> None:  # noqa: B027 - only caching stores need it
        """An invocation of `task_id` starts here: drop what other tasks left mapped."""

    def share_into(self, task_id: str, func_id: int, network: torch.nn.Module) -> None:  # noqa: B027
        """Move the network's tensors into the memory `publish` writes, so publishing
        them copies nothing. Stores whose published weights travel (Ray) keep copying."""

    def load_published_into(
        self, task_id: str, func_id: int, state: dict[str, torch.Tensor]
    ) -> None:
        """After a release `in_place`: the function's published weights hold the merged
        model; load them (tensors shared there need nothing). Any store may answer with
        the reference, which holds the same values."""
        self.load_reference_into(task_id, state)

    def eager(self, task_id: str) -> EagerWeights | None:
        """Weights for overlapped rounds (on parameter shards); None: rounds wait."""
        return None

    # Where the function keeps its optimizer's state between rounds; None: nowhere.
    states: FunctionStates | None = None


class EagerWeights(Protocol):
    """A function's weights when its rounds overlap their sync (the "eager" outer step of
    DiLoCo, arXiv 2502.12996): a round starts from the function's own weights while the
    last round's change is merged, and its change moves onto the merged model once that
    arrives. `begin` and `rebase` run on the function's thread; `deposit` and `catch_up`
    on the sync's, never while the function's thread touches the weights."""

    def begin(self) -> None:
        """The round starting now starts from the model just loaded."""

    def rebase(self, state: dict[str, torch.Tensor]) -> None:
        """The round's change (`state` less its start) onto the merged model the weights
        hold now; `state` and the next round's start become that sum."""

    def deposit(self) -> Any:
        """Send the change `rebase` took to the shards; the handle for the round report."""

    def catch_up(self) -> bool:
        """After the round's release: bring the held model to the merged one; False when
        it could not (the next `rebase` reads the whole model again)."""


# -- what the parameter server uses -----------------------------------------------------------
@dataclass(frozen=True)
class ShardRequest:
    """The parameter plane a task asks for: `shards` None (the store's choice), 0 (the
    central merge) or S; the precision its rounds travel in; its outer optimizer."""

    shards: int | None
    precision: str
    outer_name: str
    outer_lr: float
    outer_momentum: float


class RemoteMerge(ABC):
    """A task whose model lives on parameter shards: the merge, and the outer optimizer's
    state, are theirs."""

    @abstractmethod
    def merge(self, reports: Sequence[Any], settle: bool = False) -> None:
        """Merge the round of `reports` (`RoundReport`s of the functions that trained, by
        func_id); raises `RoundLostError` when it cannot, having put everything back as it
        was. `settle` (an epoch's last round): the model after the round is exactly what
        the functions load (a compressed plane drops the rounding it would carry), so they
        can score it without reading it."""

    @abstractmethod
    def outer_state(self) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def load_outer_state(self, state: Mapping[str, torch.Tensor]) -> None: ...

    @abstractmethod
    def snapshot(self) -> Callable[[], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        """Fix the model and the outer state as they are now; the callable returns them
        (the model's tensors by name, the outer state) later, from another thread."""


class ServerModels(ABC):
    """The parameter server's view: the reference it merges into, the published weights."""

    # True: published groups are the functions' own memory, writable, read back by them
    # (`load_published_into`), so a merge may leave the new model there for them.
    shares_published = False

    @abstractmethod
    def layout(self, task_id: str) -> FlatLayout: ...

    @abstractmethod
    def write_reference(self, task_id: str, state: dict[str, torch.Tensor]) -> None:
        """Set the reference model (resuming a task from its saved model)."""

    @abstractmethod
    def reference_groups(self, task_id: str) -> Groups:
        """Writable flat groups of the reference model (the merge writes here)."""

    @abstractmethod
    def published_groups(self, task_id: str, func_id: int, handle: Any) -> Groups:
        """Flat groups of a function's published weights. The merge reads them; where the
        store `shares_published`, it also writes the new model into them (the function's
        own tensors) for the next round."""

    @abstractmethod
    def clear_task(self, task_id: str) -> None:
        """Drop the transient weights of a task."""

    def request_shards(self, task_id: str, request: ShardRequest) -> None:  # noqa: B027
        """The job's wish for its parameter plane, before the task's model exists; a
        store that cannot shard merges centrally (the default)."""

    def remote_merge(self, task_id: str) -> RemoteMerge | None:
        """The task's sharded merge, once its model is on its shards; None: central."""
        return None

    # The same functions' states, for checkpoints and resumes; None: not kept.
    states: FunctionStates | None = None


# -- trained models ---------------------------------------------------------------------------
class TrainedModels(ABC):
    """Final models of tasks: saved after every epoch, kept until the history is deleted."""

    @abstractmethod
    def save_final(self, task_id: str) -> None:
        """Persist the current reference model as the task's trained model."""

    @abstractmethod
    def load_final(self, task_id: str) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def has_final(self, task_id: str) -> bool: ...

    def final_version(self, task_id: str) -> str | None:
        """A token that changes whenever the task's trained model does; None: no model.

        Warm workers keep a served model loaded until its version changes; "" (a store
        that cannot tell versions apart) has the model loaded on every call."""
        return "" if self.has_final(task_id) else None

    @abstractmethod
    def delete_final(self, task_id: str) -> None: ...


class ControlModels(ServerModels, TrainedModels):
    """What the control plane holds: the parameter server's weights and trained models."""
