"""A direct TCP connection per train invocation for the round's hot path.

Through Ray, a round's `Publish` rides the actor's result stream and its `Released` an
actor call: about 1.5-2 ms each way on one node, several times what the process
backend's pipe takes (instrumented: docs/cluster.md, "Performance"). So a train
invocation of a model small enough to travel by value (`INLINE_BYTES`: its messages hold
no object refs, which may not leave Ray's own serialisation) is offered a socket to the
control plane: the function connects to the address it was given with the invocation,
presents the offer's random token, and publishes over it; the control plane answers with
the release on the same socket, every function's from one thread. Everything else (log
lines, requests, the result, the actor's failure) stays on Ray. A function that cannot
connect publishes through Ray as before, so the channel is only ever a shortcut.

Functions that share a node with others of their task may be offered their node's relay
instead (`kubeml.backends.ray.node_relay`): the same protocol to an address on their own
node, which holds a node's reports of a round and sends them on as one message over its one
connection here (`round_links`), and hands out the round's releases, which come back as
one message too. The hub then wakes once a round per node, not once per function.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from kubeml.backends.ray.round_links import (
    STALE_S,
    LinkLost,
    RelayedSocket,
    RelayLink,
    accept_each,
    encoded,
)

_TOKEN_BYTES = 16
_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RoundOffer:
    """Where a function connects for its rounds (the control plane, or its node's relay),
    the secret it presents there, and its group (its task: a relay holds a group's reports
    of a round until each of its functions on the node has sent one)."""

    address: tuple[str, int]
    token: bytes
    group: str = ""


class RoundSocket:
    """One function's round connection, on the control plane. Its replies are sent from
    the thread that merges a round, while the hub may be closing it (the function died):
    sends and the close take one lock, so a reply never reaches a closed (or reused)
    descriptor; it raises OSError instead."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock, self._conn = sock, Connection(os.dup(sock.fileno()))
        self._lock = threading.Lock()
        self._shut = False

    def fileno(self) -> int:
        return self._conn.fileno()

    def recv(self) -> Any:
        return self._conn.recv()

    def send(self, message: Any) -> None:
        payload = encoded(message)
        with self._lock:
            if self._shut:
                raise OSError("the round socket is closed")
            self._conn.send_bytes(payload)

    def shut(self) -> None:
        """No more sends; both ends read the end (the hub then unregisters and closes)."""
        with self._lock:
            if not self._shut:
                self._shut = True
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.shut()
        with self._lock:
            self._conn.close()
            self._sock.close()


Answer = Callable[[RoundSocket], None]  # reads and answers one message of a connection


class RoundChannels:
    """The control plane's listening socket, on the address Ray knows this node by, and
    the one thread that answers every connected function (`kubeml-ray-rounds-hub`).

    Each offer waits for the one connection that presents its token; a connection with
    any other token (or none within the timeout) is closed unread. Once connected, the
    hub calls the offer's `answer` whenever a message has arrived: it reads the message
    and answers without waiting (a round's releases are sent by the thread that merges
    it), so a round of N functions wakes this thread, not N threads that each wait at
    the barrier. Only the hub registers, unregisters and closes connections; others shut
    them (the hub reads the end) or hand them over through `_wake`.
    """

    def __init__(self, host: str) -> None:
        self._server = socket.create_server((host, 0))
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._waiting: dict[bytes, tuple[Answer, str]] = {}  # offered: (answer, group)
        self._open: dict[bytes, RoundSocket | RelayedSocket] = {}  # connected, by token
        self._link_tokens: dict[bytes, LinkLost] = {}  # offered to node relays
        self._links: dict[RelayLink, LinkLost] = {}  # connected node relays (the hub's)
        self._arrived: list[tuple[Any, Any]] = []  # for the hub to register
        self._closed = False
        self.admitted = 0  # connections taken up so far (the backend's `describe`)
        self.relayed = 0  # of them, through a node relay
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_in, self._wake = socket.socketpair()
        self._wake_in.setblocking(False)
        self._selector.register(self._wake_in, selectors.EVENT_READ)
        threading.Thread(
            target=accept_each, args=(self._server, self._admit), name="kubeml-ray-rounds",
            daemon=True,
        ).start()  # fmt: skip
        threading.Thread(target=self._hub, name="kubeml-ray-rounds-hub", daemon=True).start()

    def offer(
        self, answer: Answer, group: str = "", via: tuple[str, int] | None = None
    ) -> RoundOffer:
        """An offer for one invocation, to connect here or (`via`) to its node's relay."""
        token = secrets.token_bytes(_TOKEN_BYTES)
        with self._lock:
            self._waiting[token] = (answer, group)
        return RoundOffer(via or self.address, token, group)

    def offer_link(self, lost: LinkLost) -> bytes:
        """A token for a node relay's connection; `lost()` once that connection ends."""
        token = secrets.token_bytes(_TOKEN_BYTES)
        with self._lock:
            self._link_tokens[token] = lost
        return token

    def revoke_link(self, token: bytes) -> None:
        """A relay that did not start: its token is refused from now on."""
        with self._lock:
            self._link_tokens.pop(token, None)

    def withdraw(self, offer: RoundOffer) -> None:
        """The invocation ended: stop waiting, and end its connection if it came."""
        with self._lock:
            self._waiting.pop(offer.token, None)
            sock = self._open.pop(offer.token, None)
        if sock is not None:
            sock.shut()

    def close(self) -> None:
        self._server.close()
        with self._lock:
            self._waiting.clear()
            tokens = list(self._open)
            self._closed = True
        for token in tokens:
            self.withdraw(RoundOffer(self.address, token))
        with contextlib.suppress(OSError):
            self._wake.send(b"x")

    def _admit(self, sock: socket.socket) -> None:
        presented = read_preamble(sock)
        if presented is None:
            return
        token = presented[0]
        with self._lock:
            answer = self._waiting.pop(token, (None, ""))[0]
            lost = self._link_tokens.pop(token, None)
            if answer is not None:
                self._open[token] = channel = RoundSocket(sock)
                self.admitted += 1
                self._arrived.append((channel, answer))
            elif lost is not None:
                self._arrived.append((RelayLink.over(sock), lost))
        if answer is None and lost is None:
            sock.close()
            return
        with contextlib.suppress(OSError):
            self._wake.send(b"x")

    def _hub(self) -> None:
        while True:
            # With relays, a reply that no round completes (its function was lost) is sent
            # after `STALE_S` at most.
            events = self._selector.select(STALE_S if self._links else None)
            for link in self._links:
                link.flush(stale_only=True)
            for key, _ in events:
                if key.fileobj is self._wake_in:
                    if not self._take_arrivals():
                        return
                elif isinstance(key.fileobj, RelayLink):
                    self._relayed(key.fileobj)
                else:
                    channel, answer = key.data
                    try:
                        answer(channel)
                    except Exception:  # closed (its invocation ended, its actor died) or failed
                        self._selector.unregister(channel)
                        channel.close()

    def _relayed(self, link: RelayLink) -> None:
        """Answer a node relay's message: its functions' reports, or one of them gone."""
        try:
            reports, gone = link.receive()
        except Exception:  # the relay (or its node) is gone, its functions with it; or it
            # broke the protocol (another version?): the same, it is never read again
            self._selector.unregister(link)
            lost = self._links.pop(link)
            threading.Thread(target=lost, name="kubeml-relay-lost", daemon=True).start()
            with self._lock:
                for token in link.close():
                    self._open.pop(token, None)
            return
        for token in gone:
            with self._lock:
                self._open.pop(token, None)
            link.forget(token)
        for token, payload in reports:
            with self._lock:
                sock = self._open.get(token)
                offered = self._waiting.pop(token, None) if sock is None else None
                if offered is not None:
                    self._open[token] = sock = RelayedSocket(link, token, *offered)
                    self.admitted += 1
                    self.relayed += 1
            if not isinstance(sock, RelayedSocket) or sock.link is not link:
                link.end(token)  # a token no offer made (or withdrawn since)
                continue
            try:
                sock.deliver(payload)
            except Exception:  # as a closed direct socket: the function's publish fails
                with self._lock:
                    self._open.pop(token, None)
                sock.close()

    def _take_arrivals(self) -> bool:
        """Register the connections admitted since; False once the channels are closed."""
        with contextlib.suppress(BlockingIOError):
            while self._wake_in.recv(4096):
                pass
        with self._lock:
            arrived, self._arrived, closed = self._arrived, [], self._closed
        for channel, answer in arrived:
            if isinstance(channel, RelayLink):
                self._links[channel] = answer
            self._selector.register(channel, selectors.EVENT_READ, (channel, answer))
        if closed:
            for key in list(self._selector.get_map().values()):
                if key.fileobj is not self._wake_in:
                    key.data[0].close()
            self._selector.close()
            self._wake_in.close()
            self._wake.close()
        return not closed


def connect(offer: RoundOffer) -> Connection | None:
    """The function's end of its round channel, or None if the control plane is out of
    reach (the rounds then go through Ray)."""
    try:
        sock = socket.create_connection(offer.address, timeout=_CONNECT_TIMEOUT_S)
    except OSError:
        return None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small messages, at once
        sock.sendall(preamble(offer.token, offer.group))
        sock.settimeout(None)
    except OSError:
        sock.close()
        return None
    return Connection(sock.detach())


def preamble(token: bytes, group: str = "") -> bytes:
    """What a connection presents first: its token, then its group (at most 255 bytes)."""
    name = group.encode()[:255]
    return token + bytes([len(name)]) + name


def read_preamble(sock: socket.socket) -> tuple[bytes, str] | None:
    """(token, group) of a new connection; None, the socket closed, if it sends none in
    time. The socket is left blocking, with small messages sent at once."""
    sock.settimeout(_CONNECT_TIMEOUT_S)
    try:
        token = _read_exactly(sock, _TOKEN_BYTES)
        group = _read_exactly(sock, _read_exactly(sock, 1)[0]).decode(errors="replace")
    except OSError:
        sock.close()
        return None
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return token, group


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("closed before its token")
        data += chunk
    return data
