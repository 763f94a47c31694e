"""A relay on each node for the round sockets of the functions there.

Without it, every function of a round wakes the control plane's round hub twice, once for
its report and once for its release, and the hub's work per round grows with N (docs/
cluster.md, "Growth"). A node's functions of one task instead connect to a `NodeRelay` on
their own node, presenting the token and group their offer gave (`rounds.connect`, the same
protocol as to the control plane). The relay holds a group's reports until each of the
group's functions connected to it has sent one (their round is complete here: the barrier
waits for all of them anyway), or `HOLD_S` has passed since the first, and sends them on as
one message over its one connection to the control plane (`round_links`); the round's
replies come back as one message, each distinct reply once, and it hands each function its
own. A function whose connection ends is reported as gone.

The relay adds a hop, not a guarantee: if it dies, its functions' connections break, their
publish raises `BackendError`, and the job replays their round as for any lost connection;
the control plane forgets the relay and starts another on that node for later invocations
(`NodeRelays`), which until then connect directly.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from kubeml.backends.ray.round_links import Down, Up, accept_each, decode, encode, shut_down
from kubeml.backends.ray.rounds import _CONNECT_TIMEOUT_S, preamble, read_preamble

HOLD_S = 1.0  # the longest a report waits at the relay for its group's others


@dataclass
class _Group:
    members: set[bytes] = field(default_factory=set)  # connected tokens
    held: list[tuple[bytes, bytes]] = field(default_factory=list)  # (token, report)
    sent: set[bytes] = field(default_factory=set)  # sent up, not answered yet
    since: float = 0.0  # when the first held report arrived


class NodeRelay:
    """The relay's sockets and its thread (`kubeml-node-relay`): a listening socket on
    `host` for the node's functions, and one connection to the control plane's round
    channels at `upstream`, presenting `token` (made by `RoundChannels.offer_link`)."""

    def __init__(self, host: str, upstream: tuple[str, int], token: bytes) -> None:
        up = socket.create_connection(upstream, timeout=_CONNECT_TIMEOUT_S)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up.sendall(preamble(token))
        up.settimeout(None)
        self._up = Connection(up.detach())
        self._server = socket.create_server((host, 0))
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._conns: dict[bytes, tuple[Connection, str]] = {}  # token -> (conn, group)
        self._groups: dict[str, _Group] = {}
        self._arrived: list[tuple[bytes, str, Connection]] = []
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_in, self._wake = socket.socketpair()
        self._wake_in.setblocking(False)
        self._selector.register(self._wake_in, selectors.EVENT_READ)
        self._selector.register(self._up, selectors.EVENT_READ)
        self._stopping = False
        self.messages_up = self.messages_down = 0  # with the control plane (tests read them)
        threading.Thread(
            target=accept_each, args=(self._server, self._admit), name="kubeml-relay-accept",
            daemon=True,
        ).start()  # fmt: skip
        self._thread = threading.Thread(target=self._loop, name="kubeml-node-relay", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop: every connection ends (the loop closes them)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake.send(b"x")
        self._thread.join(timeout=5)

    # -- connections from the node's functions ---------------------------------------------
    def _admit(self, sock: socket.socket) -> None:
        presented = read_preamble(sock)
        if presented is None:
            return
        token, group = presented
        with self._lock:
            if self._stopping:
                sock.close()
                return
            self._arrived.append((token, group, Connection(sock.detach())))
        with contextlib.suppress(OSError):
            self._wake.send(b"x")

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stopping:
                for key, _ in self._selector.select(self._timeout()):
                    if key.fileobj is self._wake_in:
                        self._take_arrivals()
                    elif key.fileobj is self._up:
                        self._down(decode(self._up.recv_bytes()))
                    else:
                        self._from_function(key.data)
                self._send_up(self._due(time.monotonic()), [])
        except Exception:  # the control plane (or this relay) closed, or broke the protocol
            pass  # every connection ends: the functions' publish fails, their round replays
        finally:
            self._stopping = True
            self._server.close()
            with self._lock:
                arrived, self._arrived = self._arrived, []
            for conn in [c for c, _ in self._conns.values()] + [c for _, _, c in arrived]:
                conn.close()
            with contextlib.suppress(OSError):
                self._up.close()
            self._selector.close()
            self._wake_in.close()
            self._wake.close()

    def _take_arrivals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_in.recv(4096):
                pass
        with self._lock:
            arrived, self._arrived = self._arrived, []
        for token, group, conn in arrived:
            self._conns[token] = (conn, group)
            self._groups.setdefault(group, _Group()).members.add(token)
            self._selector.register(conn, selectors.EVENT_READ, token)

    def _from_function(self, token: bytes) -> None:
        conn, group_name = self._conns[token]
        group = self._groups[group_name]
        try:
            report = conn.recv_bytes()
        except (EOFError, OSError):
            self._selector.unregister(conn)
            conn.close()
            del self._conns[token]
            group.members.discard(token)
            group.sent.discard(token)
            group.held = [(t, r) for t, r in group.held if t != token]  # its attempt is lost
            if not group.members:
                del self._groups[group_name]
            self._send_up(self._complete(group), [token])
            return
        if not group.held:
            group.since = time.monotonic()
        group.held.append((token, report))
        self._send_up(self._complete(group), [])

    def _complete(self, group: _Group) -> list[tuple[bytes, bytes]]:
        """A group's held reports once each of its connected functions has sent one (or
        had its report sent up already, and waits for the reply: a late report, after the
        others went up when `HOLD_S` ran out, goes at once)."""
        if group.held and {t for t, _ in group.held} | group.sent >= group.members:
            return self._release(group)
        return []

    @staticmethod
    def _release(group: _Group) -> list[tuple[bytes, bytes]]:
        held, group.held = group.held, []
        group.sent.update(t for t, _ in held)
        return held

    def _due(self, now: float) -> list[tuple[bytes, bytes]]:
        """The reports held longer than `HOLD_S`."""
        due: list[tuple[bytes, bytes]] = []
        for group in self._groups.values():
            if group.held and now - group.since >= HOLD_S:
                due += self._release(group)
        return due

    def _timeout(self) -> float | None:
        held = [g.since for g in self._groups.values() if g.held]
        return max(0.0, min(held) + HOLD_S - time.monotonic()) if held else None

    def _send_up(self, reports: list[tuple[bytes, bytes]], gone: list[bytes]) -> None:
        if reports or gone:
            self._up.send_bytes(encode(Up(reports, gone)))
            self.messages_up += 1

    def _down(self, message: Down) -> None:
        self.messages_down += 1
        for tokens, payload in message.replies:
            for token in tokens:
                entry = self._conns.get(token)
                if entry is not None:
                    self._groups[entry[1]].sent.discard(token)
                    with contextlib.suppress(OSError):
                        entry[0].send_bytes(payload)
        for token in message.shut:
            entry = self._conns.get(token)
            if entry is not None:
                self._groups[entry[1]].sent.discard(token)
                shut_down(entry[0])  # the function reads the end; the loop then forgets it


class NodeRelayActor:
    """The relay as a Ray actor (no CPUs), placed on its node by the control plane."""

    def __init__(self, upstream: tuple[str, int], token: bytes) -> None:
        import ray

        self._relay = NodeRelay(ray.util.get_node_ip_address(), upstream, token)

    def address(self) -> tuple[str, int]:
        return self._relay.address

    def where(self) -> tuple[str, int]:
        """(node id, pid)."""
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()
