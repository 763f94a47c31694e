"""A function's optimizer state goes on into the next epoch, as a torch loop's optimizer
does, while N stays (`--optimizer-state keep`); `reset` rebuilds it every round.

The digits MLP logs, at each epoch's first batch, how many parameters' momentum buffers
its optimizer starts the step with (6: every parameter's; 0: a fresh optimizer).
"""

from __future__ import annotations

from typing import Any

import pytest

from kubeml.api.schemas import TaskState
from tests.integration.conftest import kept_at_epoch_starts
from tests.integration.test_recovery import add_mlp_and_digits

pytestmark = pytest.mark.slow

TASK: dict[str, Any] = dict(
    function="mlp", dataset="digits", epochs=3, batch_size=32, k=4, lr=0.05,
    parallelism=2, static=True, seed=5,
)  # fmt: skip


def test_momentum_goes_on_into_the_next_epoch_and_reset_starts_every_round_fresh(
    make_engine, digits
):
    engine = make_engine("process")
    add_mlp_and_digits(engine, digits)
    keep = engine.wait(engine.train(**TASK), 120)
    assert keep.state is TaskState.SUCCEEDED, keep.traceback
    assert kept_at_epoch_starts(engine, keep.id) == {1: [0, 0], 2: [6, 6], 3: [6, 6]}
    losses = [e.train_loss for e in engine.get_history(keep.id).epochs]
    assert losses[2] < losses[0], losses
    reset = engine.wait(engine.train(**TASK, optimizer_state="reset"), 120)
    assert reset.state is TaskState.SUCCEEDED, reset.traceback
    assert kept_at_epoch_starts(engine, reset.id) == {1: [0, 0], 2: [0, 0], 3: [0, 0]}
