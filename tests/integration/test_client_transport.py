"""The client's standard-library transport (`kubeml.client._keepalive`), against a real
HTTP server on 127.0.0.1 that counts its connections and can drop them the way a server
does."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kubeml.client import Client
from kubeml.client.local_server import _health
from kubeml.errors import InvalidInputError, NotFoundError, ServerUnavailableError


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.bodies: list[dict] = []
        self.tokens: list[str | None] = []
        self.mode = "answer"  # "answer", "close-after" (an idle keep-alive closed), "drop", "hang"
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.bodies.append({"GET": self.path})
        if self.path == "/health":
            self._answer(200, {"status": "ok", "version": "test"})
        elif self.path.startswith("/tasks/t1/logs?since=7"):
            self._answer(200, [])
        else:
            self._answer(404, {"error": {"code": "not_found", "message": f"no {self.path}"}})

    def do_DELETE(self) -> None:
        self.server.bodies.append({"DELETE": self.path})
        if self.server.mode == "drop":
            self.close_connection = True
            return
        self._answer(200, {})

    def _answer(self, status: int, answer: object) -> None:
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.bodies.append(body)
        self.server.tokens.append(self.headers.get("authorization"))
        mode = self.server.mode
        if mode == "drop":  # the server dies mid-call: no answer at all
            self.close_connection = True
            return
        if mode == "hang":
            self.server.release.wait(10)
            return
        if self.path.startswith("/tasks/missing/"):
            status = 404
            answer = {"error": {"code": "not_found", "message": "task 'missing' not found"}}
        else:
            status, answer = 200, {"predictions": [len(row) for row in body["data"]]}
        self._answer(status, answer)
        if mode == "close-after":  # closed without saying so, as an idle timeout does
            self.close_connection = True


@pytest.fixture
def server() -> Iterator[_Server]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def test_calls_share_one_connection_and_the_answers_are_the_servers(server: _Server) -> None:
    with Client(server.url, token="secret") as client:
        answers = [client.infer("t1", [[1, 2, 3]] * i) for i in range(1, 6)]
    assert answers == [[3] * i for i in range(1, 6)]
    assert server.connections == 1
    assert server.bodies[-1] == {"data": [[1, 2, 3]] * 5}
    assert server.tokens == ["Bearer secret"] * 5


def test_a_connection_the_server_closed_while_idle_is_reopened_once(server: _Server) -> None:
    server.mode = "close-after"
    with Client(server.url, token="") as client:
        assert [client.infer("t1", [[0.5]]) for _ in range(3)] == [[1]] * 3
    assert server.connections == 3  # each call found the last one closed, and reconnected
    assert len(server.bodies) == 3  # and no call reached the server twice


def test_a_server_that_dies_mid_call_is_an_unavailable_server(server: _Server) -> None:
    with Client(server.url, token="") as client:
        assert client.infer("t1", [[1]]) == [1]
        server.mode = "drop"
        with pytest.raises(ServerUnavailableError, match=r"lost the connection .* POST /tasks/t1"):
            client.infer("t1", [[1]])
        server.mode = "answer"
        assert client.infer("t1", [[1, 2]]) == [2]  # and the client works again after


def test_errors_come_back_as_the_servers_error(server: _Server) -> None:
    with Client(server.url, token="") as client:
        with pytest.raises(NotFoundError, match="task 'missing' not found"):
            client.infer("missing", [[1]])
        with pytest.raises(InvalidInputError, match="cannot be sent as JSON"):
            client.infer("t1", [[float("nan")]])
        assert client.infer("t1", [[1]]) == [1]


def test_a_silent_server_times_out_and_an_absent_one_is_named(server: _Server) -> None:
    server.mode = "hang"
    client = Client(server.url, token="", timeout_s=0.5)
    with client, pytest.raises(ServerUnavailableError, match=r"did not answer POST .* in time"):
        client.infer("t1", [[1]])
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    absent = Client(f"http://127.0.0.1:{port}", token="")
    with absent, pytest.raises(ServerUnavailableError, match="kubeml server start"):
        absent.infer("t1", [[1]])


def test_threads_calling_at_once_all_get_their_own_answers(server: _Server) -> None:
    results: dict[int, list[int]] = {}
    with Client(server.url, token="") as client:

        def call(i: int) -> None:
            results[i] = [client.infer("t1", [[0] * i]) for _ in range(20)][-1]

        threads = [threading.Thread(target=call, args=(i,)) for i in range(1, 5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert results == {i: [i] for i in range(1, 5)}


def test_a_call_that_may_not_run_twice_is_not_sent_again(server: _Server) -> None:
    with Client(server.url, token="") as client:
        assert client.infer("t1", [[1]]) == [1]  # a kept-alive connection to break
        server.mode = "drop"
        with pytest.raises(ServerUnavailableError, match="lost the connection"):
            client.train(function="f", dataset="d")
        server.mode = "answer"
        assert client.infer("t1", [[1]]) == [1]  # a kept-alive connection again
        server.mode = "drop"
        with pytest.raises(ServerUnavailableError, match="lost the connection"):
            client.delete_function("f")  # a repeat of a delete that worked would say 404
    assert len(server.bodies) == 4  # the train and the delete requests were sent once


def test_a_server_that_cannot_be_connected_to_is_unreachable(monkeypatch) -> None:
    """A connect that times out reads "cannot reach" (as a refused one does), not as a
    server slow to answer."""
    monkeypatch.setattr("kubeml.client._keepalive._CONNECT_TIMEOUT_S", 0.3)
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as listener, ExitStack() as stack:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepts: once its queue is full, a connect times out
        port = listener.getsockname()[1]
        for _ in range(4):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        client = Client(f"http://127.0.0.1:{port}", token="")
        started = time.monotonic()
        with client, pytest.raises(ServerUnavailableError, match="cannot reach the kubeml"):
            client.list_tasks()
        assert time.monotonic() - started < 5  # the connect timeout, not the call's


def test_queries_and_errors_of_gets(server: _Server) -> None:
    with Client(server.url, token="") as client:
        assert client.logs("t1", since=7) == []
        with pytest.raises(NotFoundError, match="no /functions/f"):
            client.get_function("f")
    assert _health(server.url) == {"status": "ok", "version": "test"}


def test_json_calls_and_the_health_check_never_import_httpx(server: _Server) -> None:
    code = (
        "import sys\n"
        "from kubeml.client import Client\n"
        "from kubeml.client.local_server import _health\n"
        f"assert _health({server.url!r})['version'] == 'test'\n"
        f"print(Client({server.url!r}, token='').infer('t1', [[1, 2]]))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'httpcore')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[2]", "[]"]
