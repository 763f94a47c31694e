"""One shard of a task's parameter server: its slice of the model, of the outer
optimizer's state and of what the functions hold, and the round's merge. No I/O.

A sharded task splits every floating dtype group of its flat layout (`FlatLayout`) into
S contiguous element ranges (`plan_shards`; the few integer elements, BatchNorm's
counters, stay with shard 0). A shard keeps, in float32 whatever travels:

- `master`: the model, which checkpoints, validation and the final model read;
- `view`: the model as the functions hold it. At `fp32` it is `master` itself. At `bf16`
  and `int8` the functions receive each round the change `master - view` in that
  precision, and the shard adds the same decoded change to its `view`: both hold the
  same bits, and the error of one round's rounding is carried into the next round's
  change rather than lost, except at an epoch's last round, which `settle`s: `master`
  becomes `view` (the functions then score the model they hold);
- `momentum`: the outer optimizer's buffer over the spans that take the outer step.

A round: each function deposits its change (its weights minus the `view` it started
from), encoded (`codecs`), under a token of its own; `reduce` takes the sample-weighted
mean `d` of the listed tokens' changes, rounds it to the sync precision (`d~`, the
outer step's input: what a replica receives, so the replica's state stays the same
bits as the shard's), and for `adaptive` returns the shard's share of the sums the
rule needs (`outer_rule.RoundSums`: the cosine of the whole change, the functions'
noise); `finish(terms)` takes the step:

    stepped spans:   v <- kept * v + d~;   master <- master + scale * d~ + lr * kept * v
    other spans:     master <- view + d~   (BatchNorm statistics: the plain average)

with `terms` (`outer_rule.StepTerms`) the momentum the step keeps and the factor of the
change (`adaptive`: from the sums over every shard, by the control plane; `nesterov`:
the momentum and the lr; `average`: no stepped spans). The state before the step is
kept until the next one: a round that one shard could not merge is rolled back on all
(`rollback`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kubeml.stores.codecs import decode, encode
from kubeml.stores.outer_rule import RoundSums, StepTerms
from kubeml.stores.shard_plan import ShardSpec, gaps

Payload = dict[str, Any]  # dtype -> Encoded (floats) or np.ndarray (integers, raw)


class MissingDepositError(KeyError):
    """A token the control plane listed never reached this shard."""


@dataclass
class _Round:
    """A reduced round waiting for its step."""

    change: dict[str, torch.Tensor]  # d~ per float dtype
    integers: dict[str, torch.Tensor]  # the new integer values
    wire: Payload  # d~ as it travels to the replica
    sums: RoundSums = field(default_factory=RoundSums)


@dataclass
class _Kept:
    master: dict[str, torch.Tensor]
    view: dict[str, torch.Tensor]
    momentum: dict[str, torch.Tensor]
    merged: int


@dataclass
class ShardCore:
    """One shard of one task (on a shard server, primary or replica)."""

    spec: ShardSpec
    master: dict[str, torch.Tensor]
    view: dict[str, torch.Tensor] = field(default_factory=dict)
    momentum: dict[str, torch.Tensor] = field(default_factory=dict)
    merged: int = 0  # rounds merged since the task (re)started
    deposits: dict[bytes, Payload] = field(default_factory=dict)
    outgoing: tuple[frozenset[bytes], Payload] = (frozenset(), {})
    _round: _Round | None = None
    _before: _Kept | None = None
    _sent: Payload = field(default_factory=dict)  # the view's last change, encoded
    _digest: bytes | None = None  # `digest()` while no round changed the model

    @classmethod
    def start(
        cls,
        spec: ShardSpec,
        master: Mapping[str, torch.Tensor],
        view: Mapping[str, torch.Tensor] | None = None,
        momentum: Mapping[str, torch.Tensor] | None = None,
        merged: int = 0,
    ) -> ShardCore:
        """A shard holding copies of `master` (and the functions' `view`, when it differs:
        a compressed task resumed; and the outer `momentum`)."""
        core = cls(spec, {d: t.detach().clone().reshape(-1) for d, t in master.items()})
        core.view = core.master if spec.precision == "fp32" else {}
        if spec.precision != "fp32":
            source = view if view is not None else core.master
            core.view = {d: source[d].detach().clone().reshape(-1) for d in core._floats()}
        for dtype, tensor in (momentum or {}).items():
            core.momentum[dtype] = tensor.detach().clone().reshape(-1)
        core.merged = merged
        return core

    def _floats(self) -> list[str]:
        return [d for d, t in self.master.items() if t.is_floating_point()]

    # -- a round -----------------------------------------------------------------------
    def deposit(self, token: bytes, payload: Payload) -> None:
        self.deposits[token] = payload

    def reduce(self, contributions: Sequence[tuple[bytes, int]]) -> RoundSums:
        """Average the listed deposits' changes (weighted by samples); returns the shard's
        share of the adaptive rule's sums (zeros when no step needs them)."""
        missing = [t.hex()[:8] for t, _ in contributions if t not in self.deposits]
        if missing:
            raise MissingDepositError(f"shard {self.spec.index} has no deposit {missing}")
        total = sum(samples for _, samples in contributions)
        if total <= 0:
            raise ValueError("cannot merge: no function trained any samples")
        precision = self.spec.precision
        change: dict[str, torch.Tensor] = {}
        integers: dict[str, torch.Tensor] = {}
        wire: Payload = {}
        adaptive = self.spec.outer.adaptive
        spread = 0.0  # sum w_i |d_i|^2 over the stepped spans
        with torch.no_grad():
            for dtype in self.master:
                payloads = [(self.deposits[t][dtype], s / total) for t, s in contributions if s]
                if not self.master[dtype].is_floating_point():
                    votes = torch.zeros(self.master[dtype].numel(), dtype=torch.float64)
                    for p, w in payloads:
                        votes.add_(torch.from_numpy(np.array(p)).double(), alpha=w)
                    integers[dtype] = torch.round(votes).to(self.master[dtype].dtype)
                    continue
                d = torch.zeros(self.master[dtype].numel(), dtype=torch.float32)
                part = torch.empty_like(d)
                for payload, weight in payloads:
                    d.add_(decode(payload, part), alpha=weight)
                    if adaptive:
                        spread += weight * self._squared(dtype, part)
                wire[dtype] = encode(d, precision)
                change[dtype] = d if precision == "fp32" else decode(wire[dtype])
        self._round = _Round(change, integers, wire)
        if adaptive:
            self._round.sums = self._sums(change, spread)
        return self._round.sums

    def _squared(self, dtype: str, values: torch.Tensor) -> float:
        """|values|^2 over the shard's stepped spans of `dtype`."""
        spans = [(a, b) for d, a, b in self.spec.stepped if d == dtype]
        return sum(float(torch.dot(values[a:b], values[a:b])) for a, b in spans)

    def _sums(self, change: Mapping[str, torch.Tensor], spread: float) -> RoundSums:
        dv = dd = vv = 0.0
        for dtype, a, b in self.spec.stepped:
            d = change[dtype][a:b]
            v = self._buffer(dtype)[a:b]
            dv += float(torch.dot(d, v))
            dd += float(torch.dot(d, d))
            vv += float(torch.dot(v, v))
        return RoundSums(dv, dd, vv, spread, dd)

    def round_change(self) -> Payload:
        """The reduced round's change as a replica takes it (`replicate`, with the step's
        terms that `finish` adds)."""
        if self._round is None:
            raise RuntimeError(f"shard {self.spec.index}: no reduced round")
        return {"change": self._round.wire, "integers": self._round.integers}

    def finish(self, terms: StepTerms, settle: bool = False) -> Payload:
        """Take the reduced round's step with `terms`; returns what a replica
        needs to take the same step (`replicate`). `settle`: the model becomes the view
        the functions hold after this round (the rounding it would carry is dropped), so
        they can score the model itself without reading it (the epoch's validation)."""
        if self._round is None:
            raise RuntimeError(f"shard {self.spec.index}: finish without a reduced round")
        pending, self._round = self._round, None
        self._step(pending.change, pending.integers, terms, settle)
        tokens = frozenset(self.deposits)
        self.deposits.clear()
        self.outgoing = (tokens, self._outgoing())
        message = {"change": pending.wire, "integers": pending.integers, **step_message(terms)}
        return {**message, "settle": settle}

    def replicate(self, message: Payload) -> None:
        """Take, as a replica, the step its primary took (the same bits)."""
        change = {d: decode(e) for d, e in message["change"].items()}
        terms = StepTerms(float(message["kept"]), float(message["scale"]))
        self._step(change, dict(message["integers"]), terms, bool(message.get("settle", False)))
        self.deposits.clear()

    def _step(
        self,
        change: Mapping[str, torch.Tensor],
        integers: Mapping[str, torch.Tensor],
        terms: StepTerms,
        settle: bool = False,
    ) -> None:
        outer = self.spec.outer
        if outer.momentum > 0:
            for dtype, _, _ in self.spec.stepped:
                self._buffer(dtype)  # before the copy `rollback` restores
        self._keep_before()
        self._sent = {}
        with torch.no_grad():
            for dtype, values in integers.items():
                self.master[dtype].copy_(values)
            stepped: dict[str, list[tuple[int, int]]] = {}
            for dtype, a, b in self.spec.stepped:
                stepped.setdefault(dtype, []).append((a, b))
            for dtype, d in change.items():
                master, view = self.master[dtype], self.view[dtype]
                runs = stepped.get(dtype, [])
                for a, b in gaps(sorted(runs), d.numel()):  # the plain average: view + d~
                    if view is master:
                        master[a:b].add_(d[a:b].to(master.dtype))
                    else:
                        torch.add(view[a:b], d[a:b], out=master[a:b])
                for a, b in runs:
                    self._step_span(master[a:b], d[a:b], dtype, a, b, terms)
            if self.spec.precision != "fp32":
                for dtype in change:
                    view = self.view[dtype]
                    sent = encode(self.master[dtype] - view, self.spec.precision)
                    view.add_(decode(sent))
                    self._sent[dtype] = sent
                    if settle:
                        self.master[dtype].copy_(view)
        self.merged += 1

    def _step_span(
        self, master: torch.Tensor, d: torch.Tensor, dtype: str, a: int, b: int, terms: StepTerms
    ) -> None:
        """The outer step on one stepped span (`terms.scale` is the lr unless the adaptive
        rule takes more of the change)."""
        lr = self.spec.outer.lr
        if self.spec.outer.momentum <= 0:
            master.add_(d.to(master.dtype), alpha=terms.scale)
            return
        v = self._buffer(dtype)[a:b]
        v.mul_(terms.kept).add_(d)
        if terms.scale == lr:
            master.add_((d + terms.kept * v).to(master.dtype), alpha=lr)
        else:
            master.add_((d * terms.scale + (lr * terms.kept) * v).to(master.dtype))

    def _outgoing(self) -> Payload:
        """The round's update as the functions receive it: the new values at fp32, else
        the view's change (what `_step` added to it), and integers raw."""
        out: Payload = {}
        for dtype, master in self.master.items():
            if not master.is_floating_point():
                out[dtype] = master.numpy().copy()
            elif self.spec.precision == "fp32":
                out[dtype] = encode(master, "fp32")
            else:
                out[dtype] = self._sent[dtype]  # what the functions add to their view
        return out

    def _keep_before(self) -> None:
        kept = self._before
        if kept is None:
            kept = self._before = _Kept({}, {}, {}, 0)
        for source, target in (
            (self.master, kept.master),
            (self.view, kept.view),
            (self.momentum, kept.momentum),
        ):
            for dtype, tensor in source.items():
                if dtype not in target or target[dtype].numel() != tensor.numel():
                    target[dtype] = torch.empty_like(tensor)
                target[dtype].copy_(tensor)
        kept.merged = self.merged

    def rollback(self, merged: int) -> bool:
        """Undo the last step if it made `merged` rounds (a round another shard could not
        merge); True if it did."""
        self.deposits.clear()
        self._round = None
        if self.merged != merged or self._before is None or self._before.merged != merged - 1:
            return False
        before = self._before
        for dtype, tensor in before.master.items():
            self.master[dtype].copy_(tensor)
        if self.view is not self.master:
            for dtype, tensor in before.view.items():
                self.view[dtype].copy_(tensor)
        for dtype, tensor in before.momentum.items():
            self.momentum[dtype].copy_(tensor)
        self.merged, self._before = before.merged, None
        self.outgoing = (frozenset(), {})
        return True

    def _buffer(self, dtype: str) -> torch.Tensor:
        buffer = self.momentum.get(dtype)
        if buffer is None:
            buffer = torch.zeros_like(self.master[dtype], dtype=torch.float32)
            self.momentum[dtype] = buffer
        return buffer

    # -- what others read --------------------------------------------------------------
    def update(self, token: bytes) -> Payload | None:
        """The last round's update for the function that deposited `token` in it; None if
        that deposit was not part of the last merged round (the function reloads)."""
        tokens, payload = self.outgoing
        return payload if token in tokens else None

    def state(self) -> dict[str, Any]:
        """Copies of everything the shard holds after its last merged round."""
        master = {d: t.clone() for d, t in self.master.items()}
        return {"master": master, **self.outer(), "merged": self.merged}

    def outer(self) -> dict[str, Any]:
        """Copies of the outer momentum and of the functions' view where it is not the
        master (compressed): a checkpoint's outer state."""
        view = {} if self.view is self.master else self.view
        return {
            "view": {d: t.clone() for d, t in view.items()},
            "momentum": {d: t.clone() for d, t in self.momentum.items()},
        }

    @classmethod
    def from_state(cls, spec: ShardSpec, state: Mapping[str, Any]) -> ShardCore:
        return cls.start(
            spec, state["master"], state["view"] or None, state["momentum"], state["merged"]
        )

    def functions_view(self) -> Payload:
        """The model as the functions start from it (a fresh invocation)."""
        out: Payload = {}
        for dtype, master in self.master.items():
            source = self.view.get(dtype, master) if master.is_floating_point() else master
            out[dtype] = source.numpy().copy()
        return out

    def model(self) -> Payload:
        return {dtype: master.numpy().copy() for dtype, master in self.master.items()}

    def digest(self) -> bytes:
        """`piece_digest` of the model as the functions start from it (`functions_view`);
        asked by every function of a task's first round, so kept until a step."""
        if self._digest is None or self.merged:
            floats = self.view if self.view is not self.master else {}
            self._digest = piece_digest(self.spec, {**self.master, **floats})
        return self._digest


def piece_digest(spec: ShardSpec, pieces: Mapping[str, torch.Tensor]) -> bytes:
    """A digest of one shard's piece of a model (its ranges' bits, in order), so a function
    and a shard can tell whether they hold the same piece without moving it."""
    digest = hashlib.blake2b(digest_size=16)
    for dtype, _, _ in spec.ranges:
        digest.update(dtype.encode())
        digest.update(pieces[dtype].contiguous().view(torch.uint8).numpy().data)
    return digest.digest()


def step_message(terms: StepTerms) -> Payload:
    """The step's terms as a replica receives them."""
    return {"kept": terms.kept, "scale": terms.scale}
