"""Errors under ``/v1`` in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every error of the service is made once, as RFC 9457 problem+json (``app.problems``); under ``/v1`` an ASGI
middleware rewrites each such answer into OpenAI's shape, so the openai SDK raises its own exception classes
(``BadRequestError``, ``AuthenticationError``, ``NotFoundError``, ...) with the message in them:

- ``message`` is the problem's ``detail``; ``code`` its slug (``urn:problem:<code>``); ``param`` the first
  parameter its ``errors`` name (the field as the request sent it), else null;
- ``type``: ``invalid_request_error`` for a 4xx, ``authentication_error`` for 401, ``rate_limit_error`` for 429,
  ``server_error`` for a 5xx;
- the status stays the service's, except that a parameter error (422 elsewhere) is 400 here, as OpenAI answers
  it: the SDK's ``BadRequestError`` is what its users catch for a bad request. Headers (``Retry-After``,
  ``WWW-Authenticate``) are kept.

The 500 of an unexpected exception is made outside every middleware (Starlette's ``ServerErrorMiddleware``), so
its handler is wrapped too (``install``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, Field
from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/v1"
PROBLEM_JSON = "application/problem+json"


class ErrorDetail(BaseModel):
    message: str = Field(description="what went wrong")
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error or server_error")
    param: str | None = Field(None, description="the request field at fault, if one is")
    code: str | None = Field(None, description="a stable code (the service's problem type)")


class ErrorBody(BaseModel):
    """An error as OpenAI's API shapes it."""

    error: ErrorDetail


def under_prefix(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def convert(status: int, problem_body: bytes) -> tuple[int, bytes]:
    """A problem+json answer as OpenAI's error (status, body)."""
    try:
        problem: dict[str, Any] = json.loads(problem_body)
    except ValueError:
        problem = {}
    status = 400 if status == 422 else status
    errors = problem.get("errors") or []
    param = str(errors[0].get("name", "")) if errors and isinstance(errors[0], dict) else ""
    if not param or param.startswith("[") or param == "body":
        param = ""  # a malformed body as a whole, not one field
    slug = str(problem.get("type", "")).removeprefix("urn:problem:")
    detail = ErrorDetail(
        message=str(problem.get("detail") or problem.get("title") or "error"),
        type=error_type(status),
        param=param or None,
        code=slug or None,
    )
    return status, ErrorBody(error=detail).model_dump_json().encode()


class OpenAIErrors:
    """The ASGI middleware that rewrites problem+json answers under ``/v1`` (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not under_prefix(scope["path"]):
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        chunks: list[bytes] = []

        async def rewrite(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=list(message["headers"]))
                if headers.get("content-type", "").startswith(PROBLEM_JSON):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                status, body = convert(held["status"], b"".join(chunks))
                headers = MutableHeaders(raw=list(held["headers"]))
                headers["content-type"] = "application/json"
                headers["content-length"] = str(len(body))
                await send({"type": "http.response.start", "status": status, "headers": headers.raw})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, rewrite)


def install(app: FastAPI) -> None:
    """Add the middleware (outside those added before it) and wrap the handler of unexpected exceptions. Call it
    after ``install_problem_handlers`` and the other middleware."""
    app.add_middleware(OpenAIErrors)
    original = app.exception_handlers.get(Exception)
    if original is None:
        return
    handler: Callable[[Request, Exception], Awaitable[Response]] = original  # type: ignore[assignment]

    async def unexpected(request: Request, exc: Exception) -> Response:
        response = await handler(request, exc)
        if not under_prefix(request.url.path):
            return response
        status, body = convert(response.status_code, bytes(response.body))
        return JSONResponse(json.loads(body), status_code=status)

    app.exception_handlers[Exception] = unexpected
