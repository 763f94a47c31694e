"""An emulated network on one machine: nodes in network namespaces, shaped links, byte counters.

    with Netlab(["cp", "n1", "n2"], profile="100mbit") as lab:
        before = lab.counters()
        lab.run("n1", ["python", "-c", "..."])            # a command inside node n1's namespace
        server = lab.popen("cp", [sys.executable, "-m", "..."])
        after = lab.counters()                             # {"cp": LinkCounters, ...}

Every node is a network namespace with one link (a veth pair) to a bridge that lives in a
namespace of its own (the hub), so nothing is added to the machine's own network: traffic
goes only between the namespaces built here, and deleting them removes every link. Each
link is shaped with `tc tbf` on both ends (this kernel has no netem: rate only), so a
node's traffic is capped in both directions; its byte counters are the node end's
(`ip -n NS -s link`: tx is what the node sent, rx what it received).

What a lab makes is named `kubeml-netlab-<pid>-...` (namespaces) and
`/tmp/kubeml-netlab-<pid>` (files): a lab removes all of it on `close()`, at exit, and on
SIGINT/SIGTERM, and every new lab first sweeps what labs of dead processes left behind
(a SIGKILLed run). `python -m benchmarks.netlab --cleanup` removes every lab's leftovers.

Needs root, iproute2's `ip` and `tc`, and the tbf qdisc; `unavailable()` says what is
missing, for tests to skip with.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeml.procs import pid_alive

PREFIX = "kubeml-netlab-"
TMP_ROOT = Path("/tmp")
SUBNET = "10.213.0"  # private, and only inside the lab's own namespaces (the hub is isolated)
NODE_DEVICE = "lab0"

# Profile: link rate in bit/s (None: unshaped, for debugging).
PROFILES: dict[str, int | None] = {"10gbit": 10**10, "1gbit": 10**9, "100mbit": 10**8}
PROFILES["unshaped"] = None


@dataclass(frozen=True)
class Node:
    """One emulated machine: a namespace with one link to the bridge."""

    name: str
    netns: str
    address: str
    device: str = NODE_DEVICE  # the node's end of its link
    hub: str = ""  # the bridge's namespace
    hub_device: str = ""  # the bridge's end of the link, in `hub`


_FIELDS = ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets", "drops")


@dataclass(frozen=True)
class LinkCounters:
    """A link's counters, seen from its node: tx is what the node sent. `drops`: packets
    the shaper dropped at either end (its queue holds 50 ms), which TCP sends again."""

    tx_bytes: int
    rx_bytes: int
    tx_packets: int
    rx_packets: int
    drops: int = 0

    def __sub__(self, other: LinkCounters) -> LinkCounters:
        return LinkCounters(*(getattr(self, k) - getattr(other, k) for k in _FIELDS))

    @property
    def bytes(self) -> int:
        """Both directions: what a link that carries one direction at a time must move."""
        return self.tx_bytes + self.rx_bytes

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in _FIELDS}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check)


def _tc(*args: str) -> None:
    _run(["tc", *args], True)


def _run(argv: list[str], check: bool) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done


def netns_names() -> list[str]:
    """Every network namespace with a name (`ip netns list`)."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pids_in(netns: str) -> list[int]:
    out = _ip("netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split()]


def _kill_all(netnses: Sequence[str], grace_s: float = 3.0) -> None:
    """SIGTERM every process in `netnses`, then SIGKILL what is still there."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [pid for ns in netnses for pid in _pids_in(ns) if pid != os.getpid()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if pid_alive(pid) and not _zombie(pid)]
            time.sleep(0.05)
        if not pids:
            return


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _remove(netnses: Sequence[str], tmp: Path | None) -> None:
    _kill_all(netnses)
    for ns in netnses:
        _ip("netns", "del", ns, check=False)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


def _owner(name: str) -> int | None:
    head = name[len(PREFIX) :].split("-", 1)[0]
    return int(head) if name.startswith(PREFIX) and head.isdigit() else None


def sweep(everything: bool = False) -> list[str]:
    """Remove what labs of dead processes left (all labs' with `everything`); the names."""

    def stale(name: str) -> bool:
        owner = _owner(name)
        if owner is None:
            return False
        return everything or (owner != os.getpid() and not pid_alive(owner))

    namespaces = [ns for ns in netns_names() if stale(ns)]
    _remove(namespaces, None)
    for folder in TMP_ROOT.glob(f"{PREFIX}*"):
        if stale(folder.name):
            shutil.rmtree(folder, ignore_errors=True)
    return namespaces


def leftovers(pid: int | None = None) -> dict[str, list[Any]]:
    """What labs (of `pid`, or all) have on the machine now: namespaces, their processes, files."""
    mine = [
        ns
        for ns in netns_names()
        if (owner := _owner(ns)) is not None and (pid is None or owner == pid)
    ]
    tag = f"{PREFIX}{pid}-" if pid is not None else PREFIX
    return {
        "netns": mine,
        "pids": [p for ns in mine for p in _pids_in(ns)],
        "files": [str(f) for f in TMP_ROOT.glob(f"{tag}*")],
    }


@functools.cache
def unavailable() -> str | None:
    """Why labs cannot be built here (None: they can). Probes once: a namespace with tbf."""
    reason = None
    if sys.platform != "linux":
        reason = "network namespaces need Linux"
    elif os.geteuid() != 0:
        reason = "network namespaces and tc need root"
    elif not (shutil.which("ip") and shutil.which("tc")):
        reason = "iproute2's ip and tc are not installed"
    else:
        probe = f"{PREFIX}{os.getpid()}-probe"
        try:
            _ip("netns", "add", probe)
            _tc("-n", probe, "qdisc", "add", "dev", "lo", "root", *_tbf(10**8))
        except (RuntimeError, OSError) as exc:
            reason = f"cannot build a shaped namespace here: {exc}"
        finally:
            _ip("netns", "del", probe, check=False)
    return reason


def _tbf(rate_bits: int) -> list[str]:
    # The bucket holds 10 ms at the rate, and at least 256 KiB: veth hands tbf whole GSO
    # segments (up to 64 KiB), and a bucket smaller than a segment stalls the link.
    burst = max(256 * 1024, rate_bits // 8 // 100)
    return ["tbf", "rate", str(rate_bits), "burst", str(burst), "latency", "50ms"]


_serial = itertools.count(1)  # labs of one process get distinct names
_open: list[Netlab] = []
_handlers: dict[int, Any] = {}


def _on_signal(signum: int, frame: Any) -> None:
    for lab in list(_open):
        lab.close()
    previous = _handlers.get(signum, signal.SIG_DFL)
    if previous == signal.SIG_IGN:
        return
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    if _handlers or threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        _handlers[signum] = signal.getsignal(signum)
        signal.signal(signum, _on_signal)
    atexit.register(lambda: [lab.close() for lab in list(_open)])


class Netlab:
    """Nodes in namespaces on one bridge, every link shaped to `profile`; a context manager.

    Args:
        nodes: node names (short: they name devices), e.g. ["cp", "n1", "n2"].
        profile: a key of PROFILES: "100mbit", "1gbit", "10gbit" or "unshaped".
        env: variables every process started in the lab gets, over this process's own.
    """

    def __init__(
        self, nodes: Sequence[str], profile: str = "100mbit", env: Mapping[str, str] | None = None
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}: one of {', '.join(PROFILES)}")
        if len(set(nodes)) != len(nodes) or not all(0 < len(n) <= 10 for n in nodes):
            raise ValueError(f"node names must be distinct, 1-10 characters: {nodes}")
        self.profile, self.rate_bits = profile, PROFILES[profile]
        self.env = dict(env or {})
        tag = f"{PREFIX}{os.getpid()}-{next(_serial)}"
        self.hub = f"{tag}-hub"
        self.tmp = TMP_ROOT / tag
        self.nodes = {
            name: Node(
                name, f"{tag}-{name}", f"{SUBNET}.{10 + i}", hub=self.hub, hub_device=f"to-{name}"
            )
            for i, name in enumerate(nodes)
        }
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = True

    # -- building and tearing down --------------------------------------------------------
    def start(self) -> Netlab:
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        sweep()
        _install_handlers()
        self._closed = False
        _open.append(self)
        try:
            self.tmp.mkdir(parents=True)
            _ip("netns", "add", self.hub)
            _ip("-n", self.hub, "link", "add", "name", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "dev", "br0", "up")
            for node in self.nodes.values():
                self._add(node)
        except BaseException:
            self.close()
            raise
        return self

    def _add(self, node: Node) -> None:
        _ip("netns", "add", node.netns)
        _ip("-n", self.hub, "link", "add", "name", node.hub_device, "type", "veth",
            "peer", "name", node.device, "netns", node.netns)  # fmt: skip
        _ip("-n", self.hub, "link", "set", "dev", node.hub_device, "master", "br0", "up")
        _ip("-n", node.netns, "link", "set", "dev", "lo", "up")
        _ip("-n", node.netns, "addr", "add", f"{node.address}/24", "dev", node.device)
        _ip("-n", node.netns, "link", "set", "dev", node.device, "up")
        # A default route on the link, so programs that ask "which address reaches the
        # world" (Ray does) get this node's. Nothing beyond the bridge answers.
        _ip("-n", node.netns, "route", "add", "default", "dev", node.device)
        if self.rate_bits is not None:
            _tc("-n", node.netns, "qdisc", "add", "dev", node.device, "root", *_tbf(self.rate_bits))
            _tc("-n", self.hub, "qdisc", "add", "dev", node.hub_device, "root",
                *_tbf(self.rate_bits))  # fmt: skip

    def close(self) -> None:
        """Stop every process in the lab's namespaces, delete them and the lab's files."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        _remove([n.netns for n in self.nodes.values()] + [self.hub], self.tmp)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if self in _open:
            _open.remove(self)

    def __enter__(self) -> Netlab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- using it -------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        return self.nodes[name]

    def command(self, node: str, argv: Sequence[str]) -> list[str]:
        """`argv` as a command line that runs inside `node`'s namespace."""
        return ["ip", "netns", "exec", self.nodes[node].netns, *argv]

    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        return {**os.environ, **self.env, **(env or {})}

    def popen(
        self,
        node: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log: str | None = None,
        **options: Any,
    ) -> subprocess.Popen[Any]:
        """Start `argv` inside `node`; stopped by `close()`. `log`: a file name under the
        lab's folder for its output (default: inherited)."""
        if log is not None:
            out = open(self.tmp / log, "ab")  # noqa: SIM115 - the child holds it
            options.update(stdout=out, stderr=subprocess.STDOUT)
        proc = subprocess.Popen(self.command(node, argv), env=self._env(env), **options)
        self._procs.append(proc)
        return proc

    def run(
        self, node: str, argv: Sequence[str], *, timeout_s: float = 60.0, **options: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside `node` to its end; its output captured as text."""
        env = self._env(options.pop("env", None))
        return subprocess.run(
            self.command(node, argv), env=env, capture_output=True, text=True,
            timeout=timeout_s, **options,
        )  # fmt: skip

    def log(self, name: str) -> str:
        path = self.tmp / name
        return path.read_text(errors="replace") if path.exists() else ""

    def counters(self) -> dict[str, LinkCounters]:
        """Every node's link counters now (the node's end: tx is what it sent)."""
        return {name: read_counters(node) for name, node in self.nodes.items()}

    def rate_bytes_s(self) -> float | None:
        return None if self.rate_bits is None else self.rate_bits / 8


def read_counters(node: Node) -> LinkCounters:
    """A node's link counters (`ip -s link`, `tc -s qdisc`), readable from any namespace."""
    out = _ip("-n", node.netns, "-j", "-s", "link", "show", "dev", node.device).stdout
    stats = json.loads(out)[0]["stats64"]
    rx, tx = stats["rx"], stats["tx"]
    drops = _drops(node.netns, node.device) + (_drops(node.hub, node.hub_device) if node.hub else 0)
    return LinkCounters(tx["bytes"], rx["bytes"], tx["packets"], rx["packets"], drops)


def _drops(netns: str, device: str) -> int:
    out = _run(["tc", "-n", netns, "-s", "-j", "qdisc", "show", "dev", device], True).stdout
    return sum(int(q.get("drops", 0)) for q in json.loads(out))


def delta(after: Mapping[str, LinkCounters], before: Mapping[str, LinkCounters]) -> dict:
    """Per-node counters between two `Netlab.counters()` readings."""
    return {name: after[name] - before[name] for name in after}


def main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.netlab", description=__doc__)
    parser.add_argument("--cleanup", action="store_true", help="remove every lab's leftovers")
    parser.add_argument("--list", action="store_true", help="list labs' namespaces and files")
    args = parser.parse_args(argv)
    if args.cleanup:
        print("removed:", " ".join(sweep(everything=True)) or "nothing")
    print(json.dumps(leftovers(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
