"""The function-side round loop, driven with a fake sync channel and fake stores."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from kubeml.errors import FunctionError
from kubeml.runtime.invocation import FunctionCode, Invocation, Mode
from kubeml.runtime.rounds import FunctionContext, RoundDriver
from kubeml.runtime.sync import Release, RoundReport
from kubeml.sdk.dataset import KubeDataset
from kubeml.sdk.model import KubeModel, driven_by
from kubeml.stores.interfaces import FunctionModels, ShardSource

N_SAMPLES, BATCH = 20, 4  # five batches a shard


class FakeShards(ShardSource):
    """y = 3x on 20 samples; records what was read."""

    def __init__(self) -> None:
        self.reads: list[tuple[str, str, tuple]] = []

    def read(self, name, split, ranges):
        self.reads.append((name, split, tuple(ranges)))
        x = np.linspace(-1, 1, N_SAMPLES, dtype=np.float32).reshape(-1, 1)
        return x, 3 * x


class FakeModels(FunctionModels):
    """An in-memory reference (all zeros) and the states each round published."""

    def __init__(self) -> None:
        self.reference = {"weight": torch.zeros(1, 1), "bias": torch.zeros(1)}
        self.published: list[dict[str, torch.Tensor]] = []
        self.loads = 0
        self.published_loads = 0

    def write_reference(self, task_id, state):
        self.reference = {k: v.clone() for k, v in state.items()}

    def load_reference_into(self, task_id, state):
        self.loads += 1
        for key, tensor in state.items():
            tensor.copy_(self.reference[key])

    def publish(self, task_id, func_id, state):
        self.published.append({k: v.clone() for k, v in state.items()})
        return len(self.published)

    def load_published_into(self, task_id, func_id, state):
        self.published_loads += 1
        for key, tensor in state.items():
            tensor.copy_(self.reference[key])  # the merge left the reference there

    def load_final(self, task_id):
        return self.reference


class FakeSync:
    """Answers every report with `proceed`, except False from round `stop_at` on."""

    def __init__(self, stop_at: int | None = None, in_place: bool = False) -> None:
        self.reports: list[RoundReport] = []
        self.stop_at = stop_at
        self.in_place = in_place
        self.beats = 0

    def progress(self, func_id: int) -> None:
        self.beats += 1

    def publish(self, report: RoundReport) -> Release:
        self.reports.append(report)
        proceed = self.stop_at is None or report.round < self.stop_at
        return Release(proceed=proceed, in_place=self.in_place)


class Line(KubeDataset):
    def __init__(self) -> None:
        super().__init__("line")

    def __getitem__(self, index):
        return self.data[index], self.labels[index]

    def __len__(self):
        return len(self.data)


class Regression(KubeModel):
    nan_at: int | None = None
    draws: list[float]  # one torch.rand() per batch: what dropout would see

    def __init__(self) -> None:
        super().__init__(nn.Linear(1, 1), Line())
        self.optimizers_built = 0
        self.losses: list[float] = []
        self.draws = []

    def configure_optimizers(self):
        self.optimizers_built += 1
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train(self, x, y, batch_index):
        if batch_index == self.nan_at:
            return math.nan
        self.draws.append(torch.rand(1).item())
        self.optimizer.zero_grad()
        loss = nn.functional.mse_loss(self(x), y)
        loss.backward()
        self.optimizer.step()
        self.losses.append(loss.item())
        return loss.item()

    def validate(self, batch, batch_index):
        x, y = batch
        return 100.0, nn.functional.mse_loss(self(x), y).item()

    def infer(self, data):
        return self(torch.tensor(data, dtype=torch.float32).reshape(-1, 1))

    def init(self, model):
        nn.init.constant_(model.weight, 0.5)


def _run(
    mode=Mode.TRAIN, *, k=2, stop_at=None, optimizer_state="keep", nan_at=None, in_place=False,
    **inv,
):  # fmt: skip
    invocation = Invocation(
        mode=mode,
        task_id="t",
        function=FunctionCode("f", "sha", "/nowhere"),
        dataset="line",
        k=k,
        lr=0.1,
        batch_size=BATCH,
        optimizer_state=optimizer_state,
        ranges=((0, N_SAMPLES),),
        **inv,
    )
    shards, models, sync = FakeShards(), FakeModels(), FakeSync(stop_at, in_place)
    ctx = FunctionContext(invocation, shards, models, sync, logging.getLogger("test"))
    with driven_by(RoundDriver(ctx)):
        model = Regression()
        model.nan_at = nan_at
        result = model.start()
    return result, model, models, sync, shards


def test_k_steps_a_round_with_a_short_last_round():
    result, model, models, sync, shards = _run(k=2)
    assert [(r.round, r.batches, r.samples, r.final) for r in sync.reports] == [
        (0, 2, 8, False),
        (1, 2, 8, False),
        (2, 1, 4, True),
    ]
    assert [r.handle for r in sync.reports] == [1, 2, 3]  # the store's handle travels
    assert result.rounds == 3 and result.samples == N_SAMPLES
    assert models.loads == 3  # every round starts from the reference
    assert shards.reads == [("line", "train", ((0, N_SAMPLES),))]  # the runtime hands the shard
    assert model.dataset.is_training()


def test_after_an_in_place_release_a_round_starts_from_the_published_weights():
    _, _, models, sync, _ = _run(k=2, in_place=True)
    assert len(sync.reports) == 3
    assert models.loads == 1 and models.published_loads == 2  # the first round: the reference


def test_every_round_trains_away_from_the_reference_and_the_loss_falls():
    _, model, models, sync, _ = _run(k=-1, epoch=3)
    assert len(sync.reports) == 1 and sync.reports[0].batches == 5  # K=-1: one round an epoch
    assert models.published[0]["weight"].item() > 0.1  # moved towards 3 from 0
    assert model.losses[-1] < model.losses[0]
    assert sync.reports[0].loss_sum == pytest.approx(sum(model.losses))
    assert model.epoch == 4 and model.lr == 0.1 and model.batch_size == BATCH  # from 1


def test_a_stop_release_ends_the_invocation_after_that_round():
    result, _, _, sync, _ = _run(k=1, stop_at=1)
    assert [r.round for r in sync.reports] == [0, 1]
    assert result.rounds == 2 and result.samples == 2 * BATCH


def test_a_given_order_and_first_round_are_followed_with_a_heartbeat_per_batch():
    order = tuple(range(N_SAMPLES - 1, 7, -1))  # a replay of the last 12 samples, reversed
    result, _, _, sync, _ = _run(k=2, order=order, round=3)
    assert [(r.round, r.samples, r.final) for r in sync.reports] == [(3, 8, False), (4, 4, True)]
    assert result.rounds == 2 and result.samples == 12
    assert sync.beats == 3  # one per batch


def test_a_nan_loss_fails_naming_the_batch():
    with pytest.raises(FunctionError, match=r"train\(\) returned loss nan at epoch 0, batch 3"):
        _run(k=2, nan_at=3)


@pytest.mark.parametrize(("state", "built"), [("keep", 1), ("reset", 3)])
def test_the_optimizer_is_kept_or_rebuilt_each_round(state, built):
    _, model, _, sync, _ = _run(k=2, optimizer_state=state)
    assert len(sync.reports) == 3 and model.optimizers_built == built


def test_validation_scores_the_reference_without_gradients():
    result, model, models, sync, shards = _run(Mode.VALIDATE)
    assert shards.reads[0][1] == "test" and not model.dataset.is_training()
    assert models.loads == 1 and sync.reports == []
    assert result.samples == N_SAMPLES and result.accuracy == 100.0
    assert result.loss == pytest.approx(float(np.mean((3 * np.linspace(-1, 1, 20)) ** 2)), 1e-5)


def test_init_writes_the_users_initial_weights_and_infer_reads_the_final_model():
    _, _, models, _, shards = _run(Mode.INIT)
    assert models.reference["weight"].item() == 0.5 and shards.reads == []
    result, *_ = _run(Mode.INFER, infer_data=[[1.0], [2.0]])
    assert result.output == [[0.0], [0.0]]  # the fake final model is all zeros


def test_start_outside_an_invocation_says_how_to_run_the_file():
    with pytest.raises(Exception, match="runs only inside a kubeml invocation"):
        Regression().start()
    with pytest.raises(RuntimeError, match="fills data and labels when the model starts"):
        len(Line())


def test_a_replayed_round_draws_the_random_numbers_the_original_round_drew():
    _, whole, _, _, _ = _run(k=2, order=tuple(range(N_SAMPLES)), round=0)
    _, replay, _, _, _ = _run(k=2, order=tuple(range(2 * BATCH, N_SAMPLES)), round=1)
    assert len(whole.draws) == 5 and len(replay.draws) == 3
    assert replay.draws == whole.draws[2:]  # rounds 1 and 2, batch for batch
    _, other_seed, _, _, _ = _run(k=2, order=tuple(range(N_SAMPLES)), round=0, seed=1)
    assert other_seed.draws != whole.draws
    assert len(set(whole.draws[0::2])) == 3  # every round draws afresh, not a repeat
