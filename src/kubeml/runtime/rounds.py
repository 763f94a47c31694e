"""The function side of the K-AVG protocol: drives the user's `KubeModel` through one
invocation (init, an epoch of rounds, validation or inference)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from kubeml.errors import FunctionError
from kubeml.runtime.batching import batch_length, to_device
from kubeml.runtime.feed import ShardFeed
from kubeml.runtime.hooks import call_init, resolve_device, step_fn
from kubeml.runtime.invocation import ROUND_PHASES, Invocation, InvocationResult, Mode
from kubeml.runtime.overlap import InFlight
from kubeml.runtime.seeds import derive_seed
from kubeml.runtime.serving import serve, served_models
from kubeml.runtime.sync import Release, RoundReport, SyncChannel
from kubeml.sdk.model import KubeArgs, KubeModel
from kubeml.stores.interfaces import FunctionModels, ShardSource, Split

# `self.task` in the hooks: the 2021 library's names for what an invocation does.
_KEPT_CLASS = "kubeml_optimizer"  # beside a kept optimizer state: the class that kept it
_TASK_NAMES = {Mode.INIT: "init", Mode.TRAIN: "train", Mode.VALIDATE: "val", Mode.INFER: "infer"}


@dataclass(frozen=True)
class FunctionContext:
    """What one invocation runs against: its arguments, stores, sync channel and logger."""

    invocation: Invocation
    shards: ShardSource
    models: FunctionModels
    sync: SyncChannel | None
    logger: logging.Logger


class RoundDriver:
    """Drives the user's model for one invocation; installed as the SDK's `Driver` while
    the function's `main()` runs. `hook` names the user code running now, so an error
    can say where it came from."""

    def __init__(self, ctx: FunctionContext) -> None:
        self.ctx = ctx
        self.hook = "main()"
        self.result: InvocationResult | None = None
        self.feed: ShardFeed | None = None  # the samples of a train or validate invocation

    # -- the SDK's Driver ------------------------------------------------------------------
    def attach(self, model: KubeModel) -> None:
        inv = self.ctx.invocation
        # The user's epochs count from 1, as the history, the job's log and the 2021
        # library number them (an lr schedule `if self.epoch >= 100` means the 100th).
        epoch = inv.epoch + 1 if inv.mode in (Mode.TRAIN, Mode.VALIDATE) else 0
        model.lr, model.batch_size, model.epoch = inv.lr, inv.batch_size, epoch
        model.func_id, model.parallelism = inv.func_id, inv.parallelism
        model.task = _TASK_NAMES[inv.mode]
        model.args = KubeArgs(
            job_id=inv.task_id, task=model.task, func_id=inv.func_id,
            parallelism=inv.parallelism, k=inv.k, lr=inv.lr, batch_size=inv.batch_size,
            epoch=epoch,
        )  # fmt: skip
        model.logger = self.ctx.logger

    def run(self, model: KubeModel) -> InvocationResult:
        inv = self.ctx.invocation
        model.device = resolve_device(model.gpu, inv.func_id)
        model.network.to(model.device)
        self._hand_shard(model)
        run = {
            Mode.INIT: self._init,
            Mode.TRAIN: self._train,
            Mode.VALIDATE: self._validate,
            Mode.INFER: self._infer,
        }[inv.mode]
        try:
            self.result = run(model)
        finally:
            if self.feed is not None:
                self.feed.close()
        self.hook = "main()"
        return self.result

    def _hand_shard(self, model: KubeModel) -> None:
        """The dataset holds the invocation's first piece of samples (`ShardFeed`)."""
        inv, dataset = self.ctx.invocation, model.dataset
        if inv.mode not in (Mode.TRAIN, Mode.VALIDATE):  # init and infer need no samples
            dataset.load_shard(np.empty((0,)), np.empty((0,)), training=False)
            return
        size = sum(b - a for a, b in inv.ranges)
        if inv.mode is Mode.VALIDATE:
            order = np.arange(size, dtype=np.int64)
        elif inv.order:  # the job's exact order: a replay or a re-split continues it
            order = np.asarray(inv.order, dtype=np.int64)
        else:
            rng = np.random.default_rng(derive_seed(inv.seed, inv.epoch, inv.func_id, "order"))
            order = rng.permutation(size)
        split: Split = "train" if inv.mode is Mode.TRAIN else "test"
        self.feed = ShardFeed(
            self.ctx.shards, dataset, split, inv.ranges, order, model.batch_size, inv.chunk_samples
        )

    # -- the modes -------------------------------------------------------------------------
    def _init(self, model: KubeModel) -> InvocationResult:
        inv = self.ctx.invocation
        self.hook = "init()"
        call_init(model)
        self.hook = "main()"
        self.ctx.models.write_reference(inv.task_id, model.network.state_dict())
        return InvocationResult(inv.func_id, Mode.INIT)

    def _train(self, model: KubeModel) -> InvocationResult:
        """K local steps a round: load the reference, build or keep the optimizer, train,
        publish, wait for the release (or, with `overlap`, train the next round meanwhile:
        `InFlight`); until the shard is done or the job says stop. The epoch's last release
        may ask for the test slice's scores (`_validate`)."""
        inv, models, sync = self.ctx.invocation, self.ctx.models, self.ctx.sync
        if sync is None:
            raise FunctionError("a train invocation needs a sync channel")
        train_step = step_fn(model.train, "train")
        # The task's first round: the network holds the initial model if the store takes
        # the one built here (`FunctionModels.adopt_initial`). Before the state is taken:
        # an init() may replace the network's tensors.
        built = inv.rebuild_init and models.adopt_initial(inv.task_id, lambda: self._rebuild(model))
        models.share_into(inv.task_id, inv.func_id, model.network)  # publishing copies less
        state = model.network.state_dict()
        batches = self.feed
        assert batches is not None
        n_batches = len(batches)
        k = inv.k if inv.k > 0 else max(1, n_batches)
        it = iter(batches)
        model.network.train()
        batch_index, round_index, total_loss, total_samples = 0, inv.round, 0.0, 0
        in_place = False  # the last release left the merged model in the published file
        eager = flight = None  # overlapped rounds: the weights, the last round's sync
        phases = [0.0] * len(ROUND_PHASES)
        try:
            while True:
                t0 = time.perf_counter()
                if built:
                    built = False
                elif flight is not None:
                    pass  # it goes on from its own weights while the last round merges
                elif in_place:
                    models.load_published_into(inv.task_id, inv.func_id, state)
                else:
                    models.load_reference_into(inv.task_id, state)
                if inv.overlap and flight is None:
                    eager = models.eager(inv.task_id)
                    if eager is not None:
                        eager.begin()
                # torch's RNG (dropout, augmentation) is a function of the round's position:
                # a replayed or resumed round draws what the uninterrupted run drew.
                seed = derive_seed(inv.seed, inv.epoch, inv.func_id, "round", round_index)
                torch.manual_seed(seed)
                if model.optimizer is None or inv.optimizer_state == "reset":
                    self.hook = "configure_optimizers()"
                    # Each build starts from the task's lr: a hook that scales `self.lr` (as
                    # the 2021 experiments do per epoch) must not compound it round after round.
                    model.lr = inv.lr
                    model.optimizer = model.configure_optimizers()
                    base_lrs = [group["lr"] for group in model.optimizer.param_groups]
                    if round_index == inv.round and inv.restore_state:
                        self._restore_optimizer(model)
                loss_sum, samples, start_index = 0.0, 0, batch_index
                t1 = time.perf_counter()
                while batch_index < n_batches and batch_index - start_index < k:
                    if flight is not None and flight.halted():
                        break  # the job stops the function: this round will not be merged
                    step = inv.lr_warmup_offset + batch_index  # a replay goes on with the ramp
                    if step <= inv.lr_warmup_steps:  # after a resize: ramp to the new lr
                        factor = warmup_factor(inv, step)
                        for group, lr in zip(model.optimizer.param_groups, base_lrs, strict=True):
                            group["lr"] = lr * factor
                    self.hook = "__getitem__()"
                    batch = to_device(next(it), model.device)
                    sync.progress(inv.func_id)  # the heartbeat: a hook that never returns is hung
                    self.hook = "train()"
                    loss = float(train_step(batch, inv.first_batch + batch_index))
                    if not math.isfinite(loss):
                        raise FunctionError(
                            f"train() returned loss {loss} at epoch {inv.epoch}, batch "
                            f"{batch_index} (func_id {inv.func_id}); lower the learning rate "
                            "or check the data"
                        )
                    loss_sum += loss
                    samples += batch_length(batch)
                    batch_index += 1
                self.hook = "main()"
                final = batch_index >= n_batches
                states = models.states if inv.optimizer_state == "keep" else None
                if states is not None and model.optimizer.state:  # (plain SGD: none)
                    # Before the round is published: once it is merged, a replay of the
                    # next round on a fresh worker starts from this; after the epoch's
                    # last round, the lane's first round of the next epoch does.
                    epoch, at = (inv.epoch + 1, 0) if final else (inv.epoch, round_index + 1)
                    states.save(inv.task_id, inv.func_id, epoch, at, kept_state(model.optimizer))
                t2 = stepped = time.perf_counter()
                if flight is not None:
                    release, seconds = flight.wait(), flight.seconds
                    flight = None
                    waited = time.perf_counter() - stepped
                    phases[3] += waited
                    phases[4] += max(0.0, seconds - waited)
                    if not release.proceed:  # this round is dropped: the job stopped before it
                        batch_index = start_index
                        break
                    if release.threads:
                        torch.set_num_threads(release.threads)
                    t2 = time.perf_counter()
                if eager is not None:
                    eager.rebase(state)  # the change, onto the model merged meanwhile
                    handle = None  # deposited by the sync (`InFlight`, `EagerWeights.deposit`)
                else:
                    handle = models.publish(inv.task_id, inv.func_id, state)
                t3 = time.perf_counter()
                report = RoundReport(
                    inv.task_id,
                    inv.func_id,
                    round_index,
                    samples,
                    loss_sum,
                    batch_index - start_index,
                    final,
                    handle,
                )
                if eager is not None and not final:
                    flight = InFlight(eager, sync, report)
                    release = Release(proceed=True)  # the round's own comes with the next
                else:
                    if eager is not None:
                        report = replace(report, handle=eager.deposit())
                    release = sync.publish(report)
                spans = (t1 - t0, stepped - t1, t3 - t2, time.perf_counter() - t3)
                for i, spent in enumerate(spans):
                    phases[i] += spent
                in_place = release.in_place and samples > 0
                if release.threads:
                    torch.set_num_threads(release.threads)
                total_loss += loss_sum
                total_samples += samples
                round_index += 1
                if final or not release.proceed:
                    break
        finally:
            if flight is not None:  # the function failed with a round in flight
                flight.abandon()
        return InvocationResult(
            inv.func_id,
            Mode.TRAIN,
            samples=total_samples,
            loss=total_loss / batch_index if batch_index else None,
            rounds=round_index - inv.round,
            phases=tuple(phases),
            validation=self._validate(model) if release.validate and inv.validate_ranges else None,
        )

    def _rebuild(self, model: KubeModel) -> dict[str, torch.Tensor] | None:
        """The user's init run again here, on the network `main()` built with the init's
        seed (`execute`); None where it raised (the store then reads the model)."""
        train_args = model.args
        model.task = _TASK_NAMES[Mode.INIT]
        model.args = replace(train_args, task=model.task)
        self.hook = "init()"
        try:
            call_init(model)
        except Exception as exc:
            self.ctx.logger.debug("init() raised %r building the first model here", exc)
            return None
        finally:
            self.hook, model.task, model.args = "main()", train_args.task, train_args
        return model.network.state_dict()

    def _restore_optimizer(self, model: KubeModel) -> None:
        """The optimizer's state the function had at the start of this round (the lane's
        last epoch's, a replay's, a resume's), kept by the store; without it the round
        starts with a fresh optimizer."""
        inv, states = self.ctx.invocation, self.ctx.models.states
        kept = states.load(inv.task_id, inv.func_id, inv.epoch, inv.round) if states else None
        assert model.optimizer is not None
        if kept is None:  # plain SGD keeps nothing; or the state was lost with its worker
            self.ctx.logger.debug("no kept optimizer state for round %d", inv.round + 1)
        elif unfit := load_kept(model.optimizer, kept):
            self.ctx.logger.info(f"the optimizer starts fresh: {unfit}")

    def _validate(self, model: KubeModel) -> InvocationResult:
        """Score a test slice with the model itself: the invocation's (validation), or
        after the epoch's last round, the train invocation's `validate_ranges`."""
        inv, models = self.ctx.invocation, self.ctx.models
        if inv.mode is Mode.TRAIN:  # released with `validate`: the reference is the model
            models.load_reference_into(inv.task_id, model.network.state_dict())
            assert self.feed is not None
            self.feed.close()
            model.task = _TASK_NAMES[Mode.VALIDATE]
            model.args = replace(model.args, task=model.task)
            size = sum(b - a for a, b in inv.validate_ranges)
            self.feed = ShardFeed(
                self.ctx.shards, model.dataset, "test", inv.validate_ranges,
                np.arange(size, dtype=np.int64), model.batch_size, inv.chunk_samples,
            )  # fmt: skip
        else:
            models.load_model_into(inv.task_id, model.network.state_dict())
        validate_step = step_fn(model.validate, "validate")
        batches = self.feed
        assert batches is not None
        model.network.eval()
        acc_sum = loss_sum = 0.0
        samples = 0
        with torch.no_grad():
            it = iter(batches)
            for batch_index in range(len(batches)):
                self.hook = "__getitem__()"
                batch = to_device(next(it), model.device)
                if self.ctx.sync is not None:
                    self.ctx.sync.progress(inv.func_id)
                self.hook = "validate()"
                accuracy, loss = validate_step(batch, batch_index)
                n = batch_length(batch)
                acc_sum += float(accuracy) * n
                loss_sum += float(loss) * n
                samples += n
        self.hook = "main()"
        return InvocationResult(
            inv.func_id,
            Mode.VALIDATE,
            samples=samples,
            loss=loss_sum / samples if samples else None,
            accuracy=acc_sum / samples if samples else None,
        )

    def _infer(self, model: KubeModel) -> InvocationResult:
        inv = self.ctx.invocation
        model.network.load_state_dict(self.ctx.models.load_final(inv.task_id))
        served_models.keep(inv, model)  # this worker's next call for the model starts here
        return serve(self, model)


def warmup_factor(inv: Invocation, step: int) -> float:
    """The fraction of the invocation's lr that step `step` uses: a linear ramp from
    `lr_warmup_from` to `lr` over `lr_warmup_steps` steps after a resize, else 1."""
    if inv.lr_warmup_from is None or inv.lr_warmup_steps <= 0 or step >= inv.lr_warmup_steps:
        return 1.0
    start = inv.lr_warmup_from / inv.lr
    return start + (1.0 - start) * (step + 1) / inv.lr_warmup_steps


def kept_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state to keep, naming its class (`load_kept` checks it)."""
    return {**optimizer.state_dict(), _KEPT_CLASS: type(optimizer).__qualname__}


def load_kept(optimizer: torch.optim.Optimizer, kept: dict[str, Any]) -> str | None:
    """Load a kept state into the optimizer `configure_optimizers` just built, keeping the
    hyperparameters it set (an lr that follows `self.epoch`); why not, if it does not fit."""
    built = type(optimizer).__qualname__
    if kept.pop(_KEPT_CLASS, built) != built:
        return "configure_optimizers() built another optimizer"
    chosen = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(kept)
    except ValueError as exc:  # other parameter groups than the kept state's
        return f"the kept state does not fit: {exc}"
    for group, values in zip(optimizer.param_groups, chosen, strict=True):
        group.update(values)
    return None
