"""The outer-optimizer robustness study of docs/performance.md: test accuracy after every
epoch, N=2 static, K=8, for each outer optimizer, on five workloads (two of them with an
inner lr or optimizer the study workloads do not use). Epoch accuracies do not depend on
the machine's load, so an in-process engine is enough here; seconds are not reported.

    python -m benchmarks.outer_study [WORKLOADS] [CONFIGS] [SEEDS] [OUT.jsonl]
    python -m benchmarks.outer_study mnist-lenet-example average,adaptive 0,1,2
    python -m benchmarks.outer_study chars,cnn-bn adaptive,sum 0   # harness workloads
    python -m benchmarks.outer_study chars-adam,chars-n4 adaptive 0,1,2   # variants
    python -m benchmarks.outer_study fashion-sgd,quickstart adaptive,lr-none 0,1,2 --full
    python -m benchmarks.outer_study widemlp-n4 ddp-local-sgd,adaptive 0,1,2,3,4,5

A workload of the harness (`benchmarks/specs.py`: chars, cnn-bn, lenet-seed...) trains on
its own data, lr and batch (`lenet-seed` on the Fashion-MNIST cut the others use here;
`--full`: every Fashion-MNIST workload on the whole set). `quickstart` is PyTorch's
quickstart recipe, held out: added after the defaults were chosen. `widemlp` is the
network benchmark's MLP on its cut (8,192/2,048; `widemlp-n4` at its N).
A variant (`VARIANTS`) is one of those with another inner optimizer or lr, or N=4: the
workloads the adaptive step's noise rule was checked on after it was chosen.

`ddp-local-sgd` is not kubeml: torch DDP with PyTorch's local SGD (`benchmarks.rows_torch`,
one process per function, parameters averaged every K steps) on the same data, network,
optimizer, lr as given, batch and N, for the epoch-by-epoch comparison with the peer.

Each line of OUT (default benchmarks/results/outer-study.jsonl) is one task.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.data import Arrays, load_fashion_mnist
from benchmarks.records import Workload
from benchmarks.reference import ROOT
from benchmarks.rows_kubeml import fresh_engine
from benchmarks.rows_torch import run_ddp
from benchmarks.specs import SPECS, prepare

ADAM_PATCH = (
    "return SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-4)",
    "return torch.optim.Adam(self.parameters(), lr=self.lr)",
)
LENET = "benchmarks/functions/lenet_fashion_default.py"
# name: (function file, dataset, inner lr, epochs, patch of the source or None)
WORKLOADS: dict[str, tuple[str, str, float, int, tuple[str, str] | None]] = {
    "fashion-sgd": (LENET, "fashion", 0.01, 4, None),
    "fashion-sgd-lr.05": (LENET, "fashion", 0.05, 4, None),
    "fashion-adam": (LENET, "fashion", 0.001, 4, ADAM_PATCH),
    "mnist-lenet-example": ("examples/lenet_mnist.py", "mnist", 0.02, 3, None),
    "mnist-mlpbn": ("benchmarks/functions/mlp_bn_mnist.py", "mnist5k", 0.01, 6, None),
    "quickstart": ("benchmarks/functions/mlp_quickstart_fashion.py", "fashion", 0.001, 10, None),
    # the network benchmark's workload (`benchmarks.cluster`: 8,192/2,048, N=4 there)
    "widemlp": ("benchmarks/functions/mlp_wide_fashion.py", "fashion8k", 0.05, 6, None),
}
RMSPROP_ADAM = (
    "return RMSprop(self.parameters(), lr=self.lr)",
    "return torch.optim.Adam(self.parameters(), lr=self.lr)",
)
# name: (the workload it varies, patch of the source or None, inner lr or None, N)
VARIANTS: dict[str, tuple[str, tuple[str, str] | None, float | None, int]] = {
    "chars-adam": ("chars", RMSPROP_ADAM, 0.001, 2),
    "chars-n4": ("chars", None, None, 4),
    "lenet-seed-n4": ("lenet-seed", None, None, 4),
    "fashion-sgd-n4": ("fashion-sgd", None, None, 4),
    "widemlp-n4": ("widemlp", None, None, 4),
}
DDP = "ddp-local-sgd"  # the peer, not a kubeml config (`run_ddp`)
CONFIGS: dict[str, dict[str, Any]] = {
    "average": {"outer_optimizer": "average"},
    "lr-none": {"lr_scaling": "none"},  # the lr as given at every N (before session 28)
    "lr-linear": {"lr_scaling": "linear"},
    "average-lr-none": {"outer_optimizer": "average", "lr_scaling": "none"},  # DDP local SGD
    "nest.7/.9": {"outer_optimizer": "nesterov", "outer_lr": 0.7, "outer_momentum": 0.9},
    "nest1/.5": {"outer_optimizer": "nesterov", "outer_lr": 1.0, "outer_momentum": 0.5},
    "adaptive": {"outer_optimizer": "adaptive", "outer_lr": 0.7, "outer_momentum": 0.9},
    "adaptive1/.9": {"outer_optimizer": "adaptive", "outer_lr": 1.0, "outer_momentum": 0.9},
    "sum": {"outer_optimizer": "nesterov", "outer_lr": 2.0, "outer_momentum": 0.0},
    "adaptive1/.5": {"outer_optimizer": "adaptive", "outer_lr": 1.0, "outer_momentum": 0.5},
    "adaptive-k16": {
        "outer_optimizer": "adaptive",
        "outer_lr": 0.7,
        "outer_momentum": 0.9,
        "k": 16,
    },
}


def main(argv: list[str]) -> None:
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return
    full = "--full" in argv  # Fashion-MNIST whole (60,000/10,000), not its cut
    argv = [a for a in argv if a != "--full"]
    workloads = argv[0].split(",") if argv else list(WORKLOADS)
    configs = argv[1].split(",") if len(argv) > 1 else list(CONFIGS)
    if unknown := [c for c in configs if c not in CONFIGS and c != DDP]:
        raise SystemExit(f"unknown config(s) {unknown}: choose from {[*CONFIGS, DDP]}")
    seeds = [int(s) for s in argv[2].split(",")] if len(argv) > 2 else [0, 1, 2]
    out = Path(argv[3]) if len(argv) > 3 else ROOT / "benchmarks/results/outer-study.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="kubeml-outer-study-"))
    data = {"fashion": prepare("fashion", tmp / "fashion", quick=not full).data_dir}
    data["mnist"] = prepare("mnist5k", tmp / "mnist").data_dir
    data["mnist5k"] = data["mnist"]  # the name the harness's MNIST functions read
    if any(n.startswith("widemlp") for n in workloads):
        data["fashion8k"] = tmp / "fashion8k"
        load_fashion_mnist(8192, 2048).save(data["fashion8k"])
    for name in workloads:  # a harness workload trains on its own full data
        base = VARIANTS[name][0] if name in VARIANTS else name
        if base in SPECS and SPECS[base].dataset not in data:
            data[SPECS[base].dataset] = prepare(base, tmp / base).data_dir
    with fresh_engine(capacity=4) as engine:
        for dataset, path in data.items():
            a = Arrays.load(path)
            engine.create_dataset(dataset, a.train_x, a.train_y, a.test_x, a.test_y)
        for name in workloads:
            base, patch, lr, parallelism = VARIANTS.get(name, (name, None, None, 2))
            if base in SPECS:
                spec = SPECS[base]
                file, dataset, epochs, batch = (
                    spec.function_file,
                    spec.dataset,
                    spec.epochs,
                    spec.batch_size,
                )
                lr = lr or spec.lr
            else:
                file, dataset, base_lr, epochs, base_patch = WORKLOADS[base]
                patch, lr, batch = patch or base_patch, lr or base_lr, 64
            source = (ROOT / file).read_text()
            if patch:
                if patch[0] not in source:
                    raise SystemExit(f"{name}: {file} no longer has the line the variant patches")
                source = source.replace(*patch)
            function = name.replace(".", "")
            engine.create_function(function, source)
            patched = tmp / f"{function}.py"  # the source as deployed, for the DDP rows
            patched.write_text(source)
            for seed in seeds:
                for config in configs:
                    if config == DDP:
                        workload = Workload(
                            data_dir=data[dataset], train_size=0, test_size=0, name=name,
                            function_file=str(patched), epochs=epochs, goal_accuracy=101.0,
                            batch_size=batch, lr=lr, seed=seed,
                        )  # fmt: skip
                        row = run_ddp(workload, k=8, world=parallelism)
                        _record(out, name, config, seed, [e.accuracy for e in row.epochs])
                        continue
                    options = {"k": 8, **CONFIGS[config]}
                    task_id = engine.train(
                        function=function, dataset=dataset, epochs=epochs, lr=lr,
                        batch_size=batch, parallelism=parallelism, static=True, seed=seed,
                        validate_every=1, **options,
                    )  # fmt: skip
                    info = engine.wait(task_id, timeout_s=1800)
                    accuracy = [e.accuracy for e in engine.get_history(task_id).epochs]
                    state, error = info.state.value, info.error
                    _record(out, name, config, seed, accuracy, state=state, error=error)


def _record(
    out: Path, name: str, config: str, seed: int, accuracy: list[float], **more: Any
) -> None:
    """One line of OUT (and of the output): the run's test accuracy after every epoch."""
    record = {"workload": name, "config": config, "seed": seed}
    record.update(acc=[round(a, 2) for a in accuracy], **more)
    print(json.dumps(record), flush=True)
    with out.open("a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
