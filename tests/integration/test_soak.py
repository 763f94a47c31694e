"""The soak (`python -m benchmarks soak`), short: two static tasks at once, pair after pair
for a minute, while workers and the server are SIGKILLed; and the record check it relies
on, fed records that must fail it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from benchmarks.soak_chaos import leftovers
from benchmarks.soak_records import Batch, check_exactly_once

K = 1  # local steps per round: every batch is a round of its own, unless a test says


def _attempt(name: str, t0: int, func_id: int, batches: dict[int, tuple[int, ...]]) -> list[Batch]:
    """The lines one invocation wrote: batch index -> sample ids, one ns apart from t0."""
    return [
        Batch(name, 1, 1, func_id, index, t0 + n, ids)
        for n, (index, ids) in enumerate(sorted(batches.items()))
    ]


# One epoch of 8 samples: function 0 trains 0-3, function 1 trains 4-7, in batches of 2.
LANE0 = {0: (3, 1), 1: (0, 2)}
LANE1 = {0: (5, 4), 1: (7, 6)}


def test_a_replayed_round_counts_once_and_its_first_try_is_work_redone():
    killed = _attempt("a", 0, 1, {0: LANE1[0]})  # died in its first round
    replay = _attempt("b", 100, 1, LANE1)
    check = check_exactly_once(
        _attempt("c", 0, 0, LANE0) + killed + replay, epochs=1, train_size=8, k=K
    )
    assert check.ok, check.problems
    assert (check.trained_samples, check.merged_samples, check.redone_samples) == (10, 8, 2)
    assert check.attempts == 3


def test_a_sample_never_trained_or_trained_twice_fails_the_check():
    short = {0: (3, 1), 1: (0, 5)}  # function 0 took sample 5 of function 1's lane, lost 2
    check = check_exactly_once(
        _attempt("c", 0, 0, short) + _attempt("d", 0, 1, LANE1), epochs=1, train_size=8, k=K
    )
    assert not check.ok
    assert any("1 samples never trained: 2" in p for p in check.problems), check.problems
    assert any("1 samples trained more than once: 5" in p for p in check.problems)


def test_a_replay_of_other_samples_or_from_mid_round_fails_the_check():
    other = _attempt("b", 100, 1, {0: (4, 5), 1: (7, 6)})  # the round's samples reordered
    check = check_exactly_once(
        _attempt("c", 0, 0, LANE0) + _attempt("a", 0, 1, LANE1) + other,
        epochs=1, train_size=8, k=K,
    )  # fmt: skip
    assert any("trained other samples" in p for p in check.problems), check.problems
    mid = _attempt("b", 100, 1, {1: LANE1[1]})  # K=2: batch 1 is not where a round starts
    check = check_exactly_once(
        _attempt("c", 0, 0, LANE0) + _attempt("a", 0, 1, LANE1) + mid, epochs=2, train_size=8, k=2
    )
    assert any("not at a round boundary" in p for p in check.problems), check.problems
    assert any("epoch 2: 8 samples never trained" in p for p in check.problems)


def test_a_resume_that_counts_batches_from_zero_again_fails_the_check():
    # What a checkpoint without the lanes' progress did: the resumed function trained the
    # lane's second batch and called it batch 0, so the first batch seemed replaced.
    resumed = _attempt("b", 100, 1, {0: LANE1[1]})
    check = check_exactly_once(
        _attempt("c", 0, 0, LANE0) + _attempt("a", 0, 1, LANE1) + resumed,
        epochs=1, train_size=8, k=K,
    )  # fmt: skip
    assert not check.ok
    assert any("never trained: 4, 5" in p for p in check.problems), check.problems


def test_what_a_server_leaves_behind_is_found(tmp_path: Path) -> None:
    from kubeml.settings import Settings

    settings = Settings(home=tmp_path / "home", shm_dir=tmp_path / "shm")
    env = {**os.environ, "KUBEML_HOME": str((tmp_path / "home").resolve())}
    orphan = subprocess.Popen(["sleep", "60"], env=env)  # a worker that outlived its server
    # Popen can return before the kernel has written the new program's environment.
    environ = Path(f"/proc/{orphan.pid}/environ")
    deadline = time.monotonic() + 10
    while env["KUBEML_HOME"].encode() not in environ.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    sockets = Path(tempfile.mkdtemp(prefix=f"kubeml-workers-{orphan.pid}-"))
    (tmp_path / "shm").mkdir()
    try:
        found = leftovers(settings, {orphan.pid}, wait_s=0.2)
        assert any(f"process {orphan.pid}" in f for f in found), found
        assert any("scratch" in f for f in found) and any("socket" in f for f in found)
    finally:
        orphan.kill()
        orphan.wait()
        sockets.rmdir()
    (tmp_path / "shm").rmdir()
    assert leftovers(settings, {orphan.pid}, wait_s=0.2) == []


@pytest.mark.slow
def test_a_short_soak_survives_its_kills_with_every_sample_once_and_the_same_bits():
    from benchmarks.soak import SoakConfig, run_soak, soak_lines

    config = SoakConfig(
        duration_s=60, epochs=6, worker_every_s=(3.0, 6.0), server_every_s=(20.0, 35.0),
        traffic_every_s=(1.0, 3.0), pair_timeout_s=150,
    )  # fmt: skip
    result = run_soak(config, echo=lambda _: None)
    assert result["ok"], soak_lines(result)
    figures = result["figures"]
    assert figures["worker_kills"] >= 3 and figures["server_kills"] >= 1, figures
    assert figures["functions_lost"] >= 1 and figures["redone_samples"] > 0, figures
    assert figures["tasks_succeeded"] == 2 * figures["pairs"]
    assert all(t["same_bits"] for p in result["pairs"] for t in p["tasks"].values())
    assert result["traffic"]["uploads"] >= 1 and result["traffic"]["infers"] >= 1
