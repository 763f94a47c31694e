"""The soak (issue 19): two static tasks at once, again and again for a duration, while a
killer SIGKILLs a training worker every 5-15 s and the server every few minutes, with
dataset uploads and `infer` calls in between.

    python -m benchmarks soak                  # 20 minutes
    python -m benchmarks soak --minutes 1.5    # what CI runs (tests/integration/test_soak.py)

A real server process on a fresh home (process backend, 4 slots, `KUBEML_TORCH_THREADS=1`)
first runs the pair of tasks uninterrupted: the reference. Then, with the killer and the
traffic on, it runs the same pair (the same requests) again and again until the duration
is over. The server comes back through the
client's auto-start and resumes its tasks (`KUBEML_AUTO_RESUME`). Every pair must end with:

- both tasks succeeded, every epoch in their history, each lost function replaced (the
  retry budget is above the kills, so N never shrinks);
- per epoch, every training sample trained exactly once in a merged round, read from the
  ids the functions themselves recorded (`benchmarks/soak_records.py` says how replayed
  rounds are told from merged ones);
- the final weights of the reference pair, bit for bit (`torch.equal` on every tensor).

And at the end: every acknowledged upload is listed, every `infer` answered as the
reference model did, and no process, shared-memory scratch or socket folder is left.
"""

from __future__ import annotations

import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reference import FUNCTIONS, free_port
from benchmarks.soak_chaos import Killer, LocalServer, Traffic, leftovers
from benchmarks.soak_records import check_exactly_once, read_records

FUNCTION_FILE = FUNCTIONS / "soak_mlp.py"
DATASET = "soak-digits"
# Two requests that differ where a replay could go wrong: batch size, K, seed, and one
# validates every few epochs (a validation invocation can be killed too).
TASKS: dict[str, dict[str, Any]] = {
    "a": dict(batch_size=16, k=4, lr=0.05, seed=11, validate_every=0),
    "b": dict(batch_size=32, k=8, lr=0.05, seed=12, validate_every=4),
}
PACE = {"a": 1.0, "b": 2.0}  # b has half the batches: slower ones keep the pair together
TRAIN_SIZE = 1797 - 300  # sklearn's digits, the first 300 (shuffled) held out for testing


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 1200.0
    epochs: int = 40  # per task and pair: about 100 s a pair uninterrupted, on 2 cores
    worker_every_s: tuple[float, float] = (5.0, 15.0)
    server_every_s: tuple[float, float] = (120.0, 240.0)
    traffic_every_s: tuple[float, float] = (2.0, 6.0)
    sleep_per_batch_s: float = 0.03
    threads: int = 1  # KUBEML_TORCH_THREADS: pinned, so the bits do not follow the load
    pair_timeout_s: float = 900.0
    seed: int = 0  # the killer's and the traffic's draws
    keep: bool = False  # keep the home, its logs and the records even when the soak passed


def run_soak(config: SoakConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the soak; the result's `ok` says whether every check held, `problems` why not."""
    import torch

    from kubeml.client import stop_server
    from kubeml.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="kubeml-soak-"))
    settings = Settings(
        home=tmp / "home", host="127.0.0.1", port=free_port(), backend="process",
        capacity=4, torch_threads=config.threads, api_token=None, url=None, shm_dir=None,
    )  # fmt: skip
    server = LocalServer(settings)
    rng = random.Random(config.seed)
    killer = Killer(server, config.worker_every_s, config.server_every_s, rng)
    result: dict[str, Any] = {"config": asdict(config), "home": str(tmp), "problems": []}
    problems: list[str] = result["problems"]
    traffic = None
    try:
        test_x = _upload_data(server, tmp)
        # Warm workers first: the soak's pairs find them so (but after a server kill).
        records = tmp / "records"
        _deploy(server, records, config)
        problems += _pair(server, records, 1, config, killer)["problems"]
        reference = _pair(server, records, config.epochs, config, killer)
        problems += reference.pop("problems")
        weights = reference.pop("weights")
        result["reference"] = reference
        echo(f"reference pair: {reference['wall_s']:.1f} s")
        samples = test_x[:10].tolist()
        task_a = reference["tasks"]["a"]["id"]
        expected = server.call(lambda c: c.infer(task_a, samples))
        traffic = Traffic(server, config.traffic_every_s, _upload_files(tmp), (task_a, samples,
                          expected), random.Random(config.seed + 1))  # fmt: skip
        started = time.monotonic()
        killer.start()
        traffic.start()
        pairs: list[dict[str, Any]] = result.setdefault("pairs", [])
        while not pairs or time.monotonic() - started + reference["wall_s"] / 2 < config.duration_s:
            pair = _pair(server, records, config.epochs, config, killer)
            for t, final in pair.pop("weights").items():
                differ = [k for k in weights[t] if not torch.equal(final.get(k), weights[t][k])]
                pair["tasks"][t]["same_bits"] = not differ and final.keys() == weights[t].keys()
                if not pair["tasks"][t]["same_bits"]:
                    pair["problems"].append(f"task {t}: not the reference's bits: {differ}")
            problems += [f"pair {len(pairs)}: {p}" for p in pair["problems"]]
            pairs.append(pair)
            echo(_pair_line(len(pairs) - 1, pair, reference["wall_s"]))
        result["soak_s"] = time.monotonic() - started
    finally:
        killer.done.set()
        if traffic is not None:
            traffic.done.set()
            traffic.join()
        if killer.is_alive():
            killer.join()
        result["kills"] = [(round(t, 2), what, pid) for t, what, pid in killer.kills]
        if traffic is not None:
            listed = {d.name for d in server.call(lambda c: c.list_datasets())}
            lost = [n for n in traffic.uploaded if n not in listed]
            problems += [f"upload {n} was acknowledged but is not listed" for n in lost]
            problems += traffic.problems
            result["traffic"] = {"uploads": len(traffic.uploaded), "infers": traffic.inferred}
        stop_server(settings, timeout_s=60)
        left = leftovers(settings, server.pids)
        problems += left
        result["server_pids"] = sorted(server.pids)
    result["figures"] = figures(result)
    result["ok"] = not problems
    if result["ok"] and not config.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _upload_data(server: LocalServer, tmp: Path) -> np.ndarray:
    """The soak's dataset: sklearn's digits, each label carrying its sample's id
    (`id * 10 + digit`, decoded by the function); the test features, for `infer`."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = data.images.astype(np.uint8), data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    train_x, train_y, test_x, test_y = x[300:], y[300:], x[:300], y[:300]
    train_y = np.arange(len(train_y), dtype=np.int64) * 10 + train_y
    test_y = np.arange(len(test_y), dtype=np.int64) * 10 + test_y
    server.create(lambda c: c.create_dataset(DATASET, train_x, train_y, test_x, test_y))
    arrays = {"x": train_x[:64], "y": train_y[:64] % 10, "tx": test_x[:32], "ty": test_y[:32] % 10}
    for name, array in arrays.items():  # the traffic's small uploads
        np.save(tmp / f"upload_{name}.npy", array)
    return test_x


def _upload_files(tmp: Path) -> list[Path]:
    return [tmp / f"upload_{name}.npy" for name in ("x", "y", "tx", "ty")]


def _deploy(server: LocalServer, records: Path, config: SoakConfig) -> None:
    """The soak's two functions: one file, its records under `records`, paced apart."""
    for t in TASKS:
        source = FUNCTION_FILE.read_text()
        constants = (("RECORD_DIR", str(records)),
                     ("SLEEP_PER_BATCH_S", config.sleep_per_batch_s * PACE[t]))  # fmt: skip
        for name, value in constants:
            source, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, flags=re.M)
            assert count == 1, name
        server.create(lambda c, n=f"soak-{t}", s=source: c.create_function(n, s))


def _pair(
    server: LocalServer, records: Path, epochs: int, config: SoakConfig, killer: Killer
) -> dict[str, Any]:
    """Run and check one pair of tasks; wall time, per-task figures, the final weights
    and the problems found."""
    import torch

    from kubeml.api.schemas import TaskState

    ids: dict[str, str] = {}
    started = time.monotonic()
    for t, fields in TASKS.items():
        request = dict(
            function=f"soak-{t}", dataset=DATASET, epochs=epochs, parallelism=2, static=True,
            max_retries=1000, checkpoint_every_s=2.0, **fields,
        )  # fmt: skip
        ids[t] = server.submit(request)
    killer.records = [records / i for i in ids.values()]
    deadline = started + config.pair_timeout_s
    infos = {t: server.call(lambda c, i=i: c.get_task(i)) for t, i in ids.items()}
    while not all(i.state.finished for i in infos.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
        infos = {t: server.call(lambda c, i=i: c.get_task(i)) for t, i in ids.items()}
    wall_s = time.monotonic() - started
    out: dict[str, Any] = {"wall_s": wall_s, "tasks": {}, "weights": {}, "problems": []}
    out["kills"] = {
        what: sum(1 for when, w, _ in killer.kills if w == what and started <= when)
        for what in ("worker", "server")
    }
    for t, info in infos.items():
        task: dict[str, Any] = {"id": info.id, "state": info.state.value, "error": info.error}
        out["tasks"][t] = task
        if info.state is not TaskState.SUCCEEDED:
            out["problems"].append(f"task {t} ({info.id}) {info.state.value}: {info.error}")
            continue
        history = server.call(lambda c, i=info.id: c.get_history(i))
        task.update(
            failures=info.failures, retries=info.retries, accuracy=info.accuracy,
            epochs=[e.epoch for e in history.epochs],
        )  # fmt: skip
        if task["epochs"] != list(range(1, epochs + 1)):
            out["problems"].append(f"task {t}: history epochs {task['epochs']}")
        shrunk = [e.epoch for e in history.epochs if e.parallelism != 2]
        if shrunk:  # the retry budget is above the kills: a lost function is replaced
            out["problems"].append(f"task {t}: N was not 2 in epochs {shrunk}")
        check = check_exactly_once(
            read_records(records / info.id),
            epochs=epochs, train_size=TRAIN_SIZE, k=TASKS[t]["k"],
        )  # fmt: skip
        task["records"] = {
            "attempts": check.attempts, "trained": check.trained_samples,
            "merged": check.merged_samples, "redone": check.redone_samples,
        }  # fmt: skip
        out["problems"] += [f"task {t}: {p}" for p in check.problems[:20]]
        path = Path(server.settings.home) / "models" / f"{info.id}.pt"
        out["weights"][t] = torch.load(path, weights_only=True)
    return out


def _pair_line(index: int, pair: dict[str, Any], reference_s: float) -> str:
    tasks = pair["tasks"]
    parts = [
        f"{t}: {v['state']}, {v.get('failures', '?')} lost, "
        f"{v.get('records', {}).get('redone', '?')} samples redone"
        for t, v in tasks.items()
    ]
    return (
        f"pair {index}: {pair['wall_s']:.1f} s (+{pair['wall_s'] - reference_s:.1f}), "
        f"killed {pair['kills']['worker']} workers and {pair['kills']['server']} servers; "
        + "; ".join(parts)
        + ("" if not pair["problems"] else f"; PROBLEMS: {pair['problems'][:3]}")
    )


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """What the soak survived and what it cost, over its pairs."""
    pairs = result.get("pairs", [])
    reference = result.get("reference")
    if not pairs or reference is None:
        return {}
    worker_kills = sum(1 for _, what, _ in result["kills"] if what == "worker")
    server_kills = sum(1 for _, what, _ in result["kills"] if what == "server")
    lost = sum(t.get("failures", 0) for p in pairs for t in p["tasks"].values())
    added = [p["wall_s"] - reference["wall_s"] for p in pairs]
    redone = sum(t.get("records", {}).get("redone", 0) for p in pairs for t in p["tasks"].values())
    trained = sum(t.get("records", {}).get("merged", 0) for p in pairs for t in p["tasks"].values())
    out: dict[str, Any] = {
        "pairs": len(pairs),
        "tasks_succeeded": sum(
            1 for p in pairs for t in p["tasks"].values() if t["state"] == "succeeded"
        ),
        "worker_kills": worker_kills,
        "server_kills": server_kills,
        "functions_lost": lost,  # the jobs' own count (a kill during a server's downtime
        # or between rounds' invocations may cost no function)
        "reference_pair_s": reference["wall_s"],
        "added_s": sum(added),
        "added_s_per_kill": sum(added) / max(1, worker_kills + server_kills),
        "redone_samples": redone,
        "redone_share": redone / max(1, trained),
    }
    # Split the added time and the redone work between the two kinds of kill (least
    # squares over the pairs, no intercept), when the pairs tell them apart.
    per_pair = np.array([[p["kills"]["worker"], p["kills"]["server"]] for p in pairs], float)
    if len(pairs) >= 3 and np.linalg.matrix_rank(per_pair) == 2:
        redone_pp = [sum(t.get("records", {}).get("redone", 0) for t in p["tasks"].values())
                     for p in pairs]  # fmt: skip
        (w_s, s_s), *_ = np.linalg.lstsq(per_pair, np.array(added), rcond=None)
        (w_r, s_r), *_ = np.linalg.lstsq(per_pair, np.array(redone_pp, float), rcond=None)
        out |= {"added_s_per_worker_kill": w_s, "added_s_per_server_kill": s_s,
                "redone_per_worker_kill": w_r, "redone_per_server_kill": s_r}  # fmt: skip
    return out


def soak_lines(result: dict[str, Any]) -> str:
    """The soak's verdict and figures, for the terminal."""
    f = result["figures"]
    lines = [f"soak {'PASSED' if result['ok'] else 'FAILED'}"]
    lines += [f"  {key}: {value:.2f}" if isinstance(value, float) else f"  {key}: {value}"
              for key, value in f.items()]  # fmt: skip
    lines += [f"  traffic: {result.get('traffic')}"]
    lines += [f"  problem: {p}" for p in result["problems"][:40]]
    if not result["ok"] or result["config"]["keep"]:
        lines.append(f"  kept for a look: {result['home']}")
    return "\n".join(lines)
