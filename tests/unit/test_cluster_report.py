"""The cluster benchmark's figures (pure functions of a run's marks)."""

from benchmarks.cluster_report import outside_checkpoints, per_round, phase_syncs, ratios

P = 23_000_000


def _marks(cp_bytes_each_round):
    """Marks of one epoch: round 1's end, then one mark per whole round after it."""
    marks, total = [], 0
    for r, b in enumerate([0, *cp_bytes_each_round], start=1):
        total += b
        link = {"tx_bytes": total // 2, "rx_bytes": total - total // 2, "drops": 0}
        marks.append({"epoch": 1, "round": r, "t": float(r), "links": {"cp": link, "n1": link}})
    return marks


def test_rounds_that_carried_a_checkpoint_are_counted_apart():
    rounds = [1_000, 1_200, 2 * P, 800]  # the third carried a checkpoint's gather
    summary = per_round("kubeml-sharded", [{"marks": _marks(rounds)}], 12.5e6)
    assert summary["cp_bytes_each_round"] == rounds
    quiet, carried = outside_checkpoints(summary["cp_bytes_each_round"], P)
    assert carried == 1
    assert quiet == (1_000 + 1_200 + 800) / 3 / P
    found = ratios({"kubeml-sharded": summary}, {}, P)
    assert found["cp_bytes_over_p"]["kubeml-sharded"] > 0.5  # the mean holds the checkpoint
    assert found["cp_outside_checkpoints"]["kubeml-sharded"] == (quiet, 1)


def test_a_row_where_every_round_moves_the_model_has_no_quiet_figure():
    assert outside_checkpoints([2 * P, 2 * P], P) == (None, 2)  # the central merge


def test_the_sync_as_functions_time_it_weighs_each_epoch_by_its_rounds():
    line = (
        "epoch {}: a function's round, mean over {}: load {} s, steps 0.800 s, send {} s, wait {} s"
    )
    runs = [
        {"row": "kubeml-a", "round_phases": [line.format(1, 4, 0.5, 0.5, 1.0)]},  # 2.0 s
        {"row": "kubeml-a", "round_phases": [line.format(1, 12, 0.25, 0.25, 0.5)]},  # 1.0 s
        {
            "row": "kubeml-b",
            "round_phases": [line.format(1, 2, 0.0, 0.1, 0.4) + ", overlapped 0.500 s"],
        },
        {"row": "ddp", "epochs": []},  # no phases: no figure
    ]
    synced = phase_syncs(runs)
    assert synced.keys() == {"kubeml-a", "kubeml-b"}
    assert abs(synced["kubeml-a"] - (4 * 2.0 + 12 * 1.0) / 16) < 1e-9
    assert abs(synced["kubeml-b"] - 1.0) < 1e-9  # the hidden part is sync too
