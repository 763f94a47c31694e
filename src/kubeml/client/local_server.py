"""A control plane on this machine: start one in the background when none answers, find it,
stop it. The CLI's `server start|stop|status` and its auto-start are these three functions.

The server runs as `python -m kubeml.control.server` in its own session (so closing the
terminal does not kill it), logs to `<home>/server.log`, and keeps `<home>/server.json`
(pid and URL) while it runs.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeml.client._keepalive import KeepAlive
from kubeml.errors import ServerUnavailableError
from kubeml.procs import pid_alive

if TYPE_CHECKING:
    from kubeml.settings import Settings

STATE_FILE = "server.json"  # written and removed by kubeml.control.server.serve
LOG_FILE = "server.log"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0  # the server first stops its running tasks at their next round

_children: dict[int, subprocess.Popen[bytes]] = {}  # reaped by stop_server, no zombies


def ensure_server(settings: Settings, *, quiet: bool = False) -> str:
    """The URL of a server that answers, starting a local one if none does.

    Args:
        settings: where to find or put the server (`server_url`, `home`, host, port...).
        quiet: do not print the one line that says a server was started.

    Raises:
        ServerUnavailableError: `KUBEML_URL` names a server that does not answer, or the
            local server failed to start (the message has the end of its log).
    """
    url = settings.server_url.rstrip("/")
    if _health(url) is not None:
        return url
    if settings.url and url != _local_url(settings):
        raise ServerUnavailableError(
            f"no kubeml server answers at {url} (KUBEML_URL); start it there, or unset "
            "KUBEML_URL to use a local server"
        )
    home = _home(settings)
    log_path = home / LOG_FILE
    process = _spawn(settings, home, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while _health(url) is None:
        if process.poll() is not None and not _other_server_starting(home, process.pid):
            _children.pop(process.pid, None)
            if _health(url) is not None:  # another starter won the race; use theirs
                return url
            raise ServerUnavailableError(
                f"the kubeml server exited while starting (exit code {process.returncode}):\n"
                f"{_tail(log_path)}\nfull log: {log_path}"
            )
        if time.monotonic() > deadline:
            _terminate(process.pid, timeout_s=5.0)
            raise ServerUnavailableError(
                f"the kubeml server did not answer at {url} within {START_TIMEOUT_S:g} s; "
                f"see its log: {log_path}"
            )
        time.sleep(0.1)
    if not quiet:
        print(f"Started a local kubeml server at {url} (logs: {log_path})", file=sys.stderr)
    return url


def stop_server(settings: Settings, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the local server of `settings.home` (SIGTERM, then wait); False if none ran."""
    home = _home(settings, create=False)
    state = _read_state(home)
    if state is None:
        return False
    pid = int(state["pid"])
    if not _is_kubeml_process(pid):
        (home / STATE_FILE).unlink(missing_ok=True)  # stale: the server died without cleanup
        return False
    _terminate(pid, timeout_s=timeout_s)
    (home / STATE_FILE).unlink(missing_ok=True)
    return True


def server_status(settings: Settings) -> dict[str, Any] | None:
    """What the local server reports about itself, or None when no server runs."""
    home = _home(settings, create=False)
    state = _read_state(home) or {}
    url = str(state.get("url") or settings.server_url).rstrip("/")
    health = _health(url)
    pid = state.get("pid")
    if health is None and not (pid and _is_kubeml_process(int(pid))):
        return None
    status: dict[str, Any] = {"url": url, "home": str(home), "log": str(home / LOG_FILE)}
    status |= {k: v for k, v in state.items() if k in ("pid", "started_at", "version")}
    status |= health or {"status": "not answering"}
    return status


def _home(settings: Settings, *, create: bool = True) -> Path:
    home = Path(settings.home).expanduser().resolve()
    if create:
        home.mkdir(parents=True, exist_ok=True)
    return home


def _local_url(settings: Settings) -> str:
    from kubeml.settings import http_url

    return http_url(settings.host, settings.port)


def _health(url: str) -> dict[str, Any] | None:
    """/health of a kubeml server at `url`, or None if nothing (or something else) answers.
    Never through a proxy: the standard library for a plain `http://` URL, else httpx."""
    lean = KeepAlive.for_url(url, {}, 2.0, loopback=True)
    try:
        if lean is not None:
            try:
                reply = lean.request("GET", "/health")
            finally:
                lean.close()
            status, answer = reply.status, reply.json()
        else:
            status, answer = _health_via_httpx(url)
    except (OSError, http.client.HTTPException, ValueError):
        return None
    if status != 200 or not isinstance(answer, dict) or "version" not in answer:
        return None
    return answer


def _health_via_httpx(url: str) -> tuple[int, Any]:
    import httpx

    try:
        response = httpx.get(f"{url}/health", timeout=2.0, trust_env=False)
    except httpx.HTTPError as exc:
        raise OSError(str(exc)) from exc
    return response.status_code, response.json()


def _spawn(settings: Settings, home: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = os.environ.copy()
    # The child builds Settings() from the environment: hand it ours, overrides included.
    for key, value in settings.model_dump(mode="json").items():
        name = f"KUBEML_{key.upper()}"
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    env["KUBEML_HOME"] = str(home)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kubeml.control.server"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    _children[process.pid] = process
    return process


def _other_server_starting(home: Path, our_pid: int) -> bool:
    state = _read_state(home)
    return state is not None and state.get("pid") != our_pid and _is_kubeml_process(state["pid"])


def _read_state(home: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((home / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("pid"), int) else None


def _is_kubeml_process(pid: int) -> bool:
    """Alive and a kubeml server (a stale pid file may name a recycled pid)."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    if not pid_alive(pid):
        return False
    try:
        return b"kubeml" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc here: trust the pid file


def _terminate(pid: int, *, timeout_s: float) -> None:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        if _wait_exit(pid, timeout_s if sig == signal.SIGTERM else 5.0):
            break
    _children.pop(pid, None)


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _is_kubeml_process(pid):
            return True
        time.sleep(0.05)
    return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
