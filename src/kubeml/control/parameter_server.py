"""The parameter server of one task: merges each round's published weights into the reference."""

from __future__ import annotations

from collections.abc import Sequence

from kubeml.control.merge import weighted_average_into
from kubeml.runtime.sync import RoundReport
from kubeml.stores.interfaces import ServerModels


class ParameterServer:
    """Owns the task's reference model between rounds; `merge` is the round's one update.

    Today the update is plain K-AVG: the reference becomes the sample-weighted average of
    the weights the functions published. A server-side outer optimizer (ARCHITECTURE 3b:
    Nesterov momentum on the averaged change) replaces the body of `merge` and keeps its
    state here, beside the reference it updates.
    """

    def __init__(self, task_id: str, models: ServerModels) -> None:
        self.task_id = task_id
        self.models = models

    def merge(self, reports: Sequence[RoundReport]) -> None:
        """Merge one round: `reports` are the round's functions, sorted by func_id."""
        trained = [r for r in reports if r.samples > 0]
        if not trained:
            return  # nobody trained (every shard was empty): the reference stays
        states = [self.models.published_groups(self.task_id, r.func_id, r.handle) for r in trained]
        weighted_average_into(
            self.models.reference_groups(self.task_id), states, [r.samples for r in trained]
        )
