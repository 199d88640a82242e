"""The result store: every byte a job keeps (its uploads, result PNGs, previews, GIF and manifest) behind one
interface, with a folder backend and an S3 backend. Nothing outside this module builds a result path.

Keys are job-scoped: ``(job_id, name)``. A job id is 32 lower-case hex characters (the API makes them); a name
is one segment or two joined by ``/`` (``samples.png``, ``inputs/image``, ``previews/I-0005.png``), each segment
matching `FILE_NAME_RE` (it cannot start with a dot, so ``.`` and ``..`` are refused). Anything else raises
`InvalidKey` (a `ValueError`) before any I/O, so no key can walk out of the job's folder or prefix.

Backends (`open_store` picks one from the settings):

* `FolderStore` (``RESULTS_URL`` unset): ``<results_dir>/<job_id>/<name>``, the layout `core.storage` had; every
  write goes to a temporary file in the target's folder and is renamed over it, so a reader sees the whole
  object or none.
* `S3Store` (``RESULTS_URL=s3://BUCKET/PREFIX``): the object ``PREFIX/<job_id>/<name>`` of an existing bucket
  (the bucket is the operator's, created before the service starts), through the obstore client (chosen by
  measuring it against boto3: BENCHMARKS.md, "Result store"). A PUT is atomic on S3: readers see the old object,
  or none, or the new one.

Both promise the same: ``put`` replaces an object whole; the manifest (`write_manifest`) is written last, as the
commit point of a job; `delete_job` removes every object of a job (uploads included); `sweep` removes the jobs
whose newest object is older than a given age.

Errors. Callers see two exceptions, both `StoreError`s: `StoreNotFound` (no such object) and
`StoreUnavailable` (the backend cannot be reached or refused the request: connection refused, timeout, a 5xx,
wrong credentials, a missing bucket, an unwritable folder). A `StoreUnavailable` message names the backend and the
kind of failure, never a credential, a signature or a server path; the detail goes to the log. The store does not
retry for long: an S3 request is retried at most once (a dropped keep-alive connection), with a connect timeout
of ~2 s and a read timeout of ~10 s. The worker adds its own bounded retry with backoff; the API answers 503.

All methods are synchronous and thread-safe; the API calls them in its thread pool. Torch-free and FastAPI-free:
the API process imports it.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import mimetypes
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.exceptions import PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store as ObstoreS3

if TYPE_CHECKING:
    from obstore import GetOptions, GetResult
    from obstore.store import ClientConfig, RetryConfig, S3Config

    from core.settings import Settings

log = logging.getLogger(__name__)

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")  # one segment of a name
MANIFEST = "manifest.json"
INPUTS = "inputs"  # the uploads of a job, written by the API: <job>/inputs/<name>
CHUNK_SIZE = 64 * 1024  # bytes per chunk of `StoredObject`
_TMP_PREFIX = ".tmp-"  # FolderStore's temporary files: never a valid name, so never listed or served


# --- errors ---------------------------------------------------------------------------------------------------


class StoreError(Exception):
    """Base of the store's errors."""


class StoreNotFound(StoreError):
    """The object does not exist."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached or refused the request. The message never contains credentials or paths."""


class InvalidKey(ValueError):
    """A job id or name that the store refuses (raised before any I/O): a caller's error, not a store failure."""


# --- keys -----------------------------------------------------------------------------------------------------


def is_job_id(job_id: str) -> bool:
    return bool(JOB_ID_RE.fullmatch(job_id))


def is_name(name: str) -> bool:
    """One segment, or two joined by ``/``, each matching `FILE_NAME_RE`."""
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(FILE_NAME_RE.fullmatch(part) for part in parts)


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not is_job_id(job_id):
        raise InvalidKey(f"not a job id: {job_id!r}")
    return job_id


def check_name(name: str) -> str:
    if not isinstance(name, str) or not is_name(name):
        raise InvalidKey(f"not a result name: {name!r}")
    return name


_PREFIX_RE = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}/)?[A-Za-z0-9_.-]{0,100}$")


def check_prefix(prefix: str) -> str:
    """A name prefix for `ResultStore.list`: ``""``, ``"previews/"``, ``"previews/I-"``..."""
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix) or ".." in prefix:
        raise InvalidKey(f"not a name prefix: {prefix!r}")
    return prefix


# --- objects --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    size: int  # bytes
    etag: str  # a strong ETag as HTTP writes it, quotes included: '"9e107d9d372bb6826bd81d3542a419d6"'
    last_modified: float  # POSIX seconds
    content_type: str | None  # as written (S3) or guessed from the name (folder); None if unknown


class StoredObject:
    """An open object: its metadata and the bytes ``[start, end)`` as an iterator of chunks.

    Iterate it (in a thread: reading blocks) and `close` it when done, or use it as a context manager. An S3
    stream that breaks half-way raises `StoreUnavailable` from the iterator.
    """

    def __init__(
        self, info: ObjectInfo, start: int, end: int, chunks: Iterator[bytes], close: Callable[[], None]
    ) -> None:
        self.info = info
        self.start = start
        self.end = end
        self._chunks = chunks
        self._close = close
        self._closed = False

    @property
    def size(self) -> int:
        """The size of the whole object (not of the range)."""
        return self.info.size

    @property
    def etag(self) -> str:
        return self.info.etag

    @property
    def last_modified(self) -> float:
        return self.info.last_modified

    @property
    def content_type(self) -> str | None:
        return self.info.content_type

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def read(self) -> bytes:
        """The rest of the range, at once."""
        return b"".join(self._chunks)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> StoredObject:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _clamp(start: int | None, end: int | None, size: int) -> tuple[int, int]:
    """``[start, end)`` within ``[0, size]``; an empty range where start is at or past the end."""
    lo = 0 if start is None else start
    hi = size if end is None else min(end, size)
    if lo < 0 or (end is not None and end < 0):
        raise ValueError(f"negative range: start={start}, end={end}")
    lo = min(lo, size)
    return lo, max(lo, hi)


def guess_type(name: str) -> str | None:
    return mimetypes.guess_type(name)[0]


# --- the interface --------------------------------------------------------------------------------------------


class ResultStore(abc.ABC):
    """Where jobs keep their bytes. Every method validates its keys first (`InvalidKey`); I/O failures raise
    `StoreNotFound` or `StoreUnavailable` only."""

    @abc.abstractmethod
    def put(self, job_id: str, name: str, data: bytes, content_type: str | None = None) -> None:
        """Write an object whole (replacing any earlier one); readers never see half of it."""

    @abc.abstractmethod
    def get(self, job_id: str, name: str) -> bytes:
        """The whole object; `StoreNotFound` if it does not exist."""

    @abc.abstractmethod
    def open(self, job_id: str, name: str, start: int | None = None, end: int | None = None) -> StoredObject:
        """The object's metadata and its bytes ``[start, end)`` (``end`` exclusive, like a slice: HTTP's
        ``bytes=a-b`` is ``start=a, end=b + 1``), streamed in chunks. The range is clamped to the object: ``end``
        past the size means "to the end", and a ``start`` at or past the end gives no bytes (the metadata still
        tells the size)."""

    @abc.abstractmethod
    def stat(self, job_id: str, name: str) -> ObjectInfo | None:
        """The object's metadata, or None if it does not exist."""

    def exists(self, job_id: str, name: str) -> bool:
        return self.stat(job_id, name) is not None

    @abc.abstractmethod
    def list(self, job_id: str, prefix: str = "") -> list[str]:
        """The names of the job's objects that start with ``prefix``, relative to the job, sorted."""

    @abc.abstractmethod
    def delete_job(self, job_id: str) -> int:
        """Delete every object of the job (uploads, results, previews, manifest); returns how many."""

    @abc.abstractmethod
    def presigned_url(self, job_id: str, name: str, expires_s: int) -> str | None:
        """A URL that GETs the object without credentials for ``expires_s`` seconds; None if the backend has none
        (the folder). Made locally: it does not check that the object exists."""

    @abc.abstractmethod
    def sweep(self, max_age_s: float, now: float | None = None) -> int:
        """Expiry: delete every job whose newest object is older than ``max_age_s``; returns how many jobs."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise `StoreUnavailable` if the backend cannot be reached or used (one cheap request)."""


def write_manifest(store: ResultStore, job_id: str, manifest: dict[str, Any]) -> None:
    """Write the job's manifest. Write it last: it is the commit point that makes the job's results visible."""
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    store.put(job_id, MANIFEST, data, content_type="application/json")


def read_manifest(store: ResultStore, job_id: str) -> dict[str, Any] | None:
    """The job's manifest, or None if it has none (not committed yet, deleted, or unreadable JSON).
    `StoreUnavailable` propagates: "cannot tell" is not "no results"."""
    try:
        manifest = json.loads(store.get(job_id, MANIFEST))
    except StoreNotFound:
        return None
    except ValueError:
        log.warning("job %s has a manifest that is not JSON", job_id)
        return None
    return manifest if isinstance(manifest, dict) else None


# --- folder ---------------------------------------------------------------------------------------------------


class FolderStore(ResultStore):
    """``<root>/<job_id>/<name>`` on a local (or shared) filesystem."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FolderStore({str(self.root)!r})"

    def _path(self, job_id: str, name: str) -> Path:
        return self.root / check_job_id(job_id) / check_name(name)

    @staticmethod
    def _unavailable(op: str, exc: OSError) -> StoreUnavailable:
        log.warning("result folder: %s failed: %r", op, exc)
        reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        return StoreUnavailable(f"the result folder is not usable ({op}: {reason})")

    def put(self, job_id: str, name: str, data: bytes, content_type: str | None = None) -> None:
        path = self._path(job_id, name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
        except OSError as exc:
            raise self._unavailable("put", exc) from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise self._unavailable("put", exc) from exc
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, job_id: str, name: str) -> bytes:
        path = self._path(job_id, name)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StoreNotFound(f"job {job_id} has no object {name!r}") from None
        except OSError as exc:
            raise self._unavailable("get", exc) from exc

    @staticmethod
    def _info(st: os.stat_result, name: str) -> ObjectInfo:
        # the ETag that Starlette's FileResponse gave these files, so that clients' caches stay valid
        etag = hashlib.md5(f"{st.st_mtime}-{st.st_size}".encode(), usedforsecurity=False).hexdigest()
        return ObjectInfo(size=st.st_size, etag=f'"{etag}"', last_modified=st.st_mtime, content_type=guess_type(name))

    def open(self, job_id: str, name: str, start: int | None = None, end: int | None = None) -> StoredObject:
        path = self._path(job_id, name)
        try:
            f = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StoreNotFound(f"job {job_id} has no object {name!r}") from None
        except OSError as exc:
            raise self._unavailable("open", exc) from exc
        try:
            info = self._info(os.fstat(f.fileno()), name)  # of the file this descriptor reads, whatever renames follow
            lo, hi = _clamp(start, end, info.size)
            f.seek(lo)
        except BaseException:
            f.close()
            raise

        def chunks() -> Iterator[bytes]:
            left = hi - lo
            while left > 0:
                chunk = f.read(min(CHUNK_SIZE, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

        return StoredObject(info, lo, hi, chunks(), f.close)

    def stat(self, job_id: str, name: str) -> ObjectInfo | None:
        path = self._path(job_id, name)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._unavailable("stat", exc) from exc
        if not path.is_file():
            return None
        return self._info(st, name)

    def _names(self, folder: Path) -> Iterator[tuple[str, Path]]:
        """(name, path) of every object in a job's folder (two levels; temporary files skipped)."""
        for entry in folder.iterdir():
            if not FILE_NAME_RE.fullmatch(entry.name):
                continue
            if entry.is_dir():
                for sub in entry.iterdir():
                    if FILE_NAME_RE.fullmatch(sub.name) and sub.is_file():
                        yield f"{entry.name}/{sub.name}", sub
            elif entry.is_file():
                yield entry.name, entry

    def list(self, job_id: str, prefix: str = "") -> list[str]:
        folder = self.root / check_job_id(job_id)
        check_prefix(prefix)
        try:
            return sorted(name for name, _ in self._names(folder) if name.startswith(prefix))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise self._unavailable("list", exc) from exc

    def delete_job(self, job_id: str) -> int:
        folder = self.root / check_job_id(job_id)
        try:
            count = sum(1 for _ in self._names(folder))
            shutil.rmtree(folder)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise self._unavailable("delete", exc) from exc
        return count

    def presigned_url(self, job_id: str, name: str, expires_s: int) -> str | None:
        check_job_id(job_id)
        check_name(name)
        return None

    def _newest(self, folder: Path) -> float:
        """The newest modification time of the job's objects (the folder's own, if it has none)."""
        times = [path.stat().st_mtime for _, path in self._names(folder)]
        return max(times) if times else folder.stat().st_mtime

    def sweep(self, max_age_s: float, now: float | None = None) -> int:
        now = time.time() if now is None else now
        removed = 0
        try:
            children = list(self.root.iterdir())
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise self._unavailable("sweep", exc) from exc
        for child in children:
            if not (is_job_id(child.name) and child.is_dir()):
                continue
            try:
                if now - self._newest(child) > max_age_s:
                    shutil.rmtree(child)
                    removed += 1
            except FileNotFoundError:
                continue  # deleted meanwhile
            except OSError as exc:
                log.warning("result folder: could not expire job %s: %r", child.name, exc)
        if removed:
            log.info("removed %d expired jobs from the result folder", removed)
        return removed

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unavailable("check", exc) from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            log.warning("result folder %s is not writable", self.root)
            raise StoreUnavailable("the result folder is not usable (check: not writable)")


# --- S3 -------------------------------------------------------------------------------------------------------

MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4's limit
Paths = list[str]  # (inside the classes, `list` is the method)


class S3Store(ResultStore):
    """``PREFIX/<job_id>/<name>`` in an S3 bucket (AWS, or any S3 server: SeaweedFS, MinIO, R2, ...).

    ``endpoint_url``, ``access_key_id``, ``secret_access_key`` and ``region`` default to what the client (obstore)
    finds in the environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ... or a container or instance role);
    `open_store` passes the service's settings. Path-style requests; plain HTTP only for an ``http://`` endpoint.
    Each request: connect timeout ``connect_timeout_s``, read timeout ``read_timeout_s`` (between two reads), at
    most ``retries`` retries within ``read_timeout_s``.

    Expiry: `sweep` lists the prefix and deletes old jobs, which costs one LIST per 1,000 objects. In production a
    bucket lifecycle rule (expire objects under ``PREFIX/`` after ``RESULT_TTL_S`` rounded up to whole days) does
    the same without any request from the service, and the sweep then finds nothing to do. A rule expires each
    object by its own age, so a job's upload and previews go a little before its manifest (written last); a
    download in between finds the manifest but not the file, which the API answers as expired.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        region: str | None = None,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 10.0,
        retries: int = 1,
    ) -> None:
        if not bucket:
            raise ValueError("S3Store needs a bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        config: S3Config = {}
        if endpoint_url:
            config["endpoint"] = endpoint_url
        if access_key_id:
            config["access_key_id"] = access_key_id
        if secret_access_key:
            config["secret_access_key"] = secret_access_key
        if region:
            config["region"] = region
        client: ClientConfig = {
            "connect_timeout": timedelta(seconds=connect_timeout_s),
            "read_timeout": timedelta(seconds=read_timeout_s),
            "timeout": timedelta(seconds=300),  # a whole request, streaming included; stalls end at the read timeout
        }
        if endpoint_url and endpoint_url.startswith("http://"):
            client["allow_http"] = True
        retry: RetryConfig = {
            "max_retries": retries,
            "retry_timeout": timedelta(seconds=read_timeout_s),
            "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=1)},
        }
        self._secrets = [v for v in (access_key_id, secret_access_key) if v]
        url = urlparse(endpoint_url or "")
        where = f"{url.hostname}:{url.port}" if url.hostname and url.port else (url.hostname or "AWS")
        self._where = f"s3://{bucket}/{self.prefix} at {where}" if self.prefix else f"s3://{bucket} at {where}"
        self._store = ObstoreS3(
            bucket, prefix=self.prefix or None, config=config, client_options=client, retry_config=retry
        )

    def __repr__(self) -> str:
        return f"S3Store({self._where})"

    # -- errors -------------------------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _failure(self, op: str, path: str, exc: BaseException) -> StoreError:
        """The one exception a caller sees for a failed request (`StoreNotFound` or `StoreUnavailable`)."""
        if isinstance(exc, FileNotFoundError):
            return StoreNotFound(f"no object {path!r}")
        text = str(exc)
        if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
            kind = "refusing the credentials"
        elif "NoSuchBucket" in text:
            kind = "missing its bucket"
        elif code := re.search(r"status code: (\d{3})", text):
            status = int(code[1])
            kind = "refusing the credentials" if status in (401, 403) else f"answering HTTP {status}"
        elif re.search(r"timed ?out", text, flags=re.IGNORECASE):
            kind = "not answering in time"
        else:
            kind = "unreachable"
        log.warning("S3 %s of %s failed: %s", op, path, self._scrub(text).split("\n\nDebug source", 1)[0])
        return StoreUnavailable(f"the result store ({self._where}) is {kind} ({op})")

    @staticmethod
    def _key(job_id: str, name: str) -> str:
        return f"{check_job_id(job_id)}/{check_name(name)}"

    @staticmethod
    def _info(result: GetResult) -> ObjectInfo:
        meta = result.meta
        content_type = result.attributes.get("Content-Type")
        return ObjectInfo(
            size=int(meta["size"]),
            etag=meta["e_tag"] or "",
            last_modified=meta["last_modified"].timestamp(),
            content_type=str(content_type) if content_type is not None else None,
        )

    # -- the interface ------------------------------------------------------------------------------------------
    def put(self, job_id: str, name: str, data: bytes, content_type: str | None = None) -> None:
        path = self._key(job_id, name)
        kind = content_type or guess_type(name) or "application/octet-stream"
        try:
            obstore.put(self._store, path, data, attributes={"Content-Type": kind}, use_multipart=False)
        except (ObstoreError, OSError) as exc:
            raise self._failure("put", path, exc) from None

    def get(self, job_id: str, name: str) -> bytes:
        path = self._key(job_id, name)
        try:
            return obstore.get(self._store, path).bytes().to_bytes()
        except (ObstoreError, OSError) as exc:
            raise self._failure("get", path, exc) from None

    def stat(self, job_id: str, name: str) -> ObjectInfo | None:
        path = self._key(job_id, name)
        try:
            return self._info(obstore.get(self._store, path, options={"head": True}))
        except FileNotFoundError:
            return None
        except (ObstoreError, OSError) as exc:
            raise self._failure("stat", path, exc) from None

    def open(self, job_id: str, name: str, start: int | None = None, end: int | None = None) -> StoredObject:
        path = self._key(job_id, name)
        if (start is not None and start < 0) or (end is not None and end < 0):
            raise ValueError(f"negative range: start={start}, end={end}")
        lo = start or 0
        if end is not None and end <= lo:
            return self._empty(job_id, name, path)
        options: GetOptions = {}
        if end is not None:
            options["range"] = (lo, end)
        elif lo:
            options["range"] = {"offset": lo}
        try:
            result = obstore.get(self._store, path, options=options)
        except (ObstoreError, OSError) as exc:
            if re.search(r"status code: 416", str(exc)):  # start at or past the end
                return self._empty(job_id, name, path)
            raise self._failure("get", path, exc) from None
        info = self._info(result)
        first, last = result.range
        stream = result.stream(min_chunk_size=CHUNK_SIZE)

        def chunks() -> Generator[bytes, None, None]:
            try:
                for chunk in stream:  # at least CHUNK_SIZE each: cut to at most CHUNK_SIZE, as the folder reads
                    view = memoryview(chunk)
                    for i in range(0, len(view), CHUNK_SIZE):
                        yield bytes(view[i : i + CHUNK_SIZE])
            except (ObstoreError, OSError) as exc:
                raise self._failure("get", path, exc) from None

        body = chunks()
        return StoredObject(info, first, last, body, body.close)  # closing drops the stream and its connection

    def _empty(self, job_id: str, name: str, path: str) -> StoredObject:
        info = self.stat(job_id, name)
        if info is None:
            raise StoreNotFound(f"no object {path!r}")
        return StoredObject(info, info.size, info.size, iter(()), lambda: None)

    def _paths(self, prefix: str | None) -> Iterator[tuple[str, float]]:
        """(path, last modified) of every object under ``prefix`` (a path: whole segments)."""
        for chunk in obstore.list(self._store, prefix):
            for meta in chunk:
                yield meta["path"], meta["last_modified"].timestamp()

    def list(self, job_id: str, prefix: str = "") -> list[str]:
        check_job_id(job_id)
        check_prefix(prefix)
        start = len(job_id) + 1
        try:
            names = [path[start:] for path, _ in self._paths(job_id)]
        except (ObstoreError, OSError) as exc:
            raise self._failure("list", job_id, exc) from None
        return sorted(name for name in names if name.startswith(prefix) and is_name(name))

    def _delete(self, paths: Paths) -> None:
        for i in range(0, len(paths), 1000):  # DeleteObjects takes 1,000 keys at most
            obstore.delete(self._store, paths[i : i + 1000])

    def delete_job(self, job_id: str) -> int:
        check_job_id(job_id)
        try:
            paths = [path for path, _ in self._paths(job_id)]
            self._delete(paths)
        except (ObstoreError, OSError) as exc:
            raise self._failure("delete", job_id, exc) from None
        return len(paths)

    def presigned_url(self, job_id: str, name: str, expires_s: int) -> str | None:
        path = self._key(job_id, name)
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise ValueError(f"a presigned URL lives 1 s to 7 days, not {expires_s} s")
        try:
            return obstore.sign(self._store, "GET", path, timedelta(seconds=expires_s))
        except (ObstoreError, OSError) as exc:
            raise self._failure("sign", path, exc) from None

    def sweep(self, max_age_s: float, now: float | None = None) -> int:
        now = time.time() if now is None else now
        jobs: dict[str, tuple[Paths, float]] = {}
        try:
            for path, modified in self._paths(None):
                job_id = path.split("/", 1)[0]
                if not is_job_id(job_id):
                    continue
                paths, newest = jobs.get(job_id, ([], 0.0))
                paths.append(path)
                jobs[job_id] = (paths, max(newest, modified))
            old = [job_id for job_id, (_, newest) in jobs.items() if now - newest > max_age_s]
            self._delete([path for job_id in old for path in jobs[job_id][0]])
        except (ObstoreError, OSError) as exc:
            raise self._failure("sweep", self.prefix or "/", exc) from None
        if old:
            log.info("removed %d expired jobs from %s", len(old), self._where)
        return len(old)

    def check(self) -> None:
        try:
            obstore.list_with_delimiter(self._store, "store-check")  # one LIST of an empty prefix
        except (ObstoreError, OSError) as exc:
            raise self._failure("check", "store-check", exc) from None


# --- choosing the backend -------------------------------------------------------------------------------------


def parse_results_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` -> (bucket, prefix); ValueError for anything else."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment or "@" in parsed.netloc:
        raise ValueError(f"RESULTS_URL must look like s3://BUCKET/PREFIX, not {url!r}")
    prefix = parsed.path.strip("/")
    if ".." in prefix.split("/"):
        raise ValueError(f"RESULTS_URL's prefix may not contain '..': {url!r}")
    return parsed.netloc, prefix


def open_store(settings: Settings) -> ResultStore:
    """The store the settings name: `FolderStore` in ``RESULTS_DIR`` when ``RESULTS_URL`` is unset, else `S3Store`
    with the ``AWS_*`` settings (unset ones: what the client finds in the environment). Open one per process
    and share it: both backends are thread-safe."""
    if not settings.results_url:
        return FolderStore(settings.results_dir)
    bucket, prefix = parse_results_url(settings.results_url)
    secret = settings.aws_secret_access_key
    return S3Store(
        bucket,
        prefix,
        endpoint_url=settings.aws_endpoint_url,
        access_key_id=settings.aws_access_key_id,
        secret_access_key=secret.get_secret_value() if secret is not None else None,
        region=settings.aws_default_region,
    )
