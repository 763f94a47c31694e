"""Micro-benchmark: the server's peak memory growth while it takes a 1 GiB dataset upload.

A real server process (`ensure_server`, inline backend, its own home) receives a generated
dataset of 1 GiB of float32 features through the Python client, which streams the files
from disk. The server's peak RSS is reset (`/proc/PID/clear_refs`, "5") just before the
upload and read (`VmHWM`) after it; a thread also polls `VmRSS` every 10 ms, in case the
kernel refuses the reset. The figure is the growth over the RSS before the upload, as a
ratio to the 200 MB budget of issue 9 item 7 (target: at most 1.0; before streaming the
server grew by about 2 GB).

    python -m benchmarks.micro_upload [--quick]     # --quick: 256 MiB
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BUDGET_BYTES = 200 * 10**6
FEATURES = 1024  # float32 values per sample: 4 KiB a row


def _kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _write_dataset(folder: Path, train_bytes: int) -> list[Path]:
    """The four .npy files, written in chunks so this process never holds them either."""
    import numpy as np

    rows = train_bytes // (4 * FEATURES)
    rng = np.random.default_rng(0)
    paths = []
    for field, n in (("train_x", rows), ("train_y", rows), ("test_x", 1000), ("test_y", 1000)):
        path = folder / f"{field}.npy"
        shape = (n, FEATURES) if field.endswith("_x") else (n,)
        dtype = np.float32 if field.endswith("_x") else np.int64
        out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        for start in range(0, n, 16_384):
            stop = min(n, start + 16_384)
            if field.endswith("_x"):
                out[start:stop] = rng.random((stop - start, FEATURES), dtype=np.float32)
            else:
                out[start:stop] = rng.integers(0, 10, stop - start)
        out.flush()
        del out
        paths.append(path)
    return paths


def upload_memory(quick: bool = False) -> dict[str, Any]:
    from kubeml.client import Client, ensure_server, server_status, stop_server
    from kubeml.settings import Settings

    train_bytes = (256 if quick else 1024) * 2**20
    with tempfile.TemporaryDirectory(prefix="kubeml-upload-") as tmp:
        root = Path(tmp)
        paths = _write_dataset(root, train_bytes)
        upload_bytes = sum(p.stat().st_size for p in paths)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        settings = Settings(
            home=root / "home", host="127.0.0.1", port=port, backend="inline", capacity=1,
            shm_dir=root / "shm", api_token=None, url=None, max_upload_mb=4096,
        )  # fmt: skip
        try:
            url = ensure_server(settings, quiet=True)
            status = server_status(settings)
            assert status is not None
            pid = int(status["pid"])
            time.sleep(1.0)  # let the server settle after its start
            rss_before = _kib(pid, "VmRSS")
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to VmRSS
                reset = True
            except OSError:
                reset = False
            polled = [rss_before]
            done = threading.Event()

            def poll() -> None:
                while not done.is_set():
                    polled.append(_kib(pid, "VmRSS"))
                    time.sleep(0.01)

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            started = time.perf_counter()
            with Client(url, token="", timeout_s=1200) as client:
                info = client.create_dataset("big", *paths)
            seconds = time.perf_counter() - started
            done.set()
            poller.join()
            peak = max(max(polled), _kib(pid, "VmHWM") if reset else 0)
        finally:
            stop_server(settings, timeout_s=60)
    growth = peak - rss_before
    return {
        "upload_bytes": upload_bytes,
        "train_size": info.train_size,
        "seconds": seconds,
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": peak,
        "peak_growth_bytes": growth,
        "hwm_reset": reset,
        "budget_bytes": BUDGET_BYTES,
        "ratio": growth / BUDGET_BYTES,
        "target": "<= 1.0",
    }


def upload_line(result: dict[str, Any]) -> str:
    return (
        f"upload: {result['upload_bytes'] / 2**30:.2f} GiB in {result['seconds']:.1f} s "
        f"({result['upload_bytes'] / result['seconds'] / 1e6:.0f} MB/s); server peak RSS "
        f"{result['rss_before_bytes'] / 1e6:.0f} -> {result['peak_rss_bytes'] / 1e6:.0f} MB, "
        f"growth {result['peak_growth_bytes'] / 1e6:.0f} MB = {result['ratio']:.2f} of the "
        f"200 MB budget (target {result['target']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB instead of 1 GiB")
    print(upload_line(upload_memory(parser.parse_args().quick)))


if __name__ == "__main__":
    main()
