"""RFC 9457 problem details for every error the API returns.

Each problem has a stable `type` (``urn:problem:<slug>``), a `title`, the HTTP `status`, a
human `detail`, and where it helps an `errors` list naming the offending parameters. Handlers
are installed for our own `Problem`, FastAPI's validation errors, Starlette's HTTP errors and
any unexpected exception (logged, answered as a bare 500 problem without a traceback).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    """An error answer. Raise it anywhere in a request; the handler renders it."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.title = title or _TITLES.get(status, "Error")
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": f"urn:problem:{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            out["instance"] = instance
        if self.errors:
            out["errors"] = self.errors
        out.update(self.extra)
        return out


def invalid_param(name: str, reason: str, *, location: str = "query", status: int = 422) -> Problem:
    """A 4xx problem that names one parameter."""
    return Problem(
        status,
        "invalid-parameter",
        f"{name}: {reason}",
        errors=[{"name": name, "in": location, "reason": reason}],
    )


def problem_response(problem: Problem, request: Request | None = None) -> JSONResponse:
    instance = request.url.path if request is not None else None
    if request is not None:  # the metrics middleware tells a full queue from other 503s by it
        request.scope.setdefault("state", {})["problem"] = problem.slug
    return JSONResponse(
        problem.body(instance), status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON
    )


def _loc_to_name(loc: tuple[Any, ...] | list[Any]) -> tuple[str, str]:
    parts = list(loc)
    where = str(parts.pop(0)) if parts and parts[0] in ("query", "body", "path", "header", "cookie") else "body"
    name = ""
    for part in parts:  # ("prompts", 0) -> "prompts[0]", ("a", "b") -> "a.b"
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or where, where


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            name, where = _loc_to_name(err.get("loc", ()))
            errors.append({"name": name, "in": where, "reason": str(err.get("msg", "invalid"))})
        detail = "; ".join(f"{e['name']}: {e['reason']}" for e in errors) or "invalid request"
        return problem_response(Problem(422, "invalid-parameter", detail, errors=errors), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "error")
        headers = dict(exc.headers or {})
        return problem_response(Problem(exc.status_code, slug, detail, headers=headers), request)

    @app.exception_handler(RedisError)
    async def _redis(request: Request, exc: RedisError) -> JSONResponse:
        log.warning("Redis error on %s %s: %s", request.method, request.url.path, exc)
        problem = Problem(
            503,
            "queue-unavailable",
            "the job queue (Redis) is unreachable; retry shortly",
            headers={"Retry-After": "5"},
        )
        return problem_response(problem, request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            Problem(500, "internal-error", "an internal error occurred; it has been logged"), request
        )
