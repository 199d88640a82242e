"""Result writing of one job: its uploads in, its files, previews and trajectory out, and the manifest last.

Every file goes through the worker's result store (``store``: ``put(job_id, name, data)`` and
``get(job_id, name)``); nothing here builds a path. The manifest is written last: it is the commit point, so a
job whose manifest exists has every file it lists. A write that fails because storage is unreachable is retried
with backoff for at most ``write_timeout_s``; then the job fails with the code ``store-unavailable``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import orjson
import stamina
import torch
import torch.nn.functional as F

from core import tracing
from core.protocol import JobError
from core.store import StoreNotFound
from models import imageio

log = logging.getLogger(__name__)

TRAJECTORY_MAX_FRAMES = 100  # evenly spaced, first and last included
MANIFEST = "manifest.json"


class Files(Protocol):
    """What result writing needs of a store (``core.store.ResultStore`` has more)."""

    def put(self, job_id: str, name: str, data: bytes, content_type: str | None = None) -> None: ...

    def get(self, job_id: str, name: str) -> bytes: ...

    def delete_job(self, job_id: str) -> int: ...


class ResultWriter:
    """The files of one job (see the module docstring).

    Args:
        job_id: the job.
        store: where files go.
        retry_on: the exceptions that mean "storage unreachable" (retried with backoff).
        write_timeout_s: how long a write is retried before the job fails.
    """

    def __init__(
        self,
        job_id: str,
        store: Files,
        *,
        retry_on: tuple[type[Exception], ...] = (OSError,),
        write_timeout_s: float = 30.0,
    ) -> None:
        self.job_id = job_id
        self.store = store
        self.retry_on = retry_on
        self.write_timeout_s = write_timeout_s
        self.files: dict[str, dict[str, Any]] = {}
        self.main: str | None = None

    def _put(self, name: str, data: bytes, content_type: str) -> None:
        with tracing.span("store.write", attributes={"file": name, "bytes": len(data)}):
            self._put_retried(name, data, content_type)

    def _put_retried(self, name: str, data: bytes, content_type: str) -> None:
        try:  # the common case first, without the retry machinery (it costs more than a small write)
            self.store.put(self.job_id, name, data, content_type)
            return
        except self.retry_on as exc:
            log.warning("job %s: writing %s failed (%s); retrying with backoff", self.job_id, name, exc)
        try:
            for attempt in stamina.retry_context(
                on=self.retry_on, attempts=None, timeout=self.write_timeout_s, wait_initial=0.2, wait_max=5.0
            ):
                with attempt:
                    self.store.put(self.job_id, name, data, content_type)
        except self.retry_on as exc:
            log.error("job %s: could not write %s for %.0f s: %s", self.job_id, name, self.write_timeout_s, exc)
            raise JobError(
                "store-unavailable",
                f"the results could not be written to storage within {self.write_timeout_s:.0f} s; retry the job",
            ) from exc

    def input_bytes(self, name: str) -> bytes:
        """An upload the API stored with the job (``inputs/<name>``)."""
        try:
            return self.store.get(self.job_id, f"inputs/{name}")
        except StoreNotFound as exc:
            raise JobError("invalid-request", f"the upload {name!r} is no longer stored (deleted or expired)") from exc
        except self.retry_on as exc:
            log.warning("job %s: reading the upload %s failed (%s); retrying with backoff", self.job_id, name, exc)
        try:
            for attempt in stamina.retry_context(
                on=self.retry_on, attempts=None, timeout=self.write_timeout_s, wait_initial=0.2, wait_max=5.0
            ):
                with attempt:
                    return self.store.get(self.job_id, f"inputs/{name}")
        except self.retry_on as exc:
            raise JobError("store-unavailable", f"the upload {name!r} could not be read from storage") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def save(self, name: str, data: bytes, *, main: bool = False, **info: Any) -> None:
        """Write one result file (listed in the manifest); ``main`` makes it ``GET /jobs/{id}/result``."""
        media = "image/gif" if name.endswith(".gif") else "image/png"
        self._put(name, data, media)
        self.files[name] = {"bytes": len(data), **info}
        if main:
            self.main = name

    def put_preview(self, name: str, data: bytes) -> None:
        """A preview PNG (``previews/<name>``), written once, not retried (the next one supersedes it)."""
        self.store.put(self.job_id, f"previews/{name}", data, "image/png")

    def write_trajectory(self, frames: list[Any]) -> None:
        """``trajectory.gif`` and ``trajectory.png`` (a strip of at most 10) from uint8 (C, H, W) frames; frames of
        a smaller stage are upscaled (nearest) to the largest, so stage I and stage II play as one film."""
        from workers.progress import PREVIEW_MIN_SIDE

        if not frames:
            return
        if len(frames) > TRAJECTORY_MAX_FRAMES:
            picks = torch.linspace(0, len(frames) - 1, TRAJECTORY_MAX_FRAMES).round().long().tolist()
            frames = [frames[i] for i in picks]
        height, width = max((f.shape[-2], f.shape[-1]) for f in frames)
        frames = [
            f if f.shape[-2:] == (height, width) else F.interpolate(f[None], size=(height, width), mode="nearest")[0]
            for f in frames
        ]
        scale = max(1, PREVIEW_MIN_SIDE // max(height, width))
        u8 = (0.0, 255.0)
        self.save("trajectory.gif", imageio.gif_bytes(frames, value_range=u8, scale=scale), frames=len(frames))
        self.save("trajectory.png", imageio.png_bytes(imageio.strip(frames), value_range=u8, scale=scale))

    def commit(self, manifest: dict[str, Any]) -> list[str]:
        """Write the manifest (the commit point); returns every result name, the manifest last."""
        data = orjson.dumps(
            manifest, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
        )
        self._put(MANIFEST, data, "application/json")
        return [*self.files, MANIFEST]
