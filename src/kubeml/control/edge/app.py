"""The control plane's HTTP service: `create_app` builds it on an engine, `run_server` runs it.

    python -m kubeml.control.server [--host H] [--port P] [--home DIR] [--backend B]

Every error leaves as `{"error": {"code", "message", "details"}}` with the status of its
`KubeMLError` class, so the client can raise the same class again. While it runs, `run_server`
keeps `server.json` (pid and URL) in the kubeml home; `kubeml.client.local_server` reads it.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import FastAPI

import kubeml
from kubeml.control.edge import dashboard
from kubeml.control.edge.guard import RequestGuard, install_error_handlers
from kubeml.control.edge.routes import router
from kubeml.control.tasks.engine import Engine
from kubeml.errors import ConflictError, InvalidInputError, KubeMLError
from kubeml.settings import BackendKind, Settings, http_url

log = logging.getLogger("kubeml.server")

STATE_FILE = "server.json"


def create_app(engine: Engine, settings: Settings) -> FastAPI:
    """The FastAPI application serving `engine`; the caller owns and closes the engine."""
    app = FastAPI(
        title="kubeml",
        version=kubeml.__version__,
        description="Serverless, data-parallel training of PyTorch networks with K-step "
        "model averaging. With an API token configured, send `Authorization: Bearer "
        "<token>` on every route but /health, /docs and /dashboard.",
        docs_url=None,  # FastAPI's pages load from a CDN; dashboard.mount serves local ones
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.max_upload_bytes = settings.max_upload_mb * 2**20
    app.include_router(router)
    dashboard.mount(app, token_required=bool(settings.api_token))
    install_error_handlers(app)
    app.add_middleware(
        RequestGuard,
        token=settings.api_token or None,
        max_upload_bytes=app.state.max_upload_bytes,
    )
    return app


# -- running the server ---------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses only this machine can reach."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond loopback without a token: function code runs as this user."""
    if not settings.api_token and not is_loopback(settings.host):
        raise InvalidInputError(
            f"refusing to listen on {settings.host!r} without an API token: anyone who can "
            "reach it could run code as this user. Set KUBEML_API_TOKEN (clients send it as "
            "`Authorization: Bearer <token>`), or bind to 127.0.0.1"
        )


def run_server(settings: Settings) -> None:
    """Run the control plane in the foreground until SIGINT or SIGTERM; then close the engine."""
    import uvicorn

    check_exposure(settings)
    home = Path(settings.home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    _refuse_if_running(home)
    sock = _bind(settings.host, settings.port)
    state = home / STATE_FILE
    with _StopOnSignal() as stopper:
        try:
            engine = Engine(settings)
            try:
                url = http_url(settings.host, sock.getsockname()[1])
                _write_state(state, url)
                log.info("kubeml %s serving %s (home %s)", kubeml.__version__, url, home)
                config = uvicorn.Config(
                    create_app(engine, settings), log_level="info", access_log=False,
                    server_header=False,
                )  # fmt: skip
                stopper.server = uvicorn.Server(config)
                engine.warm_up()  # workers start importing torch while the first client connects
                # What start-up built (torch, Ray, the app: some 230,000 objects) lives as
                # long as the server: the collector leaves it alone from now on. A full
                # collection, Python's own or the one Ray asks of its driver when an object
                # store runs full, took 75-90 ms of the control plane's CPU, now next to none.
                gc.freeze()
                if not stopper.requested:
                    stopper.server.run(sockets=[sock])
            finally:
                engine.close()  # the state file stays until then: no second server starts early
        finally:
            _remove_state(state)
            sock.close()
    log.info("kubeml server stopped")


class _StopOnSignal:
    """SIGINT and SIGTERM ask the server to stop, also before uvicorn has set its handlers.

    After its graceful shutdown uvicorn raises the signal it caught again; caught here, it
    no longer kills the process before `run_server` has closed the engine and removed its state.
    """

    def __init__(self) -> None:
        self.requested = False
        self.server: Any = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {
                sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
            }
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        if self.server is not None:
            self.server.should_exit = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _bind(host: str, port: int) -> socket.socket:
    """Bind before anything else, so a taken port fails with a clear message."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConflictError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; another program may use "
            "the port: pick another with KUBEML_PORT or --port"
        ) from exc
    return sock


def _refuse_if_running(home: Path) -> None:
    """Two servers on one home would share one SQLite file and one dataset folder."""
    import httpx

    try:
        state = json.loads((home / STATE_FILE).read_text())
        answer = httpx.get(f"{state['url']}/health", timeout=2.0, trust_env=False).json()
    except (OSError, ValueError, KeyError, TypeError, httpx.HTTPError):
        return  # no state, or a stale one: nothing answers there
    if isinstance(answer, dict) and answer.get("pid") == state.get("pid"):
        raise ConflictError(
            f"a kubeml server already runs on home {home} (pid {state['pid']}, "
            f"{state['url']}); stop it with `kubeml server stop` first"
        )


def _write_state(path: Path, url: str) -> None:
    state = {"pid": os.getpid(), "url": url, "version": kubeml.__version__,
             "started_at": datetime.now(timezone.utc).isoformat()}  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def _remove_state(path: Path) -> None:
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m kubeml.control.server`; flags override KUBEML_* variables."""
    parser = argparse.ArgumentParser(
        prog="python -m kubeml.control.server", description="Run the kubeml control plane."
    )
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 10100)")
    parser.add_argument("--home", help="state directory (default ~/.kubeml)")
    parser.add_argument("--backend", choices=[kind.value for kind in BackendKind])
    parser.add_argument("--ray-address", help="Ray cluster address for --backend ray")
    parser.add_argument("--capacity", type=int, help="function slots")
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        run_server(Settings(**overrides))
    except KubeMLError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # pydantic's ValidationError of a bad KUBEML_* value
        print(f"Error: invalid setting: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
