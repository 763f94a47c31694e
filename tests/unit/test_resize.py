"""The one rule for a change of N: the new N, its lr and the ramp, whatever asked."""

import math

import pytest

from kubeml.control.job.resize import LrRule, resize, scaled_lr, warmup_steps


def test_lr_follows_n_from_one_process():
    assert scaled_lr(0.01, "none", 4) == 0.01
    assert scaled_lr(0.01, "linear", 4) == pytest.approx(0.04)
    assert scaled_lr(0.01, "sqrt", 4) == pytest.approx(0.02)
    assert scaled_lr(0.01, "sqrt", 2) == pytest.approx(0.01 * math.sqrt(2))
    assert scaled_lr(0.01, "linear", 1) == scaled_lr(0.01, "sqrt", 1) == 0.01
    with pytest.raises(ValueError, match="lr scaling"):
        scaled_lr(0.01, "cubic", 2)


def test_lr_warm_up_lasts_a_few_rounds_and_never_more_than_the_epoch():
    assert warmup_steps(8, 469) == 32
    assert warmup_steps(200, 469) == 469
    assert warmup_steps(-1, 469) == 117


def test_the_function_ramps_its_lr_over_the_warm_up_steps():
    from kubeml.runtime.invocation import FunctionCode, Invocation, Mode
    from kubeml.runtime.rounds import warmup_factor as _warmup_factor

    base = Invocation(Mode.TRAIN, "t", FunctionCode("f", "", ""), "d", lr=0.02)
    assert _warmup_factor(base, 0) == 1.0  # no resize, no ramp
    ramp = Invocation(
        Mode.TRAIN, "t", FunctionCode("f", "", ""), "d", lr=0.02, lr_warmup_from=0.01,
        lr_warmup_steps=4,
    )  # fmt: skip
    factors = [_warmup_factor(ramp, step) for step in range(6)]
    assert factors == pytest.approx([0.625, 0.75, 0.875, 1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    ("scaling", "granted", "lr", "ramp_from"),
    [
        ("none", 1, 0.01, None),  # N changes, the lr does not: no ramp
        ("linear", 1, 0.01, 0.02),
        ("linear", 4, 0.04, 0.02),
        ("sqrt", 4, 0.02, 0.01 * math.sqrt(2)),
    ],
)
def test_a_change_of_n_gives_the_rules_lr_and_ramps_from_the_old_one(
    scaling, granted, lr, ramp_from
):
    rule = LrRule(0.01, scaling)
    old = rule.at(2)
    change = resize(2, old, None, granted, rule, "at round 3 of epoch 1: why")
    assert change is not None
    assert change.parallelism == granted
    assert change.lr == pytest.approx(lr)
    assert change.lr_from == pytest.approx(ramp_from)
    assert change.line.startswith(f"N 2 -> {granted} at round 3 of epoch 1: why")
    assert (f"lr {old:g} ->" in change.line) == (ramp_from is not None)


def test_the_same_n_is_no_change_and_the_lr_is_relative_to_one_process_not_the_last_n():
    rule = LrRule(0.01, "linear")
    assert resize(3, 0.03, None, 3, rule, "x") is None
    down = resize(3, 0.03, None, 1, rule, "x")  # 2 -> 3 -> 1: lr at N=1 is the base
    assert down is not None and down.lr == pytest.approx(0.01) and down.lr_from == 0.03
