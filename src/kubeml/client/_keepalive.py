"""One kept-alive HTTP/1.1 connection for the client's latency-bound call, `infer`.

A warm `infer` takes the server 3-4 ms; httpx added 1.5-2 ms to each call on the client
side (its request model and h11's pure-Python parser). The standard library's
`http.client` on one kept-alive socket costs a fraction of that. Only a plain `http://` URL
that no proxy applies to takes this path, one call at a time: the `Client` sends the rest,
and a call made while another thread holds the connection, through httpx.
"""

from __future__ import annotations

import http.client
import threading
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

# A kept-alive socket the server closed while idle (uvicorn closes them after 5 s) fails
# with one of these on the next request; the request is then sent once more on a new one.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    body: bytes


class KeepAlive:
    """POSTs JSON bodies to one server over one connection, opened on first use."""

    def __init__(self, host: str, port: int, headers: dict[str, str], timeout_s: float) -> None:
        self._host, self._port, self._timeout_s = host, port, timeout_s
        self._headers = {**headers, "content-type": "application/json"}
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_url(
        cls, url: str, headers: dict[str, str], timeout_s: float, *, loopback: bool
    ) -> KeepAlive | None:
        """A connection for `url`, or None where httpx must send (https, a proxy)."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.path.strip("/"):
            return None
        proxies = urllib.request.getproxies()
        if not loopback and ("http" in proxies or "all" in proxies):
            return None
        return cls(parts.hostname, parts.port or 80, headers, timeout_s)

    def post(self, path: str, body: bytes) -> Answer | None:
        """The server's answer; None when another thread is using the connection.
        Raises `OSError` or `http.client.HTTPException` when the server cannot be reached
        or the connection breaks mid-call."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            reused = self._connection is not None
            try:
                return self._send(path, body)
            except _STALE:
                self.close()
                if not reused:
                    raise
            return self._send(path, body)  # once more, on a fresh connection
        except BaseException:
            self.close()
            raise
        finally:
            self._lock.release()

    def _send(self, path: str, body: bytes) -> Answer:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(
                self._host, self._port, timeout=self._timeout_s
            )
        connection = self._connection
        connection.request("POST", path, body=body, headers=self._headers)
        response = connection.getresponse()
        answer = Answer(response.status, response.reason, response.read())
        if response.will_close:
            self.close()
        return answer

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
