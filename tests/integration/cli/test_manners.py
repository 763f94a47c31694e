"""CLI manners: prunes ask first, `fn` is `function`, infer after a prune, warnings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from kubeml.api.schemas import TaskState
from kubeml.cli import _confirm
from tests.integration.cli.conftest import Cli, quiet_source


def _finished(cli: Cli, epochs: str = "1") -> str:
    task_id = cli.ok("train", "-f", "mlp", "-d", "digits", "-e", epochs, "--lr", "0.05",
                     "--K", "4").stdout.strip()  # fmt: skip
    assert cli.engine.wait(task_id, timeout_s=60).state is TaskState.SUCCEEDED
    return task_id


@pytest.mark.parametrize("noun", ["task", "history"])
def test_prune_refuses_without_a_terminal_unless_yes(cli: Cli, noun: str) -> None:
    task_id = _finished(cli)
    refused = cli.fails(noun, "prune")
    assert refused.exit_code == 1
    assert "stdin is not a terminal" in refused.stderr and "--yes" in refused.stderr
    assert task_id in cli.ok(noun, "list").stdout  # nothing was deleted
    assert task_id in cli.ok(noun, "prune", "-y").stdout


@pytest.mark.parametrize(("answer", "kept"), [("n\n", True), ("\n", True), ("y\n", False)])
def test_prune_asks_y_n_on_a_terminal(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, answer: str, kept: bool
) -> None:
    task_id = _finished(cli)
    monkeypatch.setattr(_confirm, "interactive", lambda: True)
    result = cli.run("history", "prune", input=answer)
    assert "[y/N]" in result.stderr and task_id in result.stderr  # it says what goes
    assert result.exit_code == (1 if kept else 0), result.output
    histories = json.loads(cli.ok("history", "list", "--json").stdout)
    assert (task_id in [h["task_id"] for h in histories]) is kept


def test_nothing_to_prune_asks_nothing(cli: Cli) -> None:
    assert "no finished tasks to prune" in cli.ok("task", "prune").stdout
    assert "no finished histories to prune" in cli.ok("history", "prune").stdout


def test_a_pruned_task_still_infers_and_has_its_history(
    cli: Cli, tmp_path: Path, digits: dict[str, np.ndarray]
) -> None:
    task_id = _finished(cli)
    samples = tmp_path / "x.json"
    samples.write_text(json.dumps(digits["test_x"][:5].tolist()))
    before = cli.ok("infer", "-n", task_id, "--datafile", str(samples)).stdout
    assert len(json.loads(before)) == 5
    cli.ok("task", "prune", "--yes")
    assert cli.fails("task", "stop", "--id", task_id).exit_code == 1  # the record is gone
    assert cli.ok("infer", "-n", task_id, "--datafile", str(samples)).stdout == before
    assert cli.ok("history", "get", "--id", task_id, "--json").stdout


def test_fn_is_an_alias_of_function(cli: Cli, tmp_path: Path) -> None:
    code = tmp_path / "f.py"
    code.write_text(quiet_source())
    assert "function 'f2' created" in cli.ok("fn", "create", "-n", "f2", "--code", str(code)).stdout
    assert "f2" in cli.ok("function", "list").stdout and "f2" in cli.ok("fn", "list").stdout
    assert "Alias of `function`" in cli.ok("--help").stdout


def test_history_follows_the_task_state_while_it_runs(cli: Cli) -> None:
    cli.engine.create_function("slow", quiet_source(SLEEP_PER_BATCH_S=0.05))
    task_id = cli.ok("train", "-f", "slow", "-d", "digits", "-e", "20").stdout.strip()
    deadline = time.monotonic() + 30
    while cli.engine.get_task(task_id).state is not TaskState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert json.loads(cli.ok("history", "get", "--id", task_id, "--json").stdout)["state"] == (
        "running"
    )
    assert "running" in cli.ok("history", "list").stdout
    cli.ok("task", "stop", "--id", task_id)
    cli.engine.wait(task_id, timeout_s=60)
    assert cli.engine.get_history(task_id).state is TaskState.STOPPED


def test_goal_accuracy_without_validation_warns(cli: Cli) -> None:
    result = cli.ok("train", "-f", "mlp", "-d", "digits", "-e", "3", "--goal-accuracy", "90")
    assert "Warning: --goal-accuracy 90 is checked only" in result.stderr
    assert "--validate-every 1" in result.stderr
    cli.engine.wait(result.stdout.strip(), timeout_s=60)
    quiet = cli.ok("train", "-f", "mlp", "-d", "digits", "-e", "3", "--goal-accuracy", "90",
                   "--validate-every", "1")  # fmt: skip
    assert "Warning" not in quiet.stderr
    cli.engine.wait(quiet.stdout.strip(), timeout_s=60)


def test_task_state_prints_as_its_value(cli: Cli) -> None:
    task_id = _finished(cli)
    info = cli.client.get_task(task_id)
    assert str(info.state) == "succeeded" and f"{info.state}" == "succeeded"
    assert str(info.request.optimizer_state) == "keep"


def test_history_list_has_the_2021_columns(cli: Cli, tmp_path: Path) -> None:
    task_id = _finished(cli, epochs="2")
    table = cli.ok("history", "list").stdout
    header = table.splitlines()[0].split()
    assert header[-5:] == ["MEAN", "N", "K", "STATIC", "TIME"]
    row = next(line for line in table.splitlines() if line.startswith(task_id)).split()
    assert row[-4:-1] == ["2.0", "4", "no"] and row[-1].endswith("s")


def test_history_plot_has_an_n_panel_with_integer_epochs() -> None:
    from kubeml.api.schemas import EpochRecord, History, TrainRequest
    from kubeml.cli.history import history_figure, parallelism_path

    request = TrainRequest(function="f", dataset="d", epochs=5, parallelism=2, k=8)
    epochs = [EpochRecord(epoch=i + 1, train_loss=1.0 / (i + 1), parallelism=n, rounds=3,
                          epoch_duration_s=1.0, samples_per_s=100.0,
                          accuracy=50.0 + i, val_loss=1.0)
              for i, n in enumerate([2, 2, 4, 4, 3])]  # fmt: skip
    history = History(task_id="t", request=request, state=TaskState.SUCCEEDED, epochs=epochs)
    assert parallelism_path(history) == "2→4→3"
    fig = history_figure(history)
    try:
        assert len(fig.axes) == 3
        n = fig.axes[2]
        assert n.get_title() == "N: 2→4→3" and "N=2→4→3" in fig.texts[0].get_text()
        assert list(n.lines[0].get_ydata()) == [2, 2, 4, 4, 3]
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ax.get_title()
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
