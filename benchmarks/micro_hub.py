"""Micro-benchmark: the control plane's cost per round report on the Ray backend's round
sockets, early and late in a long epoch.

    python -m benchmarks.micro_hub [--ns 4 32] [--rounds 1500] [--window 100] [--relays 0 4]

The real `RoundChannels` (one hub thread answers every function's socket) and
`RoundBarrier` (`publish_then`, a no-op merge) in this process; N functions in a child
process, one thread each, connect over loopback and publish a report and wait for the
release, round after round. The hub thread's CPU (its schedstat), and the CPU of the hub
and the merge threads together (the process's less the polling main thread's), are read
over `--window` rounds after as many from the start and over the last `--window`, per
report. Printed: microseconds a report, early and late, and late ÷ early (a barrier
whose work per arrival grows with the rounds already merged shows here: a long epoch
has thousands of rounds). With `--relays R` (R > 0), the functions connect through R node
relays (`kubeml.backends.ray.node_relay`, in the child process too, N/R functions each),
as the functions of a node do on a cluster: the control plane's cost per report then
counts one message a round per relay each way.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import threading
import time
from typing import Any

from kubeml.backends.ray.node_relay import NodeRelay
from kubeml.backends.ray.rounds import RoundChannels, RoundOffer, RoundSocket, connect
from kubeml.backends.relay import Publish, Released
from kubeml.control.job.barrier import RoundBarrier
from kubeml.runtime.sync import Release, RoundReport


def _functions(offers: list[RoundOffer], rounds: int, links: list[tuple[Any, bytes]]) -> None:
    relays = [NodeRelay("127.0.0.1", address, token) for address, token in links]
    if relays:  # function i on relay i mod R, presenting its offer's token there
        offers = [
            RoundOffer(relays[i % len(relays)].address, o.token, o.group)
            for i, o in enumerate(offers)
        ]

    def run(func_id: int, offer: RoundOffer) -> None:
        conn = connect(offer)
        assert conn is not None
        for round_index in range(rounds):
            conn.send(Publish(RoundReport("t", func_id, round_index, 64, 1.0, 2, False)))
            conn.recv()
        conn.close()

    threads = [threading.Thread(target=run, args=item) for item in enumerate(offers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _thread_ns(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[0])


def _others_ns() -> int:
    """The process's CPU but this (polling) thread's: the hub, the merges, the accept."""
    return time.process_time_ns() - _thread_ns(threading.get_native_id())


def measure(n: int, rounds: int, window: int, relays: int = 0) -> dict[str, Any]:
    older = set(threading.enumerate())  # a hub of an earlier measure may still be ending
    channels = RoundChannels("127.0.0.1")
    merged = [0]

    def merge(round_index: int, reports: list[RoundReport]) -> Release:
        merged[0] = round_index + 1
        return Release(proceed=True)

    barrier = RoundBarrier(list(range(n)), merge)

    def answer(sock: RoundSocket) -> None:
        message = sock.recv()
        barrier.publish_then(message.report, lambda release: sock.send(Released(release, None)))

    try:
        offers = [channels.offer(answer, "t") for _ in range(n)]
        links = [(channels.address, channels.offer_link(lambda: None)) for _ in range(relays)]
        hub = next(
            t for t in threading.enumerate() if t.name == "kubeml-ray-rounds-hub" and t not in older
        )
        assert hub.native_id is not None
        child = mp.get_context("spawn").Process(target=_functions, args=(offers, rounds, links))
        child.start()
        marks: dict[int, tuple[int, int, float]] = {}
        wanted = [window, 2 * window, rounds - window, rounds]  # past the start
        while len(marks) < len(wanted) and child.is_alive():
            done = merged[0]
            for w in wanted:
                if w not in marks and done >= w:
                    marks[w] = (_thread_ns(hub.native_id), _others_ns(), time.perf_counter())
            time.sleep(0.0005)
        child.join()
    finally:
        channels.close()

    def per_report(a: int, b: int) -> dict[str, float]:
        reports = (b - a) * n
        hub_ns, all_ns, wall = (marks[b][i] - marks[a][i] for i in range(3))
        return {
            "hub_us": hub_ns / reports / 1e3,
            "all_us": all_ns / reports / 1e3,
            "round_ms": wall / (b - a) * 1e3,
        }

    early, late = per_report(window, 2 * window), per_report(rounds - window, rounds)
    return {"n": n, "relays": relays, "rounds": rounds, "early": early, "late": late}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--rounds", type=int, default=1500)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--relays", type=int, nargs="+", default=[0], help="0: direct")
    args = parser.parse_args()
    print(f"{'N':>3} {'relays':>6} {'rounds':>9} {'hub us/report':>14} {'all us/report':>14} "
          f"{'round ms':>9}")  # fmt: skip
    for n, relays in ((n, r) for n in args.ns for r in args.relays):
        r = measure(n, args.rounds, args.window, relays)
        for name in ("early", "late"):
            w = r[name]
            span = (
                f"{args.window}-{2 * args.window}"
                if name == "early"
                else f"{args.rounds - args.window}-{args.rounds}"
            )
            print(f"{n:>3} {relays:>6} {span:>9} {w['hub_us']:>14.1f} {w['all_us']:>14.1f} "
                  f"{w['round_ms']:>9.2f}")  # fmt: skip
        ratio = r["late"]["all_us"] / r["early"]["all_us"]
        print(f"    N={n}: a late report ÷ an early one (the hub and the merges): {ratio:.2f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
