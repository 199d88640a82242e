"""RFC 9457 problem details for every error the API returns.

Each problem has a stable `type` (``urn:problem:<slug>``), a `title`, the HTTP `status`, a
human `detail`, and where it helps an `errors` list naming the offending parameters. Handlers
are installed for our own `Problem`, FastAPI's validation errors, Starlette's HTTP errors and
any unexpected exception (logged, answered as a bare 500 problem without a traceback).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.parameters import parameters_of, unknown_parameters

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
    return invalid_params([{"name": name, "in": location, "reason": reason}], status=status)


def invalid_params(errors: list[dict[str, str]], *, status: int = 422) -> Problem:
    """A 4xx problem that names each parameter of ``errors`` (``name``, ``in``, ``reason``)."""
    detail = "; ".join(f"{e['name']}: {e['reason']}" for e in errors) or "invalid request"
    return Problem(status, "invalid-parameter", detail, errors=errors)


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


# ---- validation messages written for people -------------------------------------------------------------
# pydantic's texts ("String should match pattern '\S'", "Value error, must be odd", "Field required" for a
# field sent empty) are rewritten by the error's `type`; a type not listed keeps pydantic's text.


def _number(value: Any) -> str:
    """``30.0`` -> ``30``, ``2.5`` -> ``2.5``, ``"1e9"`` (as sent) unchanged."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _choices(expected: str) -> str:
    """pydantic's ``"'euler', 'heun' or 'midpoint'"`` -> ``euler, heun or midpoint``."""
    return expected.replace("'", "")


def _over_limit(value: str, limit: Any, setting: str | None, unit: str = "") -> str:
    if setting is None:
        return f"must be at most {_number(limit)}{unit}"
    return f"{value}{unit} is over the limit of {_number(limit)}{unit} ({setting.upper()})"


def human_reason(
    error: Mapping[str, Any], *, setting: str | None = None, sent_empty: bool = False, upload: bool = False
) -> str:
    """The reason of one pydantic error for a person.

    Args:
        error: one item of ``RequestValidationError.errors()`` (``type``, ``msg``, ``input``, ``ctx``).
        setting: the setting that bounds this field (``max_n``), named when the value is over it.
        sent_empty: the field was sent with an empty value (FastAPI reports that as missing).
        upload: the field is a file upload.
    """
    kind = str(error.get("type", ""))
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    if kind == "missing" and upload:
        return "was sent empty; send a PNG, JPEG or WebP file" if sent_empty else "required (a PNG, JPEG or WebP file)"
    if upload:  # e.g. "Expected UploadFile, received: <class 'str'>" for `-F image=photo.png`
        return "must be a file, not text (with curl, put @ before the file name)"
    if kind == "missing":
        return "must not be blank" if sent_empty else "required"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == r"\S":
        return "must not be blank"
    if kind == "string_too_short":
        return (
            "must not be blank"
            if ctx.get("min_length") == 1
            else f"must be at least {ctx.get('min_length')} characters"
        )
    if kind == "string_too_long":
        length = len(value) if isinstance(value, str) else "?"
        return _over_limit(f"{length}", ctx.get("max_length"), setting, " characters")
    if kind == "less_than_equal":
        return _over_limit(str(value), ctx.get("le"), setting)
    if kind == "less_than":
        return f"must be less than {_number(ctx.get('lt'))}"
    if kind == "greater_than_equal":
        return f"must be at least {_number(ctx.get('ge'))}"
    if kind == "greater_than":
        return f"must be greater than {_number(ctx.get('gt'))}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "must be a whole number"
    if kind in ("float_parsing", "float_type"):
        return "must be a number"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind in ("enum", "literal_error"):
        return f"must be one of {_choices(str(ctx.get('expected', '')))}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} values (repeat the field), got {ctx.get('actual_length')}"
    if kind == "too_long":
        return f"takes at most {ctx.get('max_length')} values, got {ctx.get('actual_length')}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])  # the validator's own sentence, without pydantic's "Value error, "
    return str(error.get("msg", "invalid"))


def _sent_empty(request: Request, body: Any, where: str, name: str) -> bool:
    """Whether ``name`` was sent with only empty values (``-F prompt=``, ``?digit=``)."""
    sent: list[Any]
    if where == "query":
        sent = request.query_params.getlist(name)
    elif where == "body" and isinstance(body, FormData):
        sent = body.getlist(name)
    else:
        return False
    return bool(sent) and all(value == "" for value in sent)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # unknown parameters first (a misspelled name is the likely cause of a "required" below)
        errors = await unknown_parameters(request, exc.body)
        known = parameters_of(request)
        limits, files = (known.limits, known.files) if known else ({}, frozenset())
        for err in exc.errors():
            name, where = _loc_to_name(err.get("loc", ()))
            field = name.split("[")[0].split(".")[0]
            empty = _sent_empty(request, exc.body, where, field)
            reason = human_reason(err, setting=limits.get(field), sent_empty=empty, upload=field in files)
            errors.append({"name": name, "in": where, "reason": reason})
        return problem_response(invalid_params(errors), request)

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
