"""`Client`: the engine's operations over the control plane's REST API.

    with Client() as kubeml:                      # KUBEML_URL / KUBEML_API_TOKEN, or defaults
        kubeml.create_function("lenet", Path("lenet.py").read_text())
        kubeml.create_dataset("mnist", "x.npy", "y.npy", "tx.npy", "ty.npy")
        task_id = kubeml.train(function="lenet", dataset="mnist", epochs=3)
        kubeml.wait(task_id)

Server errors come back as the `KubeMLError` subclass the server raised, message intact
(by its wire code, else by its HTTP status through `kubeml.errors.HTTP_STATUS`).
Torch-free: numpy is imported only when arrays are uploaded. Calls to a plain `http://`
server go over kept-alive standard-library connections (`kubeml.client._keepalive`);
httpx is imported only for uploads, https, proxies and test transports.
"""

from __future__ import annotations

import http.client
import threading
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from kubeml.api.datasets import DatasetInfo
from kubeml.api.schemas import (
    FunctionInfo,
    History,
    LogLine,
    TaskInfo,
    TaskProgress,
    TrainRequest,
)
from kubeml.client._keepalive import KeepAlive, Reply
from kubeml.client._upload import CHECK_UPLOADS_OVER, FIELDS, file_part, part_size
from kubeml.client._wire import encode, error_from_body, failure_kind, is_loopback_url
from kubeml.errors import (
    PayloadTooLargeError,
    ServerUnavailableError,
)

if TYPE_CHECKING:
    import httpx

    from kubeml.settings import Settings


class Client:
    """A connection to a kubeml control plane.

    Args:
        url: the server, e.g. `http://127.0.0.1:10100`; default `settings.server_url`.
        token: API token sent as a bearer token; default `settings.api_token`.
        settings: where the defaults come from; `Settings()` (the environment) if omitted.
        transport: an httpx transport, e.g. to talk to an in-process app in tests.
        timeout_s: how long to wait for a response (uploads and inference can be slow).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        settings: Settings | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        if settings is None and (url is None or token is None):
            from kubeml.settings import Settings

            settings = Settings()
        self.url = (url or settings.server_url).rstrip("/")  # type: ignore[union-attr]
        token = token if token is not None else settings.api_token  # type: ignore[union-attr]
        import kubeml

        headers = {"user-agent": f"kubeml-client/{kubeml.__version__}"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._headers, self._timeout_s, self._transport = headers, timeout_s, transport
        self._httpx: httpx.Client | None = None  # built on first use: uploads, https, proxies
        self._httpx_lock = threading.Lock()
        # Plain-HTTP JSON calls go through the standard library (see kubeml.client._keepalive).
        self._lean = (
            KeepAlive.for_url(self.url, headers, timeout_s, loopback=is_loopback_url(self.url))
            if transport is None
            else None
        )

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def close(self) -> None:
        if self._httpx is not None:
            self._httpx.close()
        if self._lean is not None:
            self._lean.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- functions ----------------------------------------------------------------------------
    def create_function(self, name: str, code: str) -> FunctionInfo:
        """Deploy a function file's source under a new name."""
        body = {"name": name, "code": code}
        return FunctionInfo.model_validate(self._json("POST", "/functions", json=body))

    def update_function(self, name: str, code: str) -> FunctionInfo:
        """Replace a function's code; running tasks keep the version they started with."""
        path = f"/functions/{_q(name)}"
        return FunctionInfo.model_validate(self._json("PUT", path, json={"code": code}))

    def get_function(self, name: str) -> FunctionInfo:
        return FunctionInfo.model_validate(self._json("GET", f"/functions/{_q(name)}"))

    def list_functions(self) -> list[FunctionInfo]:
        return [FunctionInfo.model_validate(item) for item in self._json("GET", "/functions")]

    def delete_function(self, name: str) -> None:
        self._request("DELETE", f"/functions/{_q(name)}")

    # -- datasets -----------------------------------------------------------------------------
    def create_dataset(
        self,
        name: str,
        traindata: Any,
        trainlabels: Any,
        testdata: Any,
        testlabels: Any,
        allow_pickle: bool = False,
    ) -> DatasetInfo:
        """Upload a dataset. Each part is a path to a .npy/.npz (.pkl with `allow_pickle`)
        file, or an array, sent as .npy bytes."""
        sources = dict(zip(FIELDS, (traindata, trainlabels, testdata, testlabels), strict=True))
        with ExitStack() as stack:
            # Labels first: the server checks each header as it arrives, so features whose
            # length does not match are refused before their bulk is written anywhere.
            order = ("train_y", "test_y", "train_x", "test_x")
            files = {field: file_part(field, sources[field], stack) for field in order}
            self._check_upload_size(files)
            form = {"name": name, "allow_pickle": "true" if allow_pickle else "false"}
            info = self._json("POST", "/datasets", data=form, files=files)
        return DatasetInfo.model_validate(info)

    def register_dataset(self, name: str, url: str) -> DatasetInfo:
        """Register a dataset that stays where it is: `url`, a directory every node can
        read (an absolute path) or a URL fsspec opens (`s3://bucket/prefix`), holding
        train_x.npy, train_y.npy, test_x.npy and test_y.npy. Nothing is uploaded."""
        info = self._json("POST", "/datasets/register", json={"name": name, "url": url})
        return DatasetInfo.model_validate(info)

    def _check_upload_size(self, files: dict[str, tuple[str, Any, str]]) -> None:
        # A server that refuses a big upload midway resets the connection, which would
        # read as "server unavailable"; asking for its limit first gives the real reason.
        total = sum(part_size(content) for _, content, _ in files.values())
        if total <= CHECK_UPLOADS_OVER:
            return
        limit = int(self.health().get("max_upload_bytes") or 0)
        if limit and total > limit:
            raise PayloadTooLargeError(
                f"dataset upload of {total / 2**20:.1f} MiB is larger than the server's limit "
                f"of {limit / 2**20:g} MiB; raise KUBEML_MAX_UPLOAD_MB on the server"
            )

    def get_dataset(self, name: str) -> DatasetInfo:
        return DatasetInfo.model_validate(self._json("GET", f"/datasets/{_q(name)}"))

    def list_datasets(self) -> list[DatasetInfo]:
        return [DatasetInfo.model_validate(item) for item in self._json("GET", "/datasets")]

    def delete_dataset(self, name: str) -> None:
        self._request("DELETE", f"/datasets/{_q(name)}")

    # -- train tasks --------------------------------------------------------------------------
    def train(self, request: TrainRequest | None = None, **fields: Any) -> str:
        """Queue a train task and return its id.

        Pass a `TrainRequest`, or its fields as keywords (keywords override the request's).
        The server validates them and fills in the CLI's defaults.
        """
        body = request.model_dump(mode="json") if request is not None else {}
        body.update(fields)
        return str(self._json("POST", "/train", json=body)["id"])

    def get_task(self, task_id: str) -> TaskInfo:
        return TaskInfo.model_validate(self._json("GET", f"/tasks/{_q(task_id)}"))

    def list_tasks(self) -> list[TaskInfo]:
        return [TaskInfo.model_validate(item) for item in self._json("GET", "/tasks")]

    def stop_task(self, task_id: str) -> TaskInfo:
        """Stop a task: a queued one at once, a running one at its next round boundary."""
        return TaskInfo.model_validate(self._json("POST", f"/tasks/{_q(task_id)}/stop"))

    def prune_tasks(self) -> list[str]:
        """Forget finished tasks; returns their ids (histories and models stay)."""
        return list(self._json("POST", "/tasks/prune")["pruned"])

    def resume_task(self, task_id: str) -> TaskInfo:
        """Continue a failed or stopped task from its last completed epoch."""
        return TaskInfo.model_validate(self._json("POST", f"/tasks/{_q(task_id)}/resume"))

    def progress(self, task_id: str, since: int = 0) -> TaskProgress:
        """The task with its round points from index `since` on and its epochs."""
        path = f"/tasks/{_q(task_id)}/progress"
        return TaskProgress.model_validate(self._json("GET", path, params={"since": since}))

    def wait(self, task_id: str, timeout_s: float | None = None, poll_s: float = 0.5) -> TaskInfo:
        """Poll until the task has finished or `timeout_s` passed; returns its last state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            info = self.get_task(task_id)
            if info.state.finished:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                return info
            pause = poll_s if deadline is None else min(poll_s, deadline - time.monotonic())
            time.sleep(max(pause, 0.0))

    # -- histories ----------------------------------------------------------------------------
    def get_history(self, task_id: str) -> History:
        return History.model_validate(self._json("GET", f"/histories/{_q(task_id)}"))

    def list_histories(self) -> list[History]:
        return [History.model_validate(item) for item in self._json("GET", "/histories")]

    def delete_history(self, task_id: str) -> None:
        """Delete a finished task's history, trained model and log."""
        self._request("DELETE", f"/histories/{_q(task_id)}")

    def prune_histories(self) -> list[str]:
        """Delete the histories of every finished task; returns their ids."""
        return list(self._json("POST", "/histories/prune")["pruned"])

    # -- inference, logs, operations ----------------------------------------------------------
    def infer(self, task_id: str, data: list[Any]) -> Any:
        """Predictions of a task's trained model for `data`, a list of samples."""
        if hasattr(data, "tolist"):  # a numpy array is welcome too
            data = data.tolist()
        path = f"/tasks/{_q(task_id)}/infer"
        # An inference changes nothing: a call the connection broke under may run again.
        answer = self._json("POST", path, json={"data": data}, idempotent=True)
        return answer["predictions"]

    def logs(self, task_id: str, since: int = 0) -> list[LogLine]:
        """A task's log lines from index `since` on; follow by passing the next index."""
        lines = self._json("GET", f"/tasks/{_q(task_id)}/logs", params={"since": since})
        return [LogLine.model_validate(item) for item in lines]

    def metrics(self) -> str:
        """The Prometheus text exposition of `/metrics`."""
        return self._request("GET", "/metrics").text

    def health(self) -> dict[str, Any]:
        return dict(self._json("GET", "/health"))

    # -- HTTP ---------------------------------------------------------------------------------
    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        idempotent: bool | None = None,
        **upload: Any,
    ) -> Reply:
        """Send one call; `upload` (httpx's `data`/`files`) streams a multipart body.
        `idempotent` (default: GET and PUT are) lets a call the connection broke under be
        sent once more. (Not DELETE: a repeat of one that worked would answer 404.)"""
        body = None if json is None else encode(json, f"{method} {path}")
        if params:
            path = f"{path}?{urlencode(params)}"
        if self._lean is not None and not upload:
            if idempotent is None:
                idempotent = method in ("GET", "PUT")
            try:
                reply = self._lean.request(method, path, body, idempotent=idempotent)
            except (OSError, http.client.HTTPException) as exc:
                raise self._unavailable(method, path, failure_kind(exc), exc) from exc
        else:
            reply = self._via_httpx(method, path, body, upload)
        if reply.status >= 400:
            url = f"{self.url}{path}"
            raise error_from_body(reply.status, reply.reason, reply.body, url)
        return reply

    def _via_httpx(self, method: str, path: str, body: bytes | None, upload: Any) -> Reply:
        import httpx

        with self._httpx_lock:  # threads may race to the first upload
            if self._httpx is None:
                self._httpx = httpx.Client(
                    base_url=self.url,
                    headers=self._headers,
                    transport=self._transport,
                    timeout=httpx.Timeout(self._timeout_s, connect=5.0),
                    # An HTTP_PROXY from the environment must not catch 127.0.0.1 or a test app.
                    trust_env=self._transport is None and not is_loopback_url(self.url),
                )
        headers = {"content-type": "application/json"} if body is not None else None
        try:
            response = self._httpx.request(method, path, content=body, headers=headers, **upload)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._unavailable(method, path, "connect", exc) from exc
        except httpx.TimeoutException as exc:
            raise self._unavailable(method, path, "timeout", exc) from exc
        except httpx.TransportError as exc:
            raise self._unavailable(method, path, "lost", exc) from exc
        return Reply(response.status_code, response.reason_phrase, response.content)

    def _unavailable(
        self, method: str, path: str, kind: str, exc: Exception
    ) -> ServerUnavailableError:
        """The error for a call that got no answer: `kind` is connect, timeout or lost."""
        if kind == "connect":
            return ServerUnavailableError(
                f"cannot reach the kubeml server at {self.url} ({exc}); start one with "
                "`kubeml server start`, or set KUBEML_URL to a running one"
            )
        if kind == "timeout":
            return ServerUnavailableError(
                f"the kubeml server at {self.url} did not answer {method} {path} in time"
            )
        return ServerUnavailableError(
            f"lost the connection to the kubeml server at {self.url} during {method} {path}: {exc}"
        )


def _q(segment: str) -> str:
    return quote(str(segment), safe="")
