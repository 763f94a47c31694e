"""`kubeml train --watch` and `kubeml task watch` as a user runs them: a real server, the
real CLI in its own process, on a pseudo-terminal (live bars) or a pipe (plain lines)."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time

import pytest

from kubeml.api.schemas import TaskState
from tests.ui.conftest import Served, run

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR_ROW = re.compile(
    r"epoch (\d+)/(\d+) ━+ (\d+)/(\d+|\?) (\d+|-) samples/s \S+ (ETA \S+|done) "
    r"loss \S+ acc \S+ N=(\d+)"
)


class Terminal:
    """A command on a pseudo-terminal of 120 columns; collects what it draws."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        parent, child = pty.openpty()
        os.set_blocking(parent, False)
        import fcntl
        import struct
        import termios

        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.process = subprocess.Popen(
            argv, stdin=child, stdout=child, stderr=child, env=env, start_new_session=True
        )
        os.close(child)
        self.fd, self.raw = parent, b""

    def read_until(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text):
                return self.text
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    self.raw += os.read(self.fd, 65536)
                except OSError:  # the command exited and closed its side
                    if self.process.poll() is not None:
                        break
            elif self.process.poll() is not None:
                break
        assert re.search(pattern, self.text), f"no {pattern!r} in:\n{self.text[-3000:]}"
        return self.text

    def wait(self, timeout: float = 60) -> int:
        """Wait for the exit, reading all it drew (a full pty would block the command)."""
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            try:
                chunk = os.read(self.fd, 65536) if ready else b""
            except OSError:  # EIO: the command exited and its side is closed
                break
            self.raw += chunk
            if not chunk and self.process.poll() is not None:
                break
            assert time.monotonic() < deadline, f"still running:\n{self.text[-3000:]}"
        return self.process.wait(timeout=5)

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.fd)


@pytest.mark.slow
def test_train_watch_draws_a_bar_per_epoch_on_a_terminal(served: Served) -> None:
    argv = served.kubeml("train", "-f", "slow", "-d", "digits", "-e", "2", "--K", "2",
                         "--lr", "0.05", "--validate-every", "1", "--watch")  # fmt: skip
    term = Terminal(argv, served.env())
    try:
        # Mid-epoch: a partly filled bar of epoch 1 with its round count out of R and an ETA.
        text = term.read_until(r"epoch 1/2 ━+ [1-9]\d*/\d+ \d+ samples/s \S+ ETA \d")
        assert term.wait(timeout=120) == 0
        text = term.text
    finally:
        term.close()
    task_id = text.split()[0]
    history = served.client.get_history(task_id)
    rounds = {e.epoch: e.rounds for e in history.epochs}
    finished = {int(m[0]): m for m in BAR_ROW.findall(text) if m[5] == "done"}
    assert sorted(finished) == [1, 2], text[-3000:]
    for epoch, match in finished.items():
        done, total = int(match[2]), int(match[3])
        assert done == total == rounds[epoch], (match, rounds)  # R from the server is right
        assert int(match[4]) > 0 and match[6] == "2"
    live = [m for m in BAR_ROW.findall(text) if m[5] != "done"]
    assert live and all(m[3] == str(rounds[int(m[0])]) for m in live)  # R known mid-epoch
    assert text.count("\x1b") == 0 and "\r" in term.raw.decode()  # redrawn in place
    assert f"task {task_id} succeeded after 2 epoch(s): accuracy" in text
    assert re.search(r"task ETA \d", text)  # the whole task's, while it ran


def test_without_a_terminal_it_prints_one_line_per_epoch(served: Served) -> None:
    argv = served.kubeml("train", "-f", "mlp", "-d", "digits", "-e", "3", "--K", "4",
                         "--lr", "0.05", "--validate-every", "1", "--watch")  # fmt: skip
    done = run(argv, served.env())
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.splitlines()[0]
    lines = done.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("samples/s" in line and "accuracy" in line and "N=2" in line for line in lines)
    assert "\x1b" not in done.stderr
    assert f"task {task_id} succeeded after 3 epoch(s)" in done.stdout

    replay = run(served.kubeml("task", "watch", "--id", task_id), served.env())
    assert replay.returncode == 0 and replay.stderr.splitlines() == lines  # the same epochs
    assert f"task {task_id} succeeded after 3 epoch(s)" in replay.stdout


@pytest.mark.slow
def test_ctrl_c_detaches_and_task_watch_attaches_again(served: Served) -> None:
    task_id = served.train("slow", epochs=4, k=2)
    term = Terminal(served.kubeml("task", "watch", "--id", task_id), served.env())
    try:
        term.read_until(r"epoch 1/4 ━+ [1-9]")
        os.killpg(term.process.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground group
        assert term.wait() == 130
        assert f"kubeml task watch --id {task_id}" in term.text and "keeps running" in term.text
    finally:
        term.close()
    assert served.client.get_task(task_id).state is TaskState.RUNNING

    again = Terminal(served.kubeml("task", "watch", "--id", task_id), served.env())
    try:
        text = again.read_until(r"epoch [2-4]/4 ━+ [1-9]")  # attached mid-task: live again
        assert "epoch 1/4" in text
        served.client.stop_task(task_id)
        assert again.wait() == 0
        assert f"task {task_id} stopped" in again.text
    finally:
        again.close()


def test_watching_a_failed_task_ends_with_its_error(served: Served) -> None:
    from tests.conftest import function_source

    served.client.create_function("broken", function_source(FAIL_AT_BATCH=3))
    task_id = served.train("broken")
    served.client.wait(task_id, timeout_s=60, poll_s=0.1)
    done = run(served.kubeml("task", "watch", "--id", task_id), served.env())
    assert done.returncode == 1
    assert f"Error: task {task_id} failed" in done.stderr and "kubeml logs" in done.stderr
    unknown = run(served.kubeml("task", "watch", "--id", "deadbeef"), served.env())
    assert unknown.returncode == 1 and "deadbeef" in unknown.stderr
