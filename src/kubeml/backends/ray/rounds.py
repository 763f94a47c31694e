"""A direct TCP connection per train invocation for the round's hot path.

Through Ray, a round's `Publish` rides the actor's result stream and its `Released` an
actor call: about 1.5-2 ms each way on one node, several times what the process
backend's pipe takes (instrumented: docs/cluster.md, "Performance"). So a train
invocation of a model small enough to travel by value (`INLINE_BYTES`: its messages hold
no object refs, which may not leave Ray's own serialisation) is offered a socket to the
control plane: the function connects to the address it was given with the invocation,
presents the offer's random token, and publishes over it; the control plane answers with
the release on the same socket. Everything else (log lines, requests, the result, the
actor's failure) stays on Ray. A function that cannot connect publishes through Ray as
before, so the channel is only ever a shortcut.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection

_TOKEN_BYTES = 16
_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RoundOffer:
    """Where a function connects for its rounds, and the secret it presents there."""

    address: tuple[str, int]
    token: bytes


class RoundChannels:
    """The control plane's listening socket, on the address Ray knows this node by.

    Each offer waits for the one connection that presents its token; a connection with
    any other token (or none within the timeout) is closed unread.
    """

    def __init__(self, host: str) -> None:
        self._server = socket.create_server((host, 0))
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._waiting: dict[bytes, Future[Connection]] = {}
        self._open: dict[bytes, socket.socket] = {}  # connected, by token
        self.admitted = 0  # connections taken up so far (the backend's `describe`)
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="kubeml-ray-rounds", daemon=True).start()

    def offer(self) -> tuple[RoundOffer, Future[Connection]]:
        token = secrets.token_bytes(_TOKEN_BYTES)
        arrival: Future[Connection] = Future()
        with self._lock:
            self._waiting[token] = arrival
        return RoundOffer(self.address, token), arrival

    def withdraw(self, offer: RoundOffer) -> None:
        """The invocation ended: stop waiting, and end its connection if it came (a shut
        down socket also wakes a thread blocked reading it, which a close does not)."""
        with self._lock:
            arrival = self._waiting.pop(offer.token, None)
            sock = self._open.pop(offer.token, None)
        if arrival is not None:
            arrival.cancel()  # it never connected: its relay thread stops waiting
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._server.close()
        with self._lock:
            waiting, self._waiting = list(self._waiting.values()), {}
            tokens = list(self._open)
        for arrival in waiting:
            arrival.cancel()
        for token in tokens:
            self.withdraw(RoundOffer(self.address, token))

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._admit, args=(sock,), daemon=True).start()

    def _admit(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(_CONNECT_TIMEOUT_S)
            token = _read_exactly(sock, _TOKEN_BYTES)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()
            return
        with self._lock:
            arrival = self._waiting.pop(token, None)
            if arrival is not None and arrival.set_running_or_notify_cancel():
                self._open[token] = sock
                self.admitted += 1
                arrival.set_result(Connection(os.dup(sock.fileno())))
                return
        sock.close()


def connect(offer: RoundOffer) -> Connection | None:
    """The function's end of its round channel, or None if the control plane is out of
    reach (the rounds then go through Ray)."""
    try:
        sock = socket.create_connection(offer.address, timeout=_CONNECT_TIMEOUT_S)
    except OSError:
        return None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small messages, at once
        sock.sendall(offer.token)
        sock.settimeout(None)
    except OSError:
        sock.close()
        return None
    return Connection(sock.detach())


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("closed before its token")
        data += chunk
    return data
