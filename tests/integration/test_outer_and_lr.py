"""The Nesterov outer step and lr scaling through the real engine (inline backend)."""

from __future__ import annotations

import pytest

from kubeml.api.schemas import TaskState
from tests.conftest import function_source


@pytest.fixture
def engine(make_engine, digits):
    engine = make_engine("inline", capacity=2)
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )
    engine.create_function("mlp", function_source())
    return engine


def test_nesterov_outer_steps_train_a_batchnorm_mlp(engine):
    common = dict(function="mlp", dataset="digits", epochs=3, parallelism=2, k=4, lr=0.02)
    common.update(validate_every=1, static=True)
    runs = {}
    for outer in ("average", "nesterov", "adaptive"):
        task_id = engine.train(**common, outer_optimizer=outer, outer_lr=0.7, outer_momentum=0.9)
        info = engine.wait(task_id, 120)
        assert info.state is TaskState.SUCCEEDED, info.traceback
        runs[outer] = engine.get_history(task_id).epochs
    for outer in ("nesterov", "adaptive"):
        epochs = runs[outer]
        assert epochs[-1].train_loss < 0.5 * epochs[0].train_loss, outer
        assert epochs[-1].accuracy > 85.0, outer
        # the outer step is not a no-op: the models differ from plain averaging's
        assert epochs[0].accuracy != runs["average"][0].accuracy or (
            epochs[0].train_loss != runs["average"][0].train_loss
        ), outer


def test_linear_lr_scaling_follows_n_at_every_resize(engine):
    task_id = engine.train(
        function="mlp", dataset="digits", epochs=4, parallelism=1, lr=0.02, lr_scaling="linear"
    )
    info = engine.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, info.traceback
    epochs = engine.get_history(task_id).epochs
    for record in epochs:
        assert record.lr == pytest.approx(0.02 * record.parallelism)
    assert [e.parallelism for e in epochs][:3] == [1, 1, 2]
    assert any("lr 0.02 -> 0.04" in line.message for line in engine.logs_of(task_id))
