"""Per request: its ``X-Request-ID``, its HTTP metrics, and the count of a refused submission (one ASGI middleware).

A plain ASGI middleware (no ``BaseHTTPMiddleware``, which costs a task per request): it takes the client's
``X-Request-ID`` when it is 1 to 200 printable ASCII characters, else makes one (32 hex digits), echoes it on the
answer, puts it in the request's state (the submission stores it with the job) and in the ``REQUEST_ID`` context
variable (every log line of the request carries it); then it counts the answer by route template, method and
status and observes its latency (``app.metrics``), except for ``/metrics`` itself. A ``POST`` to an operation
that was answered 401, 413, 415, 422, 429 or 503 is counted as a rejected submission, by reason and tenant.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import NO_TENANT, ApiMetrics
from core.logs import REQUEST_ID

HEADER = b"x-request-id"
MAX_REQUEST_ID = 200
UNMATCHED = "unmatched"  # the route label of a request no route matched (a 404)


def valid_request_id(value: str) -> bool:
    """1 to 200 printable ASCII characters (no control characters, no spaces at the ends)."""
    return 0 < len(value) <= MAX_REQUEST_ID and value.isascii() and value.isprintable() and value == value.strip()


def reject_reason(status: int, problem: str | None) -> str | None:
    """The reason label of a refused submission answered ``status`` (``problem``: the slug of its problem)."""
    if status == 503:
        return "queue_full" if problem == "queue-full" else "unavailable"
    if status == 429:
        return "max_queued" if problem == "too-many-queued" else "rate_limited"
    return {401: "unauthorized", 413: "bad_input", 415: "bad_input", 422: "invalid"}.get(status)


class Observability:
    """See the module docstring. ``submit_paths``: the paths of the operations' ``POST`` routes."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, submit_paths: Collection[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.submit_paths = frozenset(submit_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == HEADER:
                request_id = value.decode("latin-1")
                break
        if request_id is None or not valid_request_id(request_id):
            request_id = secrets.token_hex(16)
        scope.setdefault("state", {})["request_id"] = request_id
        echo = (b"x-request-id", request_id.encode())
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
            self._count(scope, status, time.perf_counter() - started)

    def _count(self, scope: Scope, status: int, seconds: float) -> None:
        path: str = scope["path"]
        if path == "/metrics":
            return
        route: Any = scope.get("route")
        template = getattr(route, "path", None) or UNMATCHED
        method: str = scope["method"]
        self.metrics.http(template, method, status, seconds)
        if status >= 400 and method == "POST" and (template in self.submit_paths or path in self.submit_paths):
            state = scope.get("state", {})
            reason = reject_reason(status, state.get("problem"))
            if reason is not None:
                self.metrics.rejected.labels(reason, state.get("tenant") or NO_TENANT).inc()
