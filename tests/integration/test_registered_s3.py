"""A dataset registered from an S3-compatible server (moto's server mode) that runs in a
namespace of its own on the emulated network: the server reads only headers, the functions
read the samples over a 100 Mbit/s link (its own counters say so), a changed object is
refused, and deleting the dataset leaves the bucket alone.

Needs root, iproute2 and the tbf qdisc (as CI has), and the dev extra's s3fs and moto;
elsewhere it skips and says which is missing.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import netlab
from benchmarks.netlab import Netlab, delta
from tests.conftest import ROOT

_REASON = netlab.unavailable()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_REASON is not None, reason=f"no emulated network: {_REASON}"),
]
pytest.importorskip("s3fs", reason="s3fs (the s3 extra) is not installed")
pytest.importorskip("moto", reason="moto (the dev extra) is not installed")

PORT = 5000
URL = "s3://kubeml-test/digits"

# Runs inside the control plane's namespace: `upload`, `train HOME` or `change HOME`.
_DRIVER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import numpy as np
    import s3fs

    fs = s3fs.S3FileSystem()
    what = sys.argv[1]
    if what == "upload":
        deadline = time.monotonic() + 60
        while True:  # until the S3 server in its namespace answers
            try:
                fs.mkdir("kubeml-test")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        from sklearn.datasets import load_digits
        data = load_digits()
        x, y = data.images.astype(np.float32), data.target.astype(np.int64)
        arrays = {"train_x": x[300:], "train_y": y[300:], "test_x": x[:300], "test_y": y[:300]}
        for field, array in arrays.items():
            with fs.open(f"kubeml-test/digits/{field}.npy", "wb") as file:
                np.save(file, array)
        print(json.dumps({"train_x_bytes": arrays["train_x"].nbytes}))
        sys.exit()

    from kubeml.control.tasks.engine import Engine
    from kubeml.settings import Settings
    from tests.conftest import function_source

    home = Path(sys.argv[2])
    engine = Engine(Settings(home=home, backend="process", shm_dir=home / "shm", capacity=2))
    try:
        if what == "train":
            engine.register_dataset("s3digits", sys.argv[3])
            engine.create_function("mlp", function_source(DATASET="s3digits"))
        else:  # change: a new object under the registered name, then train again
            with fs.open("kubeml-test/digits/train_x.npy", "wb") as file:
                np.save(file, np.zeros((1497, 8, 8), np.float32))
        task_id = engine.train(function="mlp", dataset="s3digits", epochs=2, lr=0.05,
                               batch_size=16, k=4, parallelism=2, static=True, seed=2)
        info = engine.wait(task_id, 240)
        losses = [e.train_loss for e in engine.get_history(task_id).epochs]
        if what == "change":
            engine.delete_dataset("s3digits")
        print(json.dumps({"state": info.state.value, "accuracy": info.accuracy,
                          "error": info.error, "losses": losses,
                          "left": sorted(fs.ls("kubeml-test/digits", refresh=True))}))
    finally:
        engine.close()
""")


def _drive(lab: Netlab, *args: str, env: dict[str, str]) -> dict:
    done = lab.run("cp", [sys.executable, "-c", _DRIVER, *args], env=env, timeout_s=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_functions_read_a_registered_s3_dataset_over_a_shaped_link(tmp_path: Path) -> None:
    with Netlab(["cp", "s3"], profile="100mbit") as lab:
        endpoint = f"http://{lab.node('s3').address}:{PORT}"
        env = {
            "AWS_ACCESS_KEY_ID": "testing",  # moto takes any credentials
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        argv = [sys.executable, "-m", "moto.server", "-H", "0.0.0.0", "-p", str(PORT)]
        lab.popen("s3", argv, log="moto.log")
        uploaded = _drive(lab, "upload", env=env)

        before = lab.counters()
        trained = _drive(lab, "train", str(tmp_path / "home"), URL, env=env)
        moved = delta(lab.counters(), before)
        assert trained["state"] == "succeeded", trained["error"]
        assert trained["losses"][-1] < trained["losses"][0] and trained["accuracy"] > 80
        # Two epochs read the training split twice from the S3 node, over the shaped link.
        assert moved["s3"].tx_bytes >= 2 * uploaded["train_x_bytes"], moved
        assert moved["cp"].rx_bytes >= 2 * uploaded["train_x_bytes"], moved

        changed = _drive(lab, "change", str(tmp_path / "home"), env=env)
        assert changed["state"] == "failed"
        assert (
            "train_x (s3://kubeml-test/digits/train_x.npy) changed since it was"
            in (changed["error"])
        )
        assert [Path(p).name for p in changed["left"]] == [
            "test_x.npy", "test_y.npy", "train_x.npy", "train_y.npy"
        ]  # fmt: skip
