"""The epoch's validation rides on its last round: the functions of that round score their
test slices with the merged model, so an epoch costs no validation invocations. Shown on
the process backend with the real 8x8 digits: the figures are those of the final model
scored here; a function SIGKILLed while it scores leaves its slice to a validation
invocation, and the task ends with the uninterrupted run's figures and bits; a function
that hangs while it scores is still caught by the round timeout."""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kubeml.api.schemas import TaskState
from tests.conftest import FUNCTIONS, function_source

pytestmark = pytest.mark.slow

TASK: dict[str, Any] = dict(
    function="mlp", dataset="digits", epochs=3, batch_size=16, k=4, lr=0.05,
    parallelism=2, static=True, seed=5, validate_every=1,
)  # fmt: skip


def _train(engine: Any, digits: dict[str, np.ndarray], source: str, **task: Any) -> Any:
    engine.create_function("mlp", source)
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )
    return engine.wait(engine.train(**{**TASK, **task}), 240)


def _invocations(engine: Any, task_id: str) -> int:
    found = re.search(
        rf'^kubeml_job_function_invocations_total{{jobid="{task_id}"}} (\S+)$',
        engine.metrics_text(),
        re.M,
    )
    assert found, "no invocation count for the task"
    return int(float(found.group(1)))


def _score(weights: dict[str, torch.Tensor], digits: dict[str, np.ndarray]) -> tuple[float, float]:
    """The test accuracy (percent) and loss of `weights`, computed here on the whole split."""
    spec = importlib.util.spec_from_file_location("digits_mlp_here", FUNCTIONS / "digits_mlp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    network = module.MLP()
    network.load_state_dict(weights)
    network.eval()
    x = torch.from_numpy(digits["test_x"].astype(np.float32).reshape(-1, 64) / 16.0)
    y = torch.from_numpy(digits["test_y"].astype(np.int64))
    with torch.no_grad():
        out = network(x)
    accuracy = float((out.argmax(1) == y).double().mean()) * 100
    return accuracy, float(F.cross_entropy(out, y))


@pytest.fixture(scope="module")
def uninterrupted(
    digits: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, dict[str, torch.Tensor], int]:
    from kubeml.control.tasks.engine import Engine
    from kubeml.settings import Settings

    tmp = tmp_path_factory.mktemp("uninterrupted")
    settings = Settings(home=tmp / "home", backend="process", capacity=2, shm_dir=tmp / "shm")
    with Engine(settings) as engine:
        info = _train(engine, digits, function_source())
        assert info.state is TaskState.SUCCEEDED, info.traceback
        history = engine.get_history(info.id)
        return history, engine.models.load_final(info.id), _invocations(engine, info.id)


def test_the_last_round_scores_the_epoch_without_an_invocation(uninterrupted, digits):
    history, weights, invocations = uninterrupted
    epochs = history.epochs
    assert [e.epoch for e in epochs] == [1, 2, 3]
    assert invocations == 1 + 2 * 3, "init, then 2 train invocations an epoch and no more"
    assert all(e.accuracy is not None and e.val_loss is not None for e in epochs)
    assert epochs[-1].accuracy > epochs[0].accuracy and epochs[-1].accuracy > 85
    assert epochs[-1].train_loss < epochs[0].train_loss
    accuracy, loss = _score(weights, digits)  # the final model is the last epoch's model
    assert epochs[-1].accuracy == pytest.approx(accuracy, abs=1e-4)
    assert epochs[-1].val_loss == pytest.approx(loss, rel=1e-4)


def test_a_function_killed_while_scoring_leaves_its_slice_to_an_invocation(
    make_engine, digits, uninterrupted, tmp_path
):
    history, weights, _ = uninterrupted
    engine = make_engine("process")
    marker = tmp_path / "killed"
    info = _train(engine, digits, function_source(KILL_IN_VALIDATE=str(marker)))
    assert marker.exists(), "function 1 never scored its slice"
    assert info.state is TaskState.SUCCEEDED, info.traceback
    epochs = engine.get_history(info.id).epochs
    assert [e.failures for e in epochs] == [1, 0, 0]
    # Its slice was scored again by a validation invocation: the same figures, exactly.
    assert [e.accuracy for e in epochs] == [e.accuracy for e in history.epochs]
    assert [e.val_loss for e in epochs] == [e.val_loss for e in history.epochs]
    assert _invocations(engine, info.id) == 1 + 2 * 3 + 1
    final = engine.models.load_final(info.id)
    assert all(torch.equal(final[k], weights[k]) for k in weights)
    logs = "\n".join(line.message for line in engine.logs_of(info.id))
    assert "function 1 lost" in logs and "its lane was already done" in logs


def test_a_function_that_hangs_while_scoring_fails_the_task(make_engine, digits):
    engine = make_engine("process", round_timeout_s=3.0)
    info = _train(engine, digits, function_source(SCORE_SLEEP_S=60.0), epochs=1)
    assert info.state is TaskState.FAILED
    assert "function(s) [1] made no progress for 3 s" in (info.error or ""), info.error
