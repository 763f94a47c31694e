"""The adaptive outer step's rule, as pure arithmetic: the noise share read from a round,
its smoothing, and the step it leads to."""

import math

import pytest
import torch

from kubeml.stores.outer_rule import (
    NOISE_RAMP,
    RoundSums,
    adaptive_step,
    noise_share,
    smoothed,
    sum_share,
    total,
    weights_sq,
)


def _round(signal: torch.Tensor, noises: list[torch.Tensor], samples: list[int]) -> RoundSums:
    """The sums of a round whose functions changed by `signal + noise_i` (momentum 0)."""
    w = [s / sum(samples) for s in samples]
    changes = [signal + e for e in noises]
    d = sum(wi * c for wi, c in zip(w, changes, strict=True))
    spread = sum(wi * float(c @ c) for wi, c in zip(w, changes, strict=True))
    return RoundSums(0.0, float(d @ d), 0.0, spread, float(d @ d))


def _orthogonal(count: int, size: int = 64) -> list[torch.Tensor]:
    q, _ = torch.linalg.qr(torch.randn(size, count, generator=torch.Generator().manual_seed(1)))
    return [q[:, i].contiguous() for i in range(count)]


@pytest.mark.parametrize("samples", [[1, 1], [1, 1, 1, 1], [30, 10], [5, 3, 2]])
@pytest.mark.parametrize("ratio", [0.0, 1.0, 8.0, 40.0])
def test_the_noise_share_of_orthogonal_noise_is_read_exactly(samples, ratio):
    """Signal and every function's noise orthogonal, |e_i|^2 = ratio |s|^2: the share of
    a function's squared change that is noise is ratio / (1 + ratio), whatever the
    weights."""
    basis = _orthogonal(len(samples) + 1)
    signal = basis[0] * 2.0
    noises = [b * 2.0 * math.sqrt(ratio) for b in basis[1:]]
    share = noise_share(_round(signal, noises, samples), weights_sq(samples))
    assert share == pytest.approx(ratio / (1 + ratio), abs=1e-6)


def test_a_round_that_cannot_tell_says_so_and_cancelling_changes_are_all_noise():
    assert noise_share(RoundSums(0, 1.0, 0, 2.0, 1.0), weights_sq([7])) is None  # one function
    assert noise_share(RoundSums(0, 0.0, 0, 2.0, 0.0), 0.5) is None  # no change at all
    assert noise_share(RoundSums(0, 1e-12, 0, 2.0, 1e-12), 0.5) == 1.0  # changes cancelling out


def test_weights_square_sum_skips_functions_that_trained_nothing():
    assert weights_sq([3, 1]) == pytest.approx(0.625)
    assert weights_sq([2, 0, 2]) == pytest.approx(0.5)
    assert weights_sq([]) == 1.0


def test_the_share_is_smoothed_over_rounds():
    assert smoothed(None, None) is None
    assert smoothed(None, 0.4) == 0.4
    assert smoothed(0.4, None) == 0.4
    assert smoothed(0.4, 0.9) == pytest.approx(0.9 * 0.4 + 0.1 * 0.9)


def test_the_sum_takes_over_between_the_ramps_ends():
    low, high = NOISE_RAMP

    def share(ratio: float) -> float:
        return ratio / (1 + ratio)

    assert sum_share(None) == 0.0
    assert sum_share(share(low * 0.99)) == 0.0
    assert sum_share(share((low + high) / 2)) == pytest.approx(0.5)
    assert sum_share(share(high)) == pytest.approx(1.0)
    assert sum_share(1.0) == 1.0


def test_a_signal_keeps_the_adaptive_step_and_noise_turns_it_into_the_sum():
    # a steady direction, little noise: the cosine keeps the momentum, the lr scales
    steady = RoundSums(dv=1.0, dd=1.0, vv=1.0, spread=1.2, read_dd=1.0)
    terms, noise = adaptive_step(0.7, 0.9, steady, 0.5, None)
    assert (terms.kept, terms.scale) == (pytest.approx(0.9), 0.7)
    assert noise == pytest.approx(2 * 0.2 / 1.2)
    # the changes of four functions, orthogonal round after round: the sum, no momentum
    noisy = RoundSums(dv=0.0, dd=1.0, vv=1.0, spread=4.0, read_dd=1.0)
    terms, noise = adaptive_step(0.7, 0.9, noisy, 0.25, None)
    assert noise == 1.0
    assert (terms.kept, terms.scale) == (0.0, pytest.approx(4.0))
    # a steady round after many noisy ones: on the ramp, between the two steps
    terms, _ = adaptive_step(0.7, 0.9, steady, 0.5, 0.99)
    q = sum_share(0.9 * 0.99 + 0.1 * (2 * 0.2 / 1.2))
    assert 0.3 < q < 0.7
    assert terms.kept == pytest.approx(0.9 * (1 - q))
    assert terms.scale == pytest.approx(0.7 + (2 - 0.7) * q)


def test_shares_of_the_sums_add_up_in_order():
    parts = [RoundSums(1, 2, 3, 4, 5), RoundSums(0.5, 0.5, 0.5, 0.5, 0.5)]
    assert total(parts) == RoundSums(1.5, 2.5, 3.5, 4.5, 5.5)
    assert total([]) == RoundSums()
