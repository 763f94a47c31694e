"""A Ray cluster on a Netlab: the head on one node, one Ray worker node per other node.

    with Netlab(["cp", "n1", "n2"], profile="100mbit") as lab:
        ray_cluster = RayOnLab(lab, head="cp", workers=["n1", "n2"]).start()
        lab.popen("cp", [sys.executable, "driver.py"], env=ray_cluster.env)  # ray.init(address)

Each node is a `ray start --block` in its namespace, with its own temporary folder under the
lab's and the ports below (every namespace has its own port space, so every node can use
the same ones). The nodes reach each other over the lab's links, by non-loopback
addresses, which Ray 2.60 only allows with token authentication: every node and every
driver gets `RAY_AUTH_MODE=token` and the same `RAY_AUTH_TOKEN` (`env`). The lab stops the
nodes with everything else it started.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.netlab import Netlab

GCS_PORT = 6379
PORTS = {  # fixed, so the lab's traffic is easy to tell apart
    "--node-manager-port": 20001,
    "--object-manager-port": 20002,
    "--runtime-env-agent-port": 20003,
    "--dashboard-agent-grpc-port": 20004,
    "--dashboard-agent-listen-port": 20005,
    "--metrics-export-port": 20006,
    "--min-worker-port": 21000,
    "--max-worker-port": 21999,
}
# What kubeml gives a local Ray it starts (docs/cluster.md, Start): actors at nice 0, and
# messages up to 4 MiB inside RPCs. A cluster's head takes them from its environment.
HEAD_ENV = {"RAY_worker_niceness": "0", "RAY_max_direct_call_object_size": "4259840"}
_WAIT = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= int(sys.argv[2]):
        print(len(alive)); sys.exit(0)
    time.sleep(0.2)
sys.exit(f"{len(alive)} of {sys.argv[2]} Ray nodes alive after {sys.argv[3]} s")
"""


@dataclass
class RayOnLab:
    """Ray head on `head`, a Ray worker node on each of `workers`, all in `lab`.

    Args:
        head_cpus: CPUs the head offers to tasks (0: the control plane's node runs none).
        worker_cpus: CPUs each worker node offers.
        object_store_mb: each node's object store.
    """

    lab: Netlab
    head: str
    workers: list[str]
    head_cpus: int = 0
    worker_cpus: int = 1
    object_store_mb: int = 400
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def address(self) -> str:
        return f"{self.lab.node(self.head).address}:{GCS_PORT}"

    @property
    def env(self) -> dict[str, str]:
        """What every Ray process and driver in the lab needs: the cluster's token, and Ray
        allowed off loopback (the tests' `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` pins Ray to
        127.0.0.1, which no other node reaches)."""
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TMPDIR": str(self.lab.tmp),  # drivers' files too, not /tmp/ray
        }

    def _start_node(self, node: str, *args: str, cpus: int, env: dict[str, str]) -> None:
        ray = str(Path(sys.executable).with_name("ray"))
        temp = self.lab.tmp / f"ray-{node}"
        argv = [
            ray, "start", "--block", "--disable-usage-stats",
            f"--node-ip-address={self.lab.node(node).address}", f"--num-cpus={cpus}",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            f"--temp-dir={temp}", *(f"{flag}={port}" for flag, port in PORTS.items()), *args,
        ]  # fmt: skip
        self._procs[node] = self.lab.popen(
            node, argv, env={**self.env, **env}, log=f"ray-{node}.log"
        )

    def start(self, timeout_s: float = 120.0) -> RayOnLab:
        """Start the head, then the worker nodes; return once all are alive."""
        self._start_node(
            self.head, "--head", f"--port={GCS_PORT}", "--include-dashboard=false",
            cpus=self.head_cpus, env=HEAD_ENV,
        )  # fmt: skip
        self.wait(1, timeout_s)
        for node in self.workers:
            self._start_node(node, f"--address={self.address}", cpus=self.worker_cpus, env={})
        self.wait(1 + len(self.workers), timeout_s)
        return self

    def wait(self, nodes: int, timeout_s: float) -> None:
        """Return once `nodes` Ray nodes are alive, asked by a driver on the head's node."""
        started = time.monotonic()
        while True:
            dead = [n for n, proc in self._procs.items() if proc.poll() is not None]
            if dead:
                raise RuntimeError(f"Ray on {dead} exited:\n{self._logs(dead)}")
            left = timeout_s - (time.monotonic() - started)
            done = self.lab.run(
                self.head,
                [sys.executable, "-c", _WAIT, self.address, str(nodes), str(max(left, 1))],
                env=self.env,
                timeout_s=max(left, 1) + 30,
            )
            if done.returncode == 0:
                return
            if left <= 0:
                raise RuntimeError(
                    f"Ray did not come up: {done.stderr[-2000:]}\n{self._logs(self.nodes)}"
                )
            time.sleep(1)  # the GCS may not listen yet: the driver failed to connect

    def _logs(self, nodes: list[str]) -> str:
        return "\n".join(f"{n}: ...{self.lab.log(f'ray-{n}.log')[-1500:]}" for n in nodes)

    @property
    def nodes(self) -> list[str]:
        return [self.head, *self.workers]


def run_python(
    lab: Netlab, node: str, code: str, env: dict[str, str], timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run Python source `code` in `node`'s namespace with `env`; output captured."""
    return lab.run(node, [sys.executable, "-c", code], env=env, timeout_s=timeout_s)
