"""Logging of both processes: one configuration, plain text or one JSON object per line (``LOG_FORMAT``).

``configure(level, fmt)`` installs one handler on the root logger (stderr) and routes every other logger through
it: uvicorn's ``uvicorn.error`` and ``uvicorn.access``, RQ's, the worker's own, and Python's warnings. With
``LOG_FORMAT=json`` each line is one JSON object::

    {"time": "2026-12-04T10:00:00.123Z", "level": "INFO", "logger": "workers.loop", "message": "job 3f0c... started",
     "job_id": "3f0c...", "request_id": "b1e2..."}

``job_id`` and ``request_id`` come from the record's ``extra`` when the call names them (a thread that serves many
jobs: the batcher, the event publisher, the loop's claim, commit and recovery), else from the context variables
``JOB_ID`` and ``REQUEST_ID`` (a thread or task that serves one job or one request: a worker's job thread, an API
request). Other ``extra`` fields are kept as they are. Nothing here logs a header: an API key never reaches a line.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]

#: the job the current thread (or task) works on
JOB_ID: ContextVar[str | None] = ContextVar("job_id", default=None)
#: the request id (``X-Request-ID``) of the current API request, or of the job the current thread works on
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: loggers that install handlers of their own; they are routed through the root handler instead
ROUTED = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "rq", "rq.worker", "py.warnings")
# the attributes every LogRecord has; anything else on a record came from ``extra``
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}


class ContextFilter(logging.Filter):
    """Fills ``job_id`` and ``request_id`` from the context variables where the call did not pass them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = JOB_ID.get()
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO 8601 UTC, ms), level, logger, message, ``job_id`` and
    ``request_id`` when known, the other ``extra`` fields, and ``exception`` (the traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def formatter(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure(level: str | int = "INFO", fmt: LogFormat = "text", *, stream: TextIO | None = None) -> None:
    """Log every line of this process through one handler on the root logger, in ``fmt`` (see the module
    docstring). Safe to call again (it replaces the handler it installed)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_svc", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._svc = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(level)
    for name in ROUTED:
        routed = logging.getLogger(name)
        routed.handlers.clear()
        routed.propagate = True
    logging.captureWarnings(True)
    _log_uncaught()


def _log_uncaught() -> None:
    """Uncaught exceptions (main thread and others) as log records, so that they are formatted too."""
    log = logging.getLogger("uncaught")

    def main_hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        log.critical("uncaught exception", exc_info=(kind, value, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        thread = args.thread.name if args.thread is not None else "?"
        log.error(
            "uncaught exception in thread %s", thread, exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
        )

    sys.excepthook = main_hook
    threading.excepthook = thread_hook


@contextmanager
def job_context(job_id: str | None, request_id: str | None = None) -> Iterator[None]:
    """Lines logged inside carry ``job_id`` (and ``request_id``): for a thread that serves one job at a time."""
    job_token = JOB_ID.set(job_id)
    request_token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        REQUEST_ID.reset(request_token)
        JOB_ID.reset(job_token)


def about(job_id: str, request_id: str | None = None) -> dict[str, Any]:
    """``extra`` for a line about one job, logged by a thread that serves many."""
    return {"job_id": job_id, "request_id": request_id} if request_id else {"job_id": job_id}
