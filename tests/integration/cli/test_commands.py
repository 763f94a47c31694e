"""Every `kubeml` command, driven through typer's runner against the real app in-process."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from kubeml.api.schemas import TaskState
from tests.integration.cli.conftest import Cli, quiet_source


def _succeeded_task(cli: Cli, **flags: str) -> str:
    args = ["train", "-f", "mlp", "-d", "digits", "-e", "2", "--lr", "0.05", "--K", "4"]
    for flag, value in flags.items():
        args += [flag, value]
    task_id = cli.ok(*args).stdout.strip()
    assert cli.engine.wait(task_id, timeout_s=60).state is TaskState.SUCCEEDED
    return task_id


# -- functions -------------------------------------------------------------------------------
def test_function_lifecycle(cli: Cli, tmp_path: Path) -> None:
    code = tmp_path / "fn.py"
    code.write_text(quiet_source())
    assert "function 'net' created" in cli.ok("function", "create", "--name", "net",
                                               "--code", str(code)).stdout  # fmt: skip
    listed = json.loads(cli.ok("function", "list", "--json").stdout)
    first_sha = {f["name"]: f["sha256"] for f in listed}["net"]

    code.write_text(quiet_source(SLEEP_PER_BATCH_S=0.001))
    assert "updated" in cli.ok("function", "update", "-n", "net", "--code", str(code)).stdout
    assert cli.engine.get_function("net").sha256 != first_sha
    assert "net" in cli.ok("function", "list").stdout

    assert "deleted" in cli.ok("function", "delete", "--name", "net").stdout
    assert "net" not in {f["name"] for f in json.loads(cli.ok("function", "list", "--json").stdout)}


def test_function_create_rejects_bad_code_and_taken_names(cli: Cli, tmp_path: Path) -> None:
    missing = cli.fails("function", "create", "--name", "x", "--code", str(tmp_path / "no.py"))
    assert missing.exit_code == 2 and "no.py" in missing.stderr

    broken = tmp_path / "broken.py"
    broken.write_text("def main(:\n")
    result = cli.fails("function", "create", "--name", "x", "--code", str(broken))
    assert result.exit_code == 1 and "syntax error at line 1" in result.stderr

    nomain = tmp_path / "nomain.py"
    nomain.write_text("x = 1\n")
    assert "no top-level main()" in cli.fails("function", "create", "--name", "x",
                                              "--code", str(nomain)).stderr  # fmt: skip

    binary = tmp_path / "binary.py"
    binary.write_bytes(b"\xff\xfe\x00main")
    assert "not a UTF-8 text file" in cli.fails("function", "create", "--name", "x",
                                                "--code", str(binary)).stderr  # fmt: skip

    good = tmp_path / "good.py"
    good.write_text(quiet_source())
    taken = cli.fails("function", "create", "--name", "mlp", "--code", str(good))
    assert taken.exit_code == 1 and "'mlp'" in taken.stderr and "exists" in taken.stderr

    unknown = cli.fails("function", "delete", "--name", "ghost")
    assert unknown.exit_code == 1 and "'ghost'" in unknown.stderr


# -- datasets --------------------------------------------------------------------------------
def _write_arrays(folder: Path, arrays: dict[str, np.ndarray]) -> list[str]:
    folder.mkdir(exist_ok=True)
    flags = {"train_x": "--traindata", "train_y": "--trainlabels",
             "test_x": "--testdata", "test_y": "--testlabels"}  # fmt: skip
    args = []
    for field, flag in flags.items():
        np.save(folder / f"{field}.npy", arrays[field])
        args += [flag, str(folder / f"{field}.npy")]
    return args


def test_dataset_lifecycle(cli: Cli, tmp_path: Path, digits: dict[str, np.ndarray]) -> None:
    files = _write_arrays(tmp_path / "d", digits)
    created = cli.ok("dataset", "create", "-n", "digits2", *files).stdout
    assert "1497 train / 300 test samples of shape 8x8" in created
    listed = {d["name"]: d for d in json.loads(cli.ok("dataset", "list", "--json").stdout)}
    assert listed["digits2"]["train_size"] == 1497 and listed["digits2"]["feature_shape"] == [8, 8]
    assert "digits2" in cli.ok("dataset", "list").stdout
    assert "deleted" in cli.ok("dataset", "delete", "--name", "digits2").stdout
    assert "digits2" not in {
        d["name"] for d in json.loads(cli.ok("dataset", "list", "--json").stdout)
    }
    assert "digits" in {d["name"] for d in json.loads(cli.ok("dataset", "list", "--json").stdout)}


def test_dataset_create_registers_a_location_and_trains_on_it(
    cli: Cli, tmp_path: Path, digits: dict[str, np.ndarray]
) -> None:
    files = _write_arrays(tmp_path / "shared", digits)
    where = str(tmp_path / "shared")
    made = cli.ok("dataset", "create", "-n", "reg", "--source", where).stdout
    assert f"registered from {where}: 1497 train / 300 test samples" in made
    assert where in cli.ok("dataset", "list").stdout
    cli.engine.create_function("regmlp", quiet_source(DATASET="reg"))
    task_id = cli.ok("train", "-f", "regmlp", "-d", "reg", "-e", "2", "--lr", "0.05").stdout
    info = cli.engine.wait(task_id.strip(), timeout_s=60)
    assert info.state is TaskState.SUCCEEDED and info.accuracy is not None and info.accuracy > 80

    both = cli.fails("dataset", "create", "-n", "x", "--source", where, *files[:2])
    assert both.exit_code == 2 and "either --source or the four files" in both.stderr
    neither = cli.fails("dataset", "create", "-n", "x", *files[:4])
    assert neither.exit_code == 2 and "missing --testdata, --testlabels" in neither.stderr
    gone = cli.fails("dataset", "create", "-n", "x", "--source", str(tmp_path / "nowhere"))
    assert gone.exit_code == 1 and "train_x" in gone.stderr and "not found" in gone.stderr
    cli.ok("dataset", "delete", "-n", "reg")
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == [
        "test_x.npy", "test_y.npy", "train_x.npy", "train_y.npy"
    ]  # fmt: skip


def test_dataset_create_rejects_bad_files(
    cli: Cli, tmp_path: Path, digits: dict[str, np.ndarray]
) -> None:
    files = _write_arrays(tmp_path / "d", digits)

    short = dict(digits, train_y=digits["train_y"][:10])
    result = cli.fails("dataset", "create", "-n", "bad", *_write_arrays(tmp_path / "s", short))
    assert result.exit_code == 1 and "train_y" in result.stderr and "10 labels" in result.stderr

    pkl = tmp_path / "labels.pkl"
    pkl.write_bytes(pickle.dumps(digits["train_y"]))
    swapped = [str(pkl) if a.endswith("train_y.npy") else a for a in files]
    refused = cli.fails("dataset", "create", "-n", "bad", *swapped)
    assert refused.exit_code == 1 and "--allow-pickle" in refused.stderr
    assert (
        "created" in cli.ok("dataset", "create", "-n", "pickled", "--allow-pickle", *swapped).stdout
    )

    truncated = tmp_path / "trunc.npy"
    truncated.write_bytes((tmp_path / "d" / "train_x.npy").read_bytes()[:200])
    cut = [str(truncated) if a.endswith("train_x.npy") else a for a in files]
    assert "truncated" in cli.fails("dataset", "create", "-n", "bad", *cut).stderr

    missing = cli.fails("dataset", "create", "-n", "bad", *files[:-1], str(tmp_path / "nope.npy"))
    assert missing.exit_code == 2 and "nope.npy" in missing.stderr

    taken = cli.fails("dataset", "create", "-n", "digits", *files)
    assert "'digits'" in taken.stderr and "exists" in taken.stderr
    assert "bad" not in {d["name"] for d in json.loads(cli.ok("dataset", "list", "--json").stdout)}


# -- train -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--K", "0"], "'--K'"),
        (["--K", "-2"], "'--K'"),
        (["--batch", "0"], "'--batch'"),
        (["--epochs", "0"], "'--epochs'"),
        (["--lr", "0"], "'--lr'"),
        (["--parallelism", "-1"], "'--parallelism'"),
        (["--goal-accuracy", "101"], "'--goal-accuracy'"),
        (["--sparse-avg", "--K", "8"], "--sparse-avg"),
        (["--optimizer-state", "average"], "'--optimizer-state'"),
        (["--epochs", "many"], "'--epochs'"),
        (["--outer-optimizer", "adam"], "'--outer-optimizer'"),
        (["--outer-lr", "3"], "'--outer-lr'"),
        (["--outer-momentum", "1"], "'--outer-momentum'"),
        (["--lr-scaling", "cubic"], "'--lr-scaling'"),
        (["--policy", "pollux"], "'--policy'"),
        (["--static", "--policy", "goodput"], "contradicts policy 'goodput'"),
        (["--memory-mb", "0"], "'--memory-mb'"),
        (["--memory-mb", "2000000"], "'--memory-mb'"),
    ],
)
def test_train_rejects_bad_numbers_naming_the_flag(cli: Cli, flags: list[str], named: str) -> None:
    result = cli.fails("train", "-f", "mlp", "-d", "digits", *flags)
    assert result.exit_code == 2
    assert "Error:" in result.stderr and named in result.stderr
    assert cli.engine.list_tasks() == []


def test_train_rejects_unknown_names(cli: Cli) -> None:
    result = cli.fails("train", "-f", "nope", "-d", "digits")
    assert result.exit_code == 1 and "Error:" in result.stderr and "'nope'" in result.stderr
    assert "'nodata'" in cli.fails("train", "-f", "mlp", "-d", "nodata").stderr


def test_train_sends_every_option(cli: Cli) -> None:
    options = "-e 2 -b 32 --lr 0.05 --parallelism 1 --static --sparse-avg --validate-every 1 "
    options += "--goal-accuracy 99 --seed 7 --optimizer-state reset --memory-mb 1536"
    result = cli.ok("train", "-f", "mlp", "-d", "digits", *options.split())
    task_id = result.stdout.strip()
    request = cli.engine.get_task(task_id).request
    assert (request.epochs, request.batch_size, request.lr, request.parallelism) == (2, 32, 0.05, 1)
    assert request.memory_mb == 1536
    assert (request.static, request.k, request.validate_every) == (True, -1, 1)
    assert (request.goal_accuracy, request.seed, request.optimizer_state.value) == (99, 7, "reset")
    cli.engine.stop_task(task_id)


def test_train_sends_the_outer_optimizer_lr_scaling_and_policy(cli: Cli) -> None:
    options = "--outer-optimizer nesterov --outer-lr 0.5 --outer-momentum 0.8 "
    options += "--lr-scaling sqrt --policy goodput"
    task_id = cli.ok("train", "-f", "mlp", "-d", "digits", *options.split()).stdout.strip()
    request = cli.engine.get_task(task_id).request
    assert (request.outer_optimizer.value, request.outer_lr, request.outer_momentum) == (
        "nesterov", 0.5, 0.8)  # fmt: skip
    assert (request.lr_scaling.value, request.effective_policy.value) == ("sqrt", "goodput")
    cli.engine.stop_task(task_id)


def test_train_defaults_are_the_2021_ones_but_k_the_outer_step_and_the_lr_rule(cli: Cli) -> None:
    task_id = cli.ok("train", "-f", "mlp", "-d", "digits").stdout.strip()
    request = cli.engine.get_task(task_id).request
    assert (request.epochs, request.batch_size, request.lr, request.parallelism) == (1, 64, 0.01, 2)
    assert (request.static, request.k, request.validate_every, request.goal_accuracy) == (
        False, 8, 0, 100.0)  # fmt: skip
    assert request.optimizer_state.value == "keep"
    # chosen by measurement (docs/performance.md): K=8 and the adaptive Nesterov outer step
    assert (request.outer_optimizer.value, request.outer_lr, request.outer_momentum) == (
        "adaptive", 0.7, 0.9)  # fmt: skip
    # each of N functions trains at lr x sqrt(N): the lr given is one process's
    assert (request.lr_scaling.value, request.effective_policy.value) == ("sqrt", "throughput")
    assert request.memory_mb is None  # the server's KUBEML_FUNCTION_MEMORY_MB


def test_train_watch_follows_the_task_to_its_accuracy(cli: Cli) -> None:
    result = cli.ok("train", "-f", "mlp", "-d", "digits", "-e", "2", "--lr", "0.05", "--K", "4",
                    "--validate-every", "1", "--watch")  # fmt: skip
    task_id = result.stdout.splitlines()[0]
    info = cli.engine.get_task(task_id)
    assert info.state is TaskState.SUCCEEDED and info.accuracy is not None
    assert (
        f"task {task_id} succeeded after 2 epoch(s): accuracy {info.accuracy:.2f}%" in result.stdout
    )
    assert "epoch 2/2" in result.stderr and "N=2" in result.stderr  # the progress lines


def test_train_watch_reports_a_failed_task_with_its_traceback(cli: Cli, tmp_path: Path) -> None:
    cli.engine.create_function("broken", quiet_source(FAIL_AT_BATCH=1))
    result = cli.fails("train", "-f", "broken", "-d", "digits", "--watch")
    assert result.exit_code == 1
    assert "failed" in result.stderr and "kubeml logs --id" in result.stderr
    assert "Traceback" in result.stderr


# -- history ---------------------------------------------------------------------------------
def test_history_get_list_plot_delete_prune(cli: Cli, tmp_path: Path) -> None:
    task_id = _succeeded_task(cli, **{"--validate-every": "1"})
    history = json.loads(cli.ok("history", "get", "--id", task_id, "--json").stdout)
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    table = cli.ok("history", "get", "--id", task_id).stdout
    assert f"task {task_id}: mlp on digits, succeeded" in table and "ACCURACY" in table

    listed = json.loads(cli.ok("history", "list", "--json").stdout)
    assert [h["task_id"] for h in listed] == [task_id]
    assert task_id in cli.ok("history", "list").stdout

    image = tmp_path / "history.png"
    assert "wrote" in cli.ok("history", "plot", "--id", task_id, "-o", str(image)).stdout
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 10_000

    assert "deleted" in cli.ok("history", "delete", "--id", task_id).stdout
    assert f"no history for task {task_id!r}" in cli.fails("history", "get", "--id", task_id).stderr

    other = _succeeded_task(cli)
    assert f"pruned 1 histories: {other}" in cli.ok("history", "prune", "--yes").stdout
    assert json.loads(cli.ok("history", "list", "--json").stdout) == []


def test_history_of_an_unknown_task_is_an_error(cli: Cli, tmp_path: Path) -> None:
    for args in (["get"], ["delete"], ["plot", "-o", str(tmp_path / "x.png")]):
        result = cli.fails("history", *args, "--id", "deadbeef")
        assert result.exit_code == 1 and "Error:" in result.stderr and "deadbeef" in result.stderr


# -- tasks -----------------------------------------------------------------------------------
def test_task_list_stop_prune_resume(cli: Cli) -> None:
    task_id = _succeeded_task(cli)
    tasks = json.loads(cli.ok("task", "list", "--json").stdout)
    assert [(t["id"], t["state"]) for t in tasks] == [(task_id, "succeeded")]
    assert cli.ok("task", "list", "--short").stdout.split() == [task_id]
    assert task_id in cli.ok("task", "list").stdout

    assert f"task {task_id} succeeded" in cli.ok("task", "stop", "--id", task_id).stdout
    nothing = cli.fails("task", "resume", "--id", task_id)
    assert nothing.exit_code == 1 and "nothing to resume" in nothing.stderr

    assert f"pruned 1 tasks: {task_id}" in cli.ok("task", "prune", "--yes").stdout
    assert cli.ok("task", "list", "--short").stdout.strip() == ""
    kept = json.loads(cli.ok("history", "get", "--id", task_id, "--json").stdout)
    assert kept["task_id"] == task_id and kept["state"] == "succeeded"  # the history stays


def test_task_stop_ends_a_running_task(cli: Cli) -> None:
    cli.engine.create_function("slow", quiet_source(SLEEP_PER_BATCH_S=0.05))
    task_id = cli.ok("train", "-f", "slow", "-d", "digits", "-e", "50", "--K", "2").stdout.strip()
    cli.ok("task", "stop", "--id", task_id)
    assert cli.engine.wait(task_id, timeout_s=60).state is TaskState.STOPPED
    assert "queued again" in cli.ok("task", "resume", "--id", task_id).stdout
    assert cli.engine.get_task(task_id).state in (TaskState.QUEUED, TaskState.RUNNING)
    cli.ok("task", "stop", "--id", task_id)
    assert cli.engine.wait(task_id, timeout_s=60).state is TaskState.STOPPED


def test_unknown_task_is_an_error(cli: Cli) -> None:
    for args in (["task", "stop"], ["task", "resume"], ["logs"]):
        result = cli.fails(*args, "--id", "deadbeef")
        assert result.exit_code == 1 and "Error:" in result.stderr and "deadbeef" in result.stderr


# -- logs ------------------------------------------------------------------------------------
def test_logs_show_job_events_and_follow_ends_with_the_task(cli: Cli) -> None:
    task_id = _succeeded_task(cli)
    text = cli.ok("logs", "--id", task_id).stdout
    assert "[job] task queued" in text
    lines = [
        json.loads(line) for line in cli.ok("logs", "--id", task_id, "--json").stdout.splitlines()
    ]
    assert [line["index"] for line in lines] == list(range(len(lines)))
    assert cli.ok("logs", "--id", task_id, "-f").stdout == text


def test_logs_follow_polls_a_running_task_until_it_ends(cli: Cli) -> None:
    cli.engine.create_function("slowish", quiet_source(SLEEP_PER_BATCH_S=0.01))
    task_id = cli.ok("train", "-f", "slowish", "-d", "digits", "-e", "2").stdout.strip()
    followed = _log_lines(cli.ok("logs", "--id", task_id, "--follow").stdout)
    assert cli.engine.get_task(task_id).state is TaskState.SUCCEEDED
    assert followed[-1].endswith("[job] task finished")
    assert followed == _log_lines(cli.ok("logs", "--id", task_id).stdout)  # each line once


def _log_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if re.match(r"\d\d:\d\d:\d\d \[", line)]


# -- infer -----------------------------------------------------------------------------------
def test_infer_predicts_from_a_json_datafile(
    cli: Cli, tmp_path: Path, digits: dict[str, np.ndarray]
) -> None:
    task_id = _succeeded_task(cli)
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps(digits["test_x"][:30].tolist()))
    predictions = json.loads(cli.ok("infer", "-n", task_id, "--datafile", str(samples)).stdout)
    assert len(predictions) == 30
    assert np.mean(np.asarray(predictions) == digits["test_y"][:30]) > 0.7


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("[[1, 2", "not valid JSON"),
        ("not json at all", "not valid JSON"),
        ('{"data": [1]}', "holds a JSON object"),
        ("3", "holds a JSON number"),
        ("[]", "the list is empty"),
    ],
)
def test_infer_rejects_a_datafile_that_is_not_a_json_list(
    cli: Cli, tmp_path: Path, content: str, says: str
) -> None:
    datafile = tmp_path / "data.json"
    datafile.write_text(content)
    result = cli.fails("infer", "-n", "anytask", "--datafile", str(datafile))
    assert result.exit_code == 1
    assert f"Error: --datafile {datafile}: {says}" in result.stderr


def test_infer_names_a_missing_datafile_and_an_unknown_task(cli: Cli, tmp_path: Path) -> None:
    missing = cli.fails("infer", "-n", "t", "--datafile", str(tmp_path / "none.json"))
    assert missing.exit_code == 2 and "none.json" in missing.stderr
    datafile = tmp_path / "data.json"
    datafile.write_text("[[0]]")
    unknown = cli.fails("infer", "-n", "deadbeef", "--datafile", str(datafile))
    assert unknown.exit_code == 1 and "deadbeef" in unknown.stderr


# -- root options ----------------------------------------------------------------------------
def test_debug_adds_the_traceback(cli: Cli) -> None:
    plain = cli.fails("task", "stop", "--id", "deadbeef")
    assert "Traceback" not in plain.stderr
    debug = cli.fails("--debug", "task", "stop", "--id", "deadbeef")
    assert "Traceback" in debug.stderr and "Error:" in debug.stderr


def test_usage_errors_exit_2(cli: Cli) -> None:
    result = cli.fails("function", "create", "--code", "x.py")
    assert result.exit_code == 2 and "Error:" in result.stderr
    assert cli.fails("nosuchcommand").exit_code == 2
