"""The parameter server of one task: merges each round's published weights into the reference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from kubeml.control.merge.outer import OuterConfig, OuterOptimizer
from kubeml.runtime.sync import RoundReport
from kubeml.stores.interfaces import ServerModels


class ParameterServer:
    """Owns the task's reference model between rounds; `merge` is the round's one update.

    The update is the task's outer optimizer (`kubeml.control.merge.outer`): the reference
    becomes the sample-weighted average of the weights the functions published (`average`,
    plain K-AVG) or takes a Nesterov step along the averaged change (`nesterov`, and
    `adaptive`, whose momentum follows how well the change agrees with it). The
    optimizer's state (momentum) lives here, beside the reference it updates;
    `state_dict` / `load_state_dict` are what a checkpoint saves and restores.
    """

    def __init__(
        self, task_id: str, models: ServerModels, outer: OuterConfig | None = None
    ) -> None:
        self.task_id = task_id
        self.models = models
        self.outer_config = outer or OuterConfig()
        self._outer: OuterOptimizer | None = None  # built at the first merge (needs the layout)
        self._pending_state: Mapping[str, torch.Tensor] | None = None

    def merge(self, reports: Sequence[RoundReport], settle: bool = False) -> bool:
        """Merge one round: `reports` are the round's functions, sorted by func_id;
        `settle`: the functions will load the model itself (here the reference is).

        Returns True if the merged model was also written into the published weights of
        the functions that trained and go on (a store whose published weights are the
        functions' own memory): they need not load the reference."""
        trained = [r for r in reports if r.samples > 0]
        if not trained:
            return False  # nobody trained (every shard was empty): the reference stays
        remote = self.models.remote_merge(self.task_id)
        if remote is not None:  # the model lives on parameter shards: they merge
            remote.merge(trained, settle)
            return False
        states = [self.models.published_groups(self.task_id, r.func_id, r.handle) for r in trained]
        shared = self.models.shares_published
        copies = [s for s, r in zip(states, trained, strict=True) if shared and not r.final]
        self._optimizer().step(
            self.models.reference_groups(self.task_id),
            states,
            [r.samples for r in trained],
            copies,
        )
        return shared

    def _optimizer(self) -> OuterOptimizer:
        if self._outer is None:
            self._outer = OuterOptimizer(self.outer_config, self.models.layout(self.task_id))
            if self._pending_state is not None:
                self._outer.load_state_dict(self._pending_state)
                self._pending_state = None
        return self._outer

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The outer optimizer's state (momentum buffers), plain tensors; a sharded task's
        also holds the functions' view of a compressed model (`view.<dtype>`)."""
        remote = self.models.remote_merge(self.task_id)
        if remote is not None:
            return remote.outer_state()
        if self._outer is None:
            return {k: v.clone() for k, v in (self._pending_state or {}).items()}
        return self._outer.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore the outer optimizer's state (applied at the next merge if not built).

        A sharded task's shards take it now, before any function reads their view."""
        remote = self.models.remote_merge(self.task_id)
        if remote is not None:
            remote.load_outer_state(state)
            return
        # A central merge has no view: a sharded checkpoint's, resumed here, is dropped.
        state = {k: v for k, v in state.items() if not k.startswith("view.")}
        if self._outer is None:
            self._pending_state = dict(state)
        else:
            self._outer.load_state_dict(state)
