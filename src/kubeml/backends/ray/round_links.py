"""The control plane's end of a node relay's connection (`kubeml.backends.ray.node_relay`).

A relay sends its node's reports of a round as one message, `Up`: each with the token of
the function that sent it, and the tokens of its functions whose connection ended. The
control plane answers each report as it answers a direct socket's, through a
`RelayedSocket` per function; the replies of a link wait until the link has none to wait
for in that task (the round's merge answers them all, one after the other), then leave as
one message, `Down`, that names each distinct reply once with the tokens it goes to (a
round's releases are equal messages). `Down` also carries the tokens whose connection the
control plane ends (its invocation ended or failed).
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

STALE_S = 0.05  # the longest a reply waits for the others of its link and task
SEND_TIMEOUT_S = 10.0  # a relay that reads nothing this long is dropped (its node is gone)
LinkLost = Callable[[], None]  # called once a relay's connection has ended


@dataclass
class Up:
    """From a relay: (token, a function's message as it sent it), and tokens gone."""

    reports: list[tuple[bytes, bytes]] = field(default_factory=list)
    gone: list[bytes] = field(default_factory=list)


@dataclass
class Down:
    """To a relay: (tokens, a message for each of them), and tokens to disconnect."""

    replies: list[tuple[list[bytes], bytes]] = field(default_factory=list)
    shut: list[bytes] = field(default_factory=list)


def encode(message: Up | Down) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> Any:
    return pickle.loads(data)


def _pickled(message: Any) -> bytes:
    """`message` pickled as `Connection.send` would."""
    return bytes(ForkingPickler.dumps(message))


_pickled_once = functools.lru_cache(maxsize=16)(_pickled)


def encoded(message: Any) -> bytes:
    """A round's N releases are equal messages: one is pickled once a round, not once a
    function (an unhashable message is pickled each time)."""
    try:
        return _pickled_once(message)
    except TypeError:
        return _pickled(message)


class RelayLink:
    """One relay's connection, on the control plane. The hub reads it; replies are queued
    by whichever thread answers (the hub, or a merge thread) and sent by the one that
    queues the last a task's functions on this link wait for."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self._replies: list[tuple[bytes, bytes]] = []  # (token, payload), to send
        self._shut: list[bytes] = []
        self._since = 0.0  # when the oldest queued reply was queued
        self._waiting: dict[bytes, str] = {}  # token -> group, of reports not answered
        self.sockets: dict[bytes, RelayedSocket] = {}
        self.closed = False

    @classmethod
    def over(cls, sock: socket.socket) -> RelayLink:
        """The link on a relay's accepted connection. A send that cannot go on for
        `SEND_TIMEOUT_S` fails (the relay stopped reading: it would hold up the merging
        thread), and the kernel probes an idle link, so a node that vanished without a
        word ends its link too."""
        seconds = int(SEND_TIMEOUT_S)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", seconds), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        return cls(Connection(sock.detach()))

    def fileno(self) -> int:
        return self.conn.fileno()

    def receive(self) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
        message = decode(self.conn.recv_bytes())
        if not isinstance(message, Up):
            raise OSError(f"a node relay sent {type(message).__name__}")
        return message.reports, message.gone

    def waits(self, token: bytes, group: str) -> None:
        """A report of `token` (of task `group`) is in; its reply is to come."""
        with self._lock:
            self._waiting[token] = group

    def reply(self, token: bytes, payload: bytes) -> None:
        with self._lock:
            if self.closed:
                raise OSError("the node relay is gone")
            self._queue(token, self._replies, (token, payload))

    def end(self, token: bytes) -> None:
        """Disconnect `token`'s function (the control plane ends its invocation's rounds);
        also a report whose token no offer holds."""
        with self._lock:
            self.sockets.pop(token, None)
            if not self.closed:
                self._queue(token, self._shut, token)
            self._waiting.pop(token, None)

    def _queue(self, token: bytes, queue: list[Any], item: Any) -> None:
        """Under the lock: queue `item` for `token`'s function, and send what is queued
        unless other functions of its task on this link still wait for theirs."""
        if not self._replies and not self._shut:
            self._since = time.monotonic()
        queue.append(item)
        group = self._waiting.pop(token, None)
        if group is None or group not in self._waiting.values():
            self._send()

    def forget(self, token: bytes) -> None:
        """The relay says `token`'s connection ended."""
        with self._lock:
            sock = self.sockets.pop(token, None)
            group = self._waiting.pop(token, None)
            if group is not None and group not in self._waiting.values() and self._replies:
                self._send()
        if sock is not None:
            sock.shut_here()

    def flush(self, *, stale_only: bool = False) -> None:
        """Send what is queued (`stale_only`: if it waited `STALE_S`; the hub calls it so,
        and never waits for a merging thread that is sending)."""
        if not self._lock.acquire(blocking=not stale_only):
            return
        try:
            queued = self._replies or self._shut
            if queued and (not stale_only or time.monotonic() - self._since >= STALE_S):
                self._send()
        finally:
            self._lock.release()

    def _send(self) -> None:
        """Under the lock: send what is queued, each distinct reply once."""
        replies, shut, self._replies, self._shut = self._replies, self._shut, [], []
        if self.closed or not (replies or shut):
            return
        by_payload: dict[int, tuple[list[bytes], bytes]] = {}
        for token, payload in replies:  # equal replies are the same bytes (`encoded`)
            by_payload.setdefault(id(payload), ([], payload))[0].append(token)
        try:
            self.conn.send_bytes(encode(Down(list(by_payload.values()), shut)))
        except OSError:  # gone, or a send that timed out part-way: the link is done
            self.closed = True
            shut_down(self.conn)  # the hub reads the end

    def close(self) -> list[bytes]:
        """End the link; the tokens that were connected through it."""
        with self._lock:
            self.closed = True
            sockets, self.sockets = self.sockets, {}
            self._waiting.clear()
        for sock in sockets.values():
            sock.shut_here()
        self.conn.close()
        return list(sockets)


class RelayedSocket:
    """A function's round connection through its node's relay: what `RoundSocket` is for
    a direct one (`recv` reads the report the hub hands it, `send` queues the reply on
    the link)."""

    def __init__(
        self, link: RelayLink, token: bytes, answer: Callable[[Any], None], group: str
    ) -> None:
        self.link, self.token, self.answer, self.group = link, token, answer, group
        self._payload: bytes | None = None
        self._shut = False
        link.sockets[token] = self

    def deliver(self, payload: bytes) -> None:
        """Answer a report that arrived through the link (the hub calls it)."""
        self._payload = payload
        self.answer(self)

    def recv(self) -> Any:
        payload, self._payload = self._payload, None
        if payload is None or self._shut:
            raise EOFError("the relayed round connection ended")
        self.link.waits(self.token, self.group)
        return ForkingPickler.loads(payload)

    def send(self, message: Any) -> None:
        if self._shut:
            raise OSError("the round socket is closed")
        self.link.reply(self.token, encoded(message))

    def shut_here(self) -> None:
        self._shut = True

    def shut(self) -> None:
        if not self._shut:
            self._shut = True
            self.link.end(self.token)

    def close(self) -> None:
        self.shut()


def shut_down(conn: Connection) -> None:
    """Shut a connection down both ways, leaving its descriptor to its owner: the peer,
    and whoever reads it here, read the end."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def accept_each(server: socket.socket, admit: Callable[[socket.socket], None]) -> None:
    """Hand each connection `server` accepts to `admit` on a thread of its own (which may
    wait for the connection's preamble), until the server is closed."""
    while True:
        try:
            sock, _ = server.accept()
        except OSError:
            return  # closed
        threading.Thread(target=admit, args=(sock,), daemon=True).start()
