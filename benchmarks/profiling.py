"""`python -m benchmarks profile`: where kubeml's time goes, sampled with py-spy.

Profiles, each one epoch of the reference workload:
- the plain loop (the baseline every overhead is measured against);
- a kubeml worker at N=1, K=-1 (what the framework-overhead ratio measures);
- the kubeml workers at N=2, K=8, and the control process meanwhile (the merge, the
  relaying of round reports, logging), which shows the cost of the K-AVG rounds.

Every sample's stack is put in one category (the first that matches, in the order of
`CATEGORIES`), so the table reads as a breakdown of the invocation's wall time. The raw
stacks (py-spy's collapsed format) are kept for flame graphs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.records import Workload
from benchmarks.rows_kubeml import deploy_reference, fresh_engine, prewarm, run_task, train_request
from kubeml.procs import children

_RATE_HZ = 200
_IDLE = "idle: no invocation"


def _fn(names: str, path: str = "") -> str:
    """A regex for frames `[Class.]name (path...` where name is one of `names` (a|b)."""
    return rf"(?:^|\.)(?:{names}) \({re.escape(path)}"


CATEGORIES: list[tuple[str, str]] = [
    (
        "sync: waiting for the round's merge",
        _fn("publish", "kubeml/backends/relay/function_side.py"),
    ),
    ("sync: publish weights", _fn("publish", "kubeml/stores/models.py")),
    ("sync: load the reference model", _fn("load_reference_into")),
    ("merge (server)", _fn("weighted_average_into|_merge", "kubeml/control/")),
    ("log lines to the task log", _fn("emit|append|log", "kubeml/")),
    (
        "validation",
        _fn("_validate", "kubeml/runtime/rounds.py") + "|" + _fn("evaluate", "reference.py"),
    ),
    ("backward", _fn("backward", "torch/")),
    ("optimizer step", _fn("step", "torch/optim/")),
    ("zero_grad", _fn("zero_grad")),
    (
        "data: batch (gather + normalise)",
        _fn("_fetch|batch", "kubeml/runtime/batching.py")
        + "|"
        + _fn("batch", "reference.py")
        + "|"
        + _fn("__getitem__"),
    ),
    ("data: to_device", _fn("to_device")),
    ("data: read the shard", _fn("read", "kubeml/stores/datasets.py")),
    ("forward + loss", _fn("forward|cross_entropy|_call_impl")),
    ("optimizer build", _fn("configure_optimizers")),
    (
        "rest of the train loop",
        _fn("_train", "kubeml/runtime/rounds.py") + "|" + _fn("train_steps"),
    ),
    ("invocation setup", _fn("execute", "kubeml/runtime/execute.py")),
]
_COMPILED = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]


def _frames(stack: str) -> list[str]:
    """Frames of a collapsed stack line (outermost first), paths cut to `package/...`."""
    frames = []
    for frame in stack.split(";"):
        frame = re.sub(
            r"\((?:[^()]*/)?((?:kubeml|torch|benchmarks|multiprocessing)/)", r"(\1", frame
        )
        frames.append(frame.strip())
    return frames


def categorise(stack: str) -> str:
    frames = _frames(stack)
    if any(f.startswith("worker_main (") for f in frames) and not any(
        f.startswith("execute (kubeml/") for f in frames
    ):
        return _IDLE  # a warm worker waiting for its next invocation
    for name, regex in _COMPILED:
        if any(regex.search(f) for f in frames):
            return name
    return "other (process start-up, imports, unclassified)"


def summarise(raw: Path) -> dict[str, Any]:
    """Seconds per category in one py-spy raw file (samples / rate), and the top leaf frames.

    Shares are of the busy time: every sample except a warm worker's wait between
    invocations.
    """
    categories: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    if raw.exists():
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                categories[categorise(stack)] += int(count)
                leaves[_frames(stack)[-1]] += int(count)
    busy = sum(categories.values()) - categories.get(_IDLE, 0)
    return {
        "seconds": sum(categories.values()) / _RATE_HZ,
        "busy_s": busy / _RATE_HZ,
        "categories": {
            name: {"seconds": n / _RATE_HZ, "share_of_busy": None if name == _IDLE else n / busy}
            for name, n in categories.most_common()
            if busy
        },
        "top_leaf_frames": [(frame, n / _RATE_HZ) for frame, n in leaves.most_common(12)],
    }


def _py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise SystemExit("py-spy is needed: .venv/bin/pip install py-spy")
    return exe


@contextmanager
def recording(targets: dict[str, int], out_dir: Path, *, idle: bool) -> Iterator[None]:
    """py-spy records each `{name: pid}` into `out_dir/name.txt` while the block runs."""
    spies = []
    for name, pid in targets.items():
        argv = [_py_spy(), "record", "--pid", str(pid), "--rate", str(_RATE_HZ), "--format", "raw",
                "--nonblocking", "--output", str(out_dir / f"{name}.txt")]  # fmt: skip
        if idle:
            argv.append("--idle")
        spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    time.sleep(0.5)  # let py-spy attach before the measured work starts
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()


def _plain_epoch(workload: Workload, out_dir: Path) -> None:
    """One plain-loop epoch in a child process, recorded from its start."""
    code = (
        "import sys, torch; from pathlib import Path; "
        "from benchmarks.data import Arrays; from benchmarks.reference import *; "
        f"torch.set_num_threads({workload.threads}); "
        f"a = Arrays.load(Path({str(workload.data_dir)!r})); "
        f"m = build_model({workload.seed}); o = make_optimizer(m, {workload.lr}); "
        "s = Split(a.train_x, a.train_y); "
        f"train_steps(m, o, s, epoch_order(len(s), {workload.seed}, 0), {workload.batch_size})"
    )
    argv = [
        _py_spy(),
        "record",
        "--rate",
        str(_RATE_HZ),
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(out_dir / "plain-loop.txt"),
        "--",
        sys.executable,
        "-c",
        code,
    ]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _profile_sync_probe(out_dir: Path, echo: Callable[[str], None], batches: int = 40) -> None:
    """The ResNet-18-sized probe with K=1: every batch is a K-AVG round of 46.8 MB."""
    import numpy as np

    from benchmarks.micro_sync import PROBE_FILE, PROBE_FUNCTION, probe_request

    with fresh_engine() as engine:
        engine.create_function(PROBE_FUNCTION, PROBE_FILE.read_text())
        x, y = np.zeros((2 * batches, 1), dtype=np.float32), np.zeros(2 * batches, dtype=np.int64)
        engine.create_dataset("probe", x, y, x[:2], y[:2])
        run_task(engine, probe_request(1))  # warm workers and shared memory
        workers = children(os.getpid(), "kubeml.backends.process_worker")
        targets = {f"sync-probe-k1-worker-{i}": pid for i, pid in enumerate(workers)}
        echo(f"-- profile: 11.7M-parameter probe, N=2 K=1, {batches} rounds")
        with (
            recording(targets, out_dir, idle=True),
            recording({"sync-probe-k1-server": os.getpid()}, out_dir, idle=False),
        ):
            run_task(engine, probe_request(1))


def profile(workload: Workload, out_dir: Path, echo: Callable[[str], None]) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    one_epoch = replace(workload, epochs=1, goal_accuracy=100.0)
    echo("-- profile: plain loop, one epoch")
    _plain_epoch(workload, out_dir)
    with fresh_engine() as engine:
        deploy_reference(engine, workload.data_dir)
        prewarm(engine, workload, 2)
        workers = children(os.getpid(), "kubeml.backends.process_worker")
        targets = {f"kubeml-n1-worker-{i}": pid for i, pid in enumerate(workers)}
        echo(f"-- profile: kubeml N=1 K=-1, one epoch (workers {workers})")
        with recording(targets, out_dir, idle=True):
            run_task(engine, train_request(one_epoch, 1, -1, validate_every=0))
        targets = {f"kubeml-n2-k8-worker-{i}": pid for i, pid in enumerate(workers)}
        echo("-- profile: kubeml N=2 K=8, one epoch (workers and the control process)")
        with (
            recording(targets, out_dir, idle=True),
            recording({"kubeml-n2-k8-server": os.getpid()}, out_dir, idle=False),
        ):
            run_task(engine, train_request(one_epoch, 2, 8, validate_every=0))
    _profile_sync_probe(out_dir, echo)
    summary = {path.stem: summarise(path) for path in sorted(out_dir.glob("*.txt"))}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    for name, s in summary.items():
        echo(f"\n{name}: {s['seconds']:.1f} s sampled, {s['busy_s']:.1f} s busy")
        for category, v in s["categories"].items():
            share = "" if v["share_of_busy"] is None else f"{v['share_of_busy'] * 100:5.1f}%"
            echo(f"  {v['seconds']:7.2f} s {share:>6}  {category}")
    echo(f"\nraw stacks and summary.json in {out_dir}")
    return summary
