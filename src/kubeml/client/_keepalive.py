"""The client's plain-HTTP transport: kept-alive `http.client` connections.

httpx costs a command-line call about 0.3 s before its first byte is sent (its import,
with httpcore's, and an SSL context built per client even for `http://`), and a warm
`infer` 1.5-2 ms on top of the server's 3-4 ms (its request model and h11's pure-Python
parser). The standard library on a kept-alive socket costs a fraction of both. So a
`Client` of a plain `http://` URL that no proxy applies to sends its JSON calls here, and
imports httpx only to stream a dataset upload; https, proxies and test transports go
through httpx.

One connection per thread at a time, from a small pool. A kept-alive connection the
server has closed while it sat idle (uvicorn closes them after 5 s) is noticed before the
next request is written on it, and a new one is opened instead; a call whose connection
breaks after the request was sent is retried once only when the caller says it may run
twice (`idempotent`).
"""

from __future__ import annotations

import http.client
import selectors
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

_POOL = 4  # idle connections kept; more threads at once open (and then close) their own
_CONNECT_TIMEOUT_S = 5.0
_BROKEN = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


@dataclass(frozen=True)
class Reply:
    """A server's HTTP reply: what `Client` reads of a response, from either transport."""

    status: int
    reason: str
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class ConnectFailed(OSError):
    """No connection to the server could be made (refused, unreachable, no such host,
    timed out)."""


class _Connection(http.client.HTTPConnection):
    """Connects within `_CONNECT_TIMEOUT_S`; then waits up to its timeout for answers."""

    def connect(self) -> None:
        timeout = self.timeout  # always set: KeepAlive passes its timeout
        assert timeout is not None
        self.timeout = min(timeout, _CONNECT_TIMEOUT_S)
        try:
            super().connect()
        except OSError as exc:
            raise ConnectFailed(exc.errno, exc.strerror or str(exc)) from exc
        finally:
            self.timeout = timeout
        self.sock.settimeout(timeout)


class KeepAlive:
    """Sends requests to one server over a pool of kept-alive connections."""

    def __init__(self, host: str, port: int, headers: dict[str, str], timeout_s: float) -> None:
        self._host, self._port, self._timeout_s = host, port, timeout_s
        self._headers = headers
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @classmethod
    def for_url(
        cls, url: str, headers: dict[str, str], timeout_s: float, *, loopback: bool
    ) -> KeepAlive | None:
        """A transport for `url`, or None where httpx must send (https, a proxy, a path)."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.path.strip("/"):
            return None
        if parts.username is not None:  # credentials in the URL: httpx sends them
            return None
        if not loopback:
            proxies = urllib.request.getproxies()
            if ("http" in proxies or "all" in proxies) and not urllib.request.proxy_bypass(
                parts.hostname
            ):
                return None
        return cls(parts.hostname, parts.port or 80, headers, timeout_s)

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        *,
        idempotent: bool = False,
    ) -> Reply:
        """The server's reply to `method target`. Raises `OSError` or
        `http.client.HTTPException` when the server cannot be reached, does not answer in
        time, or the connection breaks mid-call."""
        headers = dict(self._headers)
        if body is not None:
            headers["content-type"] = "application/json"
        connection, reused = self._take()
        try:
            try:
                reply = self._send(connection, method, target, body, headers)
            except _BROKEN:
                connection.close()
                if not (reused and idempotent):
                    raise
                connection = self._new()  # once more, on a fresh connection
                reply = self._send(connection, method, target, body, headers)
        except BaseException:
            connection.close()
            raise
        self._give_back(connection)
        return reply

    @staticmethod
    def _send(
        connection: http.client.HTTPConnection,
        method: str,
        target: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> Reply:
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        reply = Reply(response.status, response.reason, response.read())
        if response.will_close:
            connection.close()
        return reply

    def _new(self) -> http.client.HTTPConnection:
        return _Connection(self._host, self._port, timeout=self._timeout_s)

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection the server has not closed (and whether it was one), or a new one."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._new(), False
            if connection.sock is not None and not _readable(connection.sock):
                return connection, True
            connection.close()  # the server closed it (or sent what was never asked for)

    def _give_back(self, connection: http.client.HTTPConnection) -> None:
        if connection.sock is None:
            return  # closed: the server said so
        with self._lock:
            if len(self._idle) < _POOL:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _readable(sock: Any) -> bool:
    """True when an idle connection has something to read: its end (closed by the server)."""
    try:
        with selectors.DefaultSelector() as selector:  # any fd number, unlike select()
            selector.register(sock, selectors.EVENT_READ)
            return bool(selector.select(0))
    except (OSError, ValueError):
        return True
