"""Downloads from the result store: one response for every result, preview, upload and manifest.

`store_response` answers a GET or HEAD for one object of a `core.store.ResultStore` the way Starlette's
`FileResponse` answered for a file, on either backend, and adds conditional requests:

* ``200`` with ``Content-Length``, ``ETag``, ``Last-Modified``, ``Accept-Ranges: bytes`` and ``Cache-Control``;
  HEAD sends the same headers without the body.
* ``Range: bytes=a-b``, ``bytes=a-`` or ``bytes=-n``: ``206`` with ``Content-Range``; a range that starts at or
  past the end: ``416`` problem+json with ``Content-Range: bytes */size``. A malformed header, another unit or
  several ranges are ignored (the whole object, ``200``: RFC 9110 section 14.2 lets a server ignore Range).
  ``If-Range`` with the current ETag or Last-Modified keeps the range; anything else gets the whole object.
* ``If-None-Match`` (any of the listed ETags, or ``*``; weak comparison) or, without it, ``If-Modified-Since``:
  ``304`` without a body.
* ``redirect=True`` and a backend that presigns (S3): a GET answers ``307`` to a presigned URL valid for
  ``presign_expiry_s`` seconds (``Cache-Control: no-store``). HEAD and ``304`` are still answered here, and the
  object is looked up first, so a missing object is still the caller's 404 and a store that is down a 503.
* The store cannot be reached (`StoreUnavailable`): ``503`` problem+json ``urn:problem:store-unavailable`` with
  ``Retry-After``; the detail names no host, path or credential (the log has the store's message).
* The object does not exist (`StoreNotFound`, also for a name the store refuses): raised, for the caller to
  answer 404 or 410 as the job's state says.

Every store call runs in the thread pool, and the body is read chunk by chunk in the thread pool too
(`iterate_in_threadpool`), so a slow store never blocks the event loop. No torch here.
"""

from __future__ import annotations

import logging
import re
from email.utils import formatdate, parsedate_to_datetime

import anyio
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.problems import Problem, problem_response
from core.store import InvalidKey, ObjectInfo, ResultStore, StoredObject, StoreNotFound, StoreUnavailable

log = logging.getLogger(__name__)

DEFAULT_CACHE_CONTROL = "private, max-age=3600"
STORE_RETRY_AFTER_S = 5
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


SMALL_BYTES = 256 * 1024  # a plain download of at most this many bytes is read in one go
_CONDITIONAL = ("range", "if-none-match", "if-modified-since", "if-range")


class _Unsatisfiable(Exception):
    pass


def _open_small(store: ResultStore, job_id: str, name: str) -> tuple[StoredObject, bytes | None]:
    """The object opened, and its whole body when it is small (then it is closed already)."""
    obj = store.open(job_id, name)
    if obj.size > SMALL_BYTES:
        return obj, None
    try:
        return obj, obj.read()
    finally:
        obj.close()


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One byte range of ``Range`` as ``[start, end)`` within ``size``; None to ignore the header (malformed,
    another unit, several ranges); `_Unsatisfiable` for a range that selects nothing."""
    match = _RANGE_RE.fullmatch(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # bytes=-n: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _Unsatisfiable
        return max(size - n, 0), size
    start = int(first)
    if last and int(last) < start:
        return None  # an invalid range-spec: the header is ignored
    if start >= size:
        raise _Unsatisfiable
    end = size if not last else min(int(last) + 1, size)
    return start, end


def _etags(header: str) -> list[str]:
    return [tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()]


def not_modified(request: Request, info: ObjectInfo) -> bool:
    """RFC 9110 section 13.1.2 and 13.1.3: If-None-Match first (weak comparison); else If-Modified-Since."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = _etags(if_none_match)
        return "*" in tags or info.etag.removeprefix("W/") in tags
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since).timestamp()
        except (TypeError, ValueError):
            return False
        return int(info.last_modified) <= since
    return False


def _range_applies(request: Request, info: ObjectInfo, last_modified: str) -> bool:
    """If-Range (RFC 9110 section 13.1.5): a strong ETag or the exact Last-Modified keeps the range."""
    if_range = request.headers.get("if-range")
    if if_range is None:
        return True
    if if_range.startswith("W/"):
        return False
    return if_range == info.etag or if_range == last_modified


def store_unavailable(request: Request, exc: StoreUnavailable, retry_after_s: int = STORE_RETRY_AFTER_S) -> Response:
    """503 problem+json for a store that cannot be reached, with Retry-After and without the store's details."""
    log.warning("result store unavailable on %s %s: %s", request.method, request.url.path, exc)
    problem = Problem(
        503,
        "store-unavailable",
        "the result store is unreachable or failing; retry shortly",
        title="Result Store Unavailable",
        headers={"Retry-After": str(retry_after_s)},
    )
    return problem_response(problem, request)


class _ObjectResponse(StreamingResponse):
    """Streams a `StoredObject` (read in the thread pool) and closes it, also when the client goes away."""

    def __init__(self, obj: StoredObject, status_code: int, headers: dict[str, str], media_type: str) -> None:
        super().__init__(
            iterate_in_threadpool(iter(obj)), status_code=status_code, headers=headers, media_type=media_type
        )
        self._obj = obj

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(self._obj.close)


async def store_response(
    store: ResultStore,
    job_id: str,
    name: str,
    request: Request,
    *,
    media_type: str | None = None,
    redirect: bool = False,
    presign_expiry_s: int = 3600,
    cache_control: str = DEFAULT_CACHE_CONTROL,
    retry_after_s: int = STORE_RETRY_AFTER_S,
) -> Response:
    """Answer a GET or HEAD of the object ``(job_id, name)``: see the module docstring. ``media_type`` defaults to
    the store's content type. Raises `StoreNotFound` when there is no such object."""
    if request.method == "GET" and not redirect and not any(h in request.headers for h in _CONDITIONAL):
        # the common case, a plain download: one call to the store (one thread hop), the whole body at once when
        # it is small (a result PNG, a manifest, a preview)
        try:
            obj, data = await run_in_threadpool(_open_small, store, job_id, name)
        except InvalidKey:
            raise StoreNotFound(f"no object {name!r}") from None
        except StoreUnavailable as exc:
            return store_unavailable(request, exc, retry_after_s)
        headers = {
            "ETag": obj.etag,
            "Last-Modified": formatdate(obj.last_modified, usegmt=True),
            "Cache-Control": cache_control,
            "Accept-Ranges": "bytes",
        }
        kind = media_type or obj.content_type or "application/octet-stream"
        if data is not None:
            return Response(data, status_code=200, headers=headers, media_type=kind)
        headers["Content-Length"] = str(obj.end - obj.start)
        return _ObjectResponse(obj, 200, headers, kind)
    try:
        info = await run_in_threadpool(store.stat, job_id, name)
    except InvalidKey:
        raise StoreNotFound(f"no object {name!r}") from None
    except StoreUnavailable as exc:
        return store_unavailable(request, exc, retry_after_s)
    if info is None:
        raise StoreNotFound(f"job {job_id} has no object {name!r}")
    last_modified = formatdate(info.last_modified, usegmt=True)
    validators = {"ETag": info.etag, "Last-Modified": last_modified, "Cache-Control": cache_control}
    head = request.method == "HEAD"

    if not_modified(request, info):
        return Response(status_code=304, headers=validators)
    if redirect and not head:
        try:
            url = store.presigned_url(job_id, name, presign_expiry_s)  # signed locally: no request
        except StoreUnavailable as exc:
            return store_unavailable(request, exc, retry_after_s)
        if url is not None:
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})

    span: tuple[int, int] | None = None
    header = request.headers.get("range")
    if header is not None and _range_applies(request, info, last_modified):
        try:
            span = parse_range(header, info.size)
        except _Unsatisfiable:
            problem = Problem(
                416,
                "range-not-satisfiable",
                f"the range {header!r} starts at or past the end of the {info.size} bytes of {name!r}",
                title="Range Not Satisfiable",
                headers={"Content-Range": f"bytes */{info.size}", **validators},
            )
            return problem_response(problem, request)
    kind = media_type or info.content_type or "application/octet-stream"
    headers = {**validators, "Accept-Ranges": "bytes"}

    if head:
        if span is not None:
            headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{info.size}"
        headers["Content-Length"] = str(info.size if span is None else span[1] - span[0])
        return Response(status_code=200 if span is None else 206, headers=headers, media_type=kind)

    start, end = span if span is not None else (None, None)
    try:
        obj = await run_in_threadpool(store.open, job_id, name, start, end)
    except StoreUnavailable as exc:
        return store_unavailable(request, exc, retry_after_s)
    if obj.etag != info.etag:  # replaced between the two calls: describe what is sent
        headers["ETag"] = obj.etag
        headers["Last-Modified"] = formatdate(obj.last_modified, usegmt=True)
    headers["Content-Length"] = str(obj.end - obj.start)
    if span is not None:
        headers["Content-Range"] = f"bytes {obj.start}-{obj.end - 1}/{obj.size}"
    return _ObjectResponse(obj, 206 if span is not None else 200, headers, kind)
