"""What the soak's functions recorded (`benchmarks/functions/soak_mlp.py`), and the check
that every sample of every epoch was trained exactly once in a merged round.

Each train invocation (an *attempt*) appends one line per batch it trained: epoch,
func_id, batch index within the function's epoch, a CLOCK_MONOTONIC time (one clock for
every process of the machine) and the batch's sample ids. Several attempts may train the
same batch: a replay trains the lost function's round again from its first batch, and a
server restarted from a checkpoint trains every lane again from the checkpoint's round.
In both cases the later attempt replaces the earlier one (the earlier one's round was
never merged, or its merge was lost with the server), so a batch counts as merged in the
*latest* attempt that trained it. The check then asks, per task and epoch:

- the ids of the merged batches, over all functions, are the training set, each exactly
  once (none missing, none twice);
- every attempt that trained a batch trained the same ids (a replay repeats the round,
  it does not draw new samples);
- every attempt starts at a round boundary (batch index a multiple of K).

Samples trained minus samples merged is the work the failures made the functions redo.
Pure functions over text: no kubeml, no processes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Batch:
    """One line of a record: a batch one attempt trained."""

    attempt: str  # the record's file name: PID.ATTEMPT
    pid: int
    epoch: int
    func_id: int
    batch_index: int
    t_ns: int
    ids: tuple[int, ...]


def parse_record(name: str, text: str) -> list[Batch]:
    """The batches of one record file (`name` is PID.ATTEMPT); a line cut short by a kill
    (no newline at its end) is not a trained batch and is left out."""
    pid = name.split(".")[0]
    batches = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            continue
        epoch, func_id, batch_index, t_ns, ids = line.split()
        numbers = (int(epoch), int(func_id), int(batch_index), int(t_ns))
        batches.append(Batch(name, int(pid), *numbers, tuple(map(int, ids.split(",")))))
    return batches


def read_records(folder: Path) -> list[Batch]:
    """Every batch one task's attempts recorded (`folder` is RECORD_DIR/TASK_ID)."""
    out: list[Batch] = []
    for path in sorted(folder.glob("*.*")):
        out.extend(parse_record(path.name, path.read_text()))
    return out


@dataclass
class RecordCheck:
    """The verdict on one task's records; `problems` empty means exactly once."""

    epochs: int
    attempts: int
    trained_samples: int  # every recorded sample, replays included
    merged_samples: int  # those of the latest attempt of each batch
    problems: list[str] = field(default_factory=list)

    @property
    def redone_samples(self) -> int:
        return self.trained_samples - self.merged_samples

    @property
    def ok(self) -> bool:
        return not self.problems


def check_exactly_once(
    batches: Iterable[Batch], *, epochs: int, train_size: int, k: int
) -> RecordCheck:
    """Check one task's batches (see the module docstring): each of its epochs 1..`epochs`
    trained samples 0..`train_size - 1` exactly once in merged batches."""
    batches = list(batches)
    latest: dict[tuple[int, int, int], Batch] = {}
    problems: list[str] = []
    for b in batches:
        key = (b.epoch, b.func_id, b.batch_index)
        seen = latest.get(key)
        if seen is not None and seen.ids != b.ids:
            problems.append(
                f"epoch {b.epoch}, function {b.func_id}, batch {b.batch_index}: attempt "
                f"{b.attempt} trained other samples than {seen.attempt}"
            )
        if seen is None or b.t_ns > seen.t_ns:
            latest[key] = b
    first: dict[str, int] = {}
    for b in batches:
        first[b.attempt] = min(first.get(b.attempt, b.batch_index), b.batch_index)
    problems += [
        f"attempt {a} started at batch {i}, not at a round boundary (K={k})"
        for a, i in sorted(first.items())
        if k > 0 and i % k
    ]
    merged: dict[int, Counter[int]] = {e: Counter() for e in range(1, epochs + 1)}
    for b in latest.values():
        if b.epoch not in merged:
            problems.append(f"a batch of epoch {b.epoch}, outside 1..{epochs}")
            continue
        merged[b.epoch].update(b.ids)
    every = set(range(train_size))
    for epoch, counts in merged.items():
        missing = sorted(every - counts.keys())
        twice = sorted(i for i, n in counts.items() if n > 1)
        strange = sorted(counts.keys() - every)
        for what, ids in (("never trained", missing), ("trained more than once", twice),
                          ("not in the training set", strange)):  # fmt: skip
            if ids:
                problems.append(f"epoch {epoch}: {len(ids)} samples {what}: {_few(ids)}")
    return RecordCheck(
        epochs=epochs,
        attempts=len(first),
        trained_samples=sum(len(b.ids) for b in batches),
        merged_samples=sum(len(b.ids) for b in latest.values()),
        problems=problems,
    )


def _few(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:8])
    return shown + (", ..." if len(ids) > 8 else "")
