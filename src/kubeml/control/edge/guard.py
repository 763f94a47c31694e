"""The HTTP edge: the token and body-size checks before any route, and errors as JSON.

Every error leaves as `{"error": {"code", "message", "details"}}` with the HTTP status that
`kubeml.errors.HTTP_STATUS` gives its class; Starlette's own errors get a code the same way.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubeml.errors import (
    InternalError,
    InvalidInputError,
    KubeMLError,
    PayloadTooLargeError,
    UnauthorizedError,
    error_for_status,
    status_of,
)

log = logging.getLogger("kubeml.server")

OPEN_PATHS = frozenset({"/health"})  # answered without a token: liveness probes, ensure_server
# Static pages and their assets: they hold no data; what they fetch needs the token.
OPEN_PAGES = frozenset({"/dashboard", "/docs"})
OPEN_PREFIXES = ("/static/",)
UPLOAD_PATHS = frozenset({"/datasets"})  # multipart dataset uploads get the large limit
MAX_JSON_BYTES = 64 * 2**20
_LOCATIONS = {"body", "query", "path", "header", "cookie"}
M = TypeVar("M", bound=BaseModel)


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes its limit.

    It is an `HTTPException` because FastAPI re-raises those from body parsing and turns
    any other error there into a generic 400.
    """

    def __init__(self, error: PayloadTooLargeError) -> None:
        super().__init__(status_code=error.http_status, detail=error.message)
        self.error = error


def error_payload(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON body of every error response."""
    return {"error": {"code": code, "message": message, "details": details}}


async def send_error(send: Send, error: KubeMLError, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_payload(error.code, error.message, error.details)).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": error.http_status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Pure ASGI middleware: rejects requests without the token and oversized bodies.

    Args:
        app: the application to guard.
        token: the API token; `None` leaves every route open (loopback-only servers).
        max_upload_bytes: limit for dataset uploads; other bodies get at most 64 MiB.
    """

    def __init__(self, app: ASGIApp, *, token: str | None, max_upload_bytes: int) -> None:
        self.app = app
        self.token = token
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if self.token is not None and not _is_open(path) and not self._authorized(scope):
            error = UnauthorizedError(
                "missing or wrong API token: send `Authorization: Bearer <token>` "
                "(the client reads it from KUBEML_API_TOKEN)"
            )
            await send_error(send, error, {"www-authenticate": "Bearer"})
            return
        limit = self._limit(path)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await send_error(send, _too_large(path, declared, limit))
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(_too_large(path, received, limit))
            return message

        await self.app(scope, receive_limited, send)

    def _authorized(self, scope: Scope) -> bool:
        assert self.token is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, given = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    return secrets.compare_digest(given.strip().encode(), self.token.encode())
        return False

    def _limit(self, path: str) -> int:
        if path in UPLOAD_PATHS:
            return self.max_upload_bytes
        return min(MAX_JSON_BYTES, self.max_upload_bytes)


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path in OPEN_PAGES or path.startswith(OPEN_PREFIXES)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(path: str, size: int, limit: int) -> PayloadTooLargeError:
    what = "dataset upload" if path in UPLOAD_PATHS else "request body"
    hint = (
        "raise KUBEML_MAX_UPLOAD_MB on the server if this dataset is meant to be this large"
        if path in UPLOAD_PATHS
        else "send less data per request"
    )
    return PayloadTooLargeError(
        f"{what} is larger than the server's limit of {limit / 2**20:g} MiB "
        f"(at least {size / 2**20:.1f} MiB); {hint}"
    )


# -- error responses ------------------------------------------------------------------------
def install_error_handlers(app: FastAPI) -> None:
    """Map `KubeMLError`s to their status, validation errors to 422 naming the field."""
    app.add_exception_handler(KubeMLError, _kubeml_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)


def _error(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    return JSONResponse(error_payload(code, message, details), status_code=status)


async def _kubeml_error(request: Request, exc: KubeMLError) -> JSONResponse:
    return _error(exc.http_status, exc.code, exc.message, exc.details)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [_describe(error) for error in exc.errors()]
    status = status_of(InvalidInputError)
    return _error(status, InvalidInputError.code, "invalid request: " + "; ".join(problems))


def parse_json_body(model: type[M], body: bytes) -> M:
    """`model` from a request's JSON body with pydantic's parser. Its errors are the 422
    that FastAPI gives for a body it parsed itself."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses `model` itself (`openapi_extra`)."""
    content = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"required": True, "content": content}}


def _describe(error: dict[str, Any]) -> str:
    """`field: what is wrong (got value)` for one pydantic error."""
    loc = [str(part) for part in error.get("loc", ())]
    if len(loc) > 1 and loc[0] in _LOCATIONS:
        loc = loc[1:]
    field = ".".join(loc) or "body"
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        message = "unknown field"
    elif error.get("type") == "json_invalid":
        field = "body"
        reason = error.get("ctx", {}).get("error", "decode error")
        at = f" at character {loc[-1]}" if loc and loc[-1].isdigit() else ""
        message = f"not valid JSON{at} ({reason})"
    value = error.get("input")
    if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 80):
        message += f" (got {value!r})"
    return f"{field}: {message}"


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    # Older FastAPI wraps errors raised while reading the body in a plain 400.
    cause = exc if isinstance(exc, BodyTooLarge) else exc.__cause__
    if isinstance(cause, BodyTooLarge):
        error = cause.error
        return _error(error.http_status, error.code, error.message)
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        reason = f" ({type(exc.__cause__).__name__})" if exc.__cause__ is not None else ""
        return _error(
            422,
            InvalidInputError.code,
            f"invalid request: body: cannot be read as JSON{reason}; send UTF-8 JSON with "
            "content-type application/json (see /docs)",
        )
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no such route: {request.method} {request.url.path} (see /docs)"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path} (see /docs)"
    else:
        message = str(exc.detail)
    known = error_for_status(exc.status_code)
    code = known.code if known is not None else "http_error"
    return _error(exc.status_code, code, message)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    message = f"internal server error: {type(exc).__name__}: {exc}"
    return _error(status_of(InternalError), InternalError.code, message)
