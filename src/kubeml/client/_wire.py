"""What crosses the wire besides the transport: JSON request bodies, the server's errors
rebuilt from their bodies, and what kind of failure a call that got no answer met."""

from __future__ import annotations

import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

from kubeml.client._keepalive import ConnectFailed
from kubeml.errors import (
    InternalError,
    InvalidInputError,
    KubeMLError,
    error_class,
    error_for_status,
)


def failure_kind(exc: BaseException) -> str:
    """connect, timeout or lost, for an `http.client` call that got no answer."""
    if isinstance(exc, ConnectFailed):  # also a host name that does not resolve
        return "connect"
    return "timeout" if isinstance(exc, TimeoutError) else "lost"


def encode(value: Any, call: str) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:  # NaN, inf, or objects JSON cannot hold
        raise InvalidInputError(f"{call}: the data cannot be sent as JSON ({exc})") from exc


def error_from_body(status: int, reason: str, body: bytes, url: str) -> KubeMLError:
    """The `KubeMLError` the server raised, rebuilt from its JSON error body."""
    try:
        error = json.loads(body)["error"]
        code, message, details = error["code"], str(error["message"]), error.get("details")
    except (ValueError, KeyError, TypeError):
        cls = error_for_status(status) or InternalError
        text = body.decode("utf-8", "replace").strip()[:300] or reason
        return cls(f"HTTP {status} from {url}: {text}")
    if details is not None and not isinstance(details, str):
        details = str(details)
    cls = error_class(code) or error_for_status(status) or InternalError
    return cls(message, details=details)


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
