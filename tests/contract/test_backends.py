"""One suite for `FunctionBackend`: every backend runs the same function file with the same
results (inline, process, and ray on a local one-node Ray)."""

from __future__ import annotations

import asyncio

import pytest

from kubeml.api.schemas import TaskState
from tests.conftest import function_source
from tests.contract.conftest import RAY

BACKENDS = ["inline", "process", RAY]


@pytest.fixture(params=BACKENDS)
def engine(request, make_engine, digits):
    if request.param == "ray":
        request.getfixturevalue("local_ray")
    engine = make_engine(request.param)
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )
    return engine


def _train(engine, source, name="mlp", **request):
    engine.create_function(name, source)
    task_id = engine.train(function=name, dataset="digits", **request)
    return task_id, engine.wait(task_id, timeout_s=120)


def test_training_learns_and_infers(engine, digits):
    task_id, info = _train(engine, function_source(), epochs=3, k=4, lr=0.05, validate_every=1)
    assert info.state is TaskState.SUCCEEDED, info.traceback
    epochs = engine.get_history(task_id).epochs
    assert epochs[-1].train_loss < epochs[0].train_loss
    assert epochs[-1].accuracy > epochs[0].accuracy and epochs[-1].accuracy > 85
    predictions = engine.infer(task_id, digits["test_x"][:50].tolist())
    hits = sum(int(p == t) for p, t in zip(predictions, digits["test_y"][:50], strict=True))
    assert hits >= 40
    # The REST route's way (`FunctionBackend.serve`, awaited on an event loop): the same.
    awaited = asyncio.run(engine.infer_async(task_id, digits["test_x"][:50].tolist()))
    assert awaited == predictions


def test_user_exception_fails_the_task_with_the_users_traceback(engine):
    _, info = _train(engine, function_source(FAIL_AT_BATCH=2), epochs=2)
    assert info.state is TaskState.FAILED
    assert "raised ValueError: user code exploded on purpose" in info.error
    assert "in _step" in info.traceback and "user code exploded" in info.traceback


def test_user_logs_reach_the_task_log(engine):
    task_id, info = _train(engine, function_source(), epochs=1)
    assert info.state is TaskState.SUCCEEDED
    messages = [(line.source, line.message) for line in engine.logs_of(task_id)]
    assert any(s == "function-0" and "first batch of epoch 1" in m for s, m in messages)
    assert any(s == "function-1" and "first batch of epoch 1" in m for s, m in messages)
    assert any(s == "job" and m.startswith("epoch 1:") for s, m in messages)
    if engine.backend.name != "inline":  # a worker captures print and logging too
        assert any("printed by function 0" in m for _, m in messages)
        assert any("root logger line" in m for _, m in messages)


def test_user_code_that_exits_fails_the_task_naming_function_and_hook(engine):
    _, info = _train(engine, function_source(EXIT_AT_BATCH=1), "exits", epochs=1)
    assert info.state is TaskState.FAILED
    assert "(func_id 0, train, epoch 0): train() raised SystemExit(0)" in info.error
    assert "sys.exit(0)" in info.traceback
    _, info = _train(engine, function_source(), epochs=1)  # the backend still serves
    assert info.state is TaskState.SUCCEEDED, info.traceback


def test_gpu_without_cuda_fails_with_a_clear_message(engine):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    _, info = _train(engine, function_source(USE_GPU=True), epochs=1)
    assert info.state is TaskState.FAILED
    assert "gpu=True but no CUDA device is visible" in info.error
