"""The parameter server's maths: sample-weighted averaging of model states. No I/O.

States are dicts of tensors: either a model's state dict or its flat per-dtype groups
(see `kubeml.stores.flat`); the maths is the same. Floating-point tensors get the
sample-weighted mean. Integer and boolean tensors (such as BatchNorm's
`num_batches_tracked`) are never averaged into fractions: they get the weighted mean
rounded to the nearest integer, so counters that every function advanced equally stay
exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def normalized_weights(samples: Sequence[int]) -> list[float]:
    total = sum(samples)
    if total <= 0:
        raise ValueError("cannot merge: no function trained any samples")
    if any(s < 0 for s in samples):
        raise ValueError("sample counts must not be negative")
    return [s / total for s in samples]


def weighted_average_into(
    out: Mapping[str, torch.Tensor],
    states: Sequence[Mapping[str, torch.Tensor]],
    samples: Sequence[int],
) -> None:
    """Write the sample-weighted mean of `states` into the tensors of `out`, in place.

    Contributions with zero samples are skipped. `out` may alias one of `states`.
    """
    if len(states) != len(samples):
        raise ValueError("one sample count per state is needed")
    pairs = [(s, w) for s, w in zip(states, normalized_weights(samples), strict=True) if w > 0]
    with torch.no_grad():
        for key, target in out.items():
            tensors = [(s[key], w) for s, w in pairs]
            if target.is_floating_point() or target.is_complex():
                _running_mean_into(target, tensors)
            elif target.dtype == torch.bool:
                votes = torch.stack([t.double() * w for t, w in tensors]).sum(0)
                target.copy_(votes >= 0.5)
            else:
                mean = torch.stack([t.double() * w for t, w in tensors]).sum(0)
                target.copy_(torch.round(mean).to(target.dtype))


def _running_mean_into(target: torch.Tensor, tensors: list[tuple[torch.Tensor, float]]) -> None:
    """Weighted mean as a running `lerp`: each pass reads two buffers and writes one, with
    no temporaries, so merging N states costs about N-1 passes over memory (one for N=2)."""
    # An input that aliases `target` must be read first, before `target` is overwritten.
    tensors = sorted(tensors, key=lambda tw: tw[0].data_ptr() != target.data_ptr())
    first, seen = tensors[0]
    if len(tensors) == 1:
        if first.data_ptr() != target.data_ptr():
            target.copy_(first)
        return
    base = first if first.dtype == target.dtype else first.to(target.dtype)
    for i, (tensor, weight) in enumerate(tensors[1:]):
        seen += weight
        tensor = tensor if tensor.dtype == target.dtype else tensor.to(target.dtype)
        torch.lerp(base if i == 0 else target, tensor, weight / seen, out=target)


def weighted_average(
    states: Sequence[Mapping[str, torch.Tensor]], samples: Sequence[int]
) -> dict[str, torch.Tensor]:
    """The sample-weighted mean of `states`, as a new state."""
    out = {k: torch.empty_like(v) for k, v in states[0].items()}
    weighted_average_into(out, states, samples)
    return out
