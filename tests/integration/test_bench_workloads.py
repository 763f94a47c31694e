"""Every workload of the harness (`benchmarks.specs.SPECS`), cheaply, on a cut of its data:
its function file is a kubeml function that trains, scores and serves; the baselines
drive the same file as plain PyTorch, from the weights kubeml's init invocation builds,
and score a model as kubeml's `validate` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.data import FIELDS, Arrays, encode
from benchmarks.records import Workload
from benchmarks.reference import (
    ROOT,
    Split,
    build_model,
    epoch_order,
    evaluate,
    load_function,
    make_optimizer,
    train_steps,
)
from benchmarks.specs import SPECS, prepare

SIZES, SEED = {"train_x": 256, "train_y": 256, "test_x": 200, "test_y": 200}, 3
TINY_LR = 1e-12  # every optimizer of the files then leaves the weights as they started


@pytest.fixture(scope="module", params=list(SPECS))
def workload(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Workload:
    """The workload as `--quick` prepares it, its arrays cut to `SIZES`."""
    full = prepare(request.param, tmp_path_factory.mktemp(request.param), quick=True)
    arrays = Arrays.load(full.data_dir)
    cut = Arrays(*(np.ascontiguousarray(getattr(arrays, f)[: SIZES[f]]) for f in FIELDS))
    cut.save(full.data_dir / "cut")
    return replace(full, data_dir=full.data_dir / "cut", train_size=256, test_size=200, seed=SEED)


def _splits(workload: Workload) -> tuple[Split, Split]:
    arrays = Arrays.load(workload.data_dir)
    fn = workload.function_file
    return Split(arrays.train_x, arrays.train_y, fn), Split(arrays.test_x, arrays.test_y, fn)


def _infer_data(workload: Workload) -> list[Any]:
    if workload.dataset == "stdlib-chars":
        return ["    def __init__(self", "import o"]
    return Arrays.load(workload.data_dir).test_x[:2].tolist()


def test_the_spec_is_one_every_row_can_run(workload: Workload) -> None:
    spec = SPECS[workload.name]
    assert 0 < spec.goal_accuracy < 100 and spec.epochs >= 1 and spec.what
    load_function(spec.function_file)  # one network, one KubeDataset, one KubeModel
    train, test = _splits(workload)
    model = build_model(SEED, workload.function_file)
    optimizer = make_optimizer(model, workload.lr, workload.function_file)
    order = epoch_order(len(train), SEED, 0)[: 2 * workload.batch_size]
    samples, loss = train_steps(model, optimizer, train, order, workload.batch_size)
    assert samples == len(order) and np.isfinite(loss)
    correct, count = evaluate(model, test, 0, len(test), workload.batch_size)
    assert 0 <= correct <= count == len(test)


def test_kubeml_starts_from_the_baselines_weights_and_scores_as_they_do(
    workload: Workload, make_engine: Callable[..., Any]
) -> None:
    from kubeml.api.schemas import TaskState

    engine = make_engine("inline")
    engine.create_function(workload.function, (ROOT / workload.function_file).read_text())
    arrays = Arrays.load(workload.data_dir)
    engine.create_dataset(workload.dataset, *(np.asarray(getattr(arrays, f)) for f in FIELDS))
    task_id = engine.train(
        function=workload.function,
        dataset=workload.dataset,
        epochs=1,
        batch_size=workload.batch_size,
        lr=TINY_LR,
        parallelism=1,
        static=True,
        validate_every=1,
        seed=SEED,
    )
    info = engine.wait(task_id, timeout_s=120)
    assert info.state is TaskState.SUCCEEDED, info.error
    trained = engine.models.load_final(task_id)
    built = build_model(SEED, workload.function_file)
    for name, weight in built.named_parameters():
        torch.testing.assert_close(trained[name], weight.detach(), rtol=0, atol=1e-8)
    built.load_state_dict(trained)  # BatchNorm's running statistics too
    _, test = _splits(workload)
    correct, count = evaluate(built, test, 0, len(test), workload.batch_size)
    scored = engine.get_history(task_id).epochs[-1].accuracy
    assert scored == pytest.approx(100.0 * correct / count, abs=1e-6)
    predictions = engine.infer(task_id, _infer_data(workload))
    assert len(predictions) == 2


def test_the_character_model_reads_characters_as_the_harness_writes_them() -> None:
    module = load_function(SPECS["chars"].function_file).model.infer.__globals__
    text = "def f(x):\n\treturn x  # é\n"
    assert np.array_equal(module["encode"](text), encode(text))
    assert module["decode"](encode("a b\n")) == "a b\n"
