"""Response schemas shared by the routers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from core.protocol import JobState


class Progress(BaseModel):
    step: int = Field(description="sampling steps done")
    total: int = Field(description="sampling steps in all")
    stage: str | None = Field(None, description="for DeepFloyd jobs: 'I' (64x64) or 'II' (upscale)")


class WebhookState(BaseModel):
    """A job's webhook and the state of its `completed` delivery."""

    url: str
    events: list[str] = Field(description="what the webhook gets: start, progress, completed")
    state: str | None = Field(
        None, description="of the completed delivery: pending, retrying, delivered or failed; null before the job ends"
    )
    attempts: int = Field(0, description="attempts of the completed delivery so far")
    last_status: int | None = Field(None, description="the HTTP status of the last attempt (null: no answer)")
    last_error: str | None = Field(None, description="why the last attempt failed (a redirect says where to)")
    delivered_at: datetime | None = None


class JobBody(BaseModel):
    """One job as clients see it."""

    id: str
    kind: str
    status: JobState
    progress: Progress | None = None
    queue_position: int | None = Field(
        None,
        description="only while queued: the jobs admitted before it (0 = next), under the fair share between "
        "tenants and its tenant's priorities",
    )
    eta_s: float | None = Field(
        None,
        description="only while queued: the estimated seconds until it ends (the jobs ahead taken to cost what it "
        "costs, at the step time the workers measured, shared by the live workers)",
    )
    priority: str = Field("normal", description="the job's priority among its tenant's jobs: low, normal or high")
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    result_url: str | None = Field(None, description="the main PNG, once succeeded")
    results: dict[str, str] = Field(default_factory=dict, description="every result file by name")
    error: str | None = None
    cancel_requested: bool = False
    attempts: int = 1
    request_id: str | None = Field(
        None, description="the submission's X-Request-ID (the client's, or one the service made); in its log lines"
    )
    cached: bool = Field(
        False, description="answered from the result cache: no worker ran it; its files are `source`'s"
    )
    source: str | None = Field(None, description="for a cached job, the job whose results it shows")
    webhook: WebhookState | None = Field(None, description="the job's webhook, if it was submitted with one")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "id": "3f0c2a9b8e7d4c6a9b1e2f3a4b5c6d7e",
                    "kind": "mnist_sample",
                    "status": "succeeded",
                    "progress": {"step": 50, "total": 50},
                    "queue_position": None,
                    "created_at": "2026-11-26T10:00:00Z",
                    "started_at": "2026-11-26T10:00:00.120Z",
                    "finished_at": "2026-11-26T10:00:01.900Z",
                    "params": {"digit": 7, "n": 10, "steps": 1, "guidance": 1.5, "sampler": "midpoint", "seed": 42},
                    "result_url": "/jobs/3f0c2a9b8e7d4c6a9b1e2f3a4b5c6d7e/result",
                    "results": {
                        "samples.png": "/jobs/3f0c2a9b8e7d4c6a9b1e2f3a4b5c6d7e/files/samples.png",
                        "manifest.json": "/jobs/3f0c2a9b8e7d4c6a9b1e2f3a4b5c6d7e/files/manifest.json",
                    },
                    "error": None,
                    "cancel_requested": False,
                    "attempts": 1,
                    "request_id": "7d4c6a9b1e2f3a4b5c6d7e3f0c2a9b8e",
                }
            ]
        }
    }


class Health(BaseModel):
    status: str


class WorkerInfo(BaseModel):
    name: str
    state: str
    device: str | None = None
    models: dict[str, Any] = Field(default_factory=dict)
    operations: list[str] = Field(default_factory=list)


class OperationState(BaseModel):
    """Whether live workers can serve an operation, and why not."""

    available: bool
    workers: int = Field(0, description="live workers that serve it")
    reason: str | None = Field(None, description="why no live worker serves it (a model failed to load, ...)")


class Readiness(BaseModel):
    ready: bool
    redis: bool
    store: bool | None = Field(
        None, description="whether the result store (RESULTS_DIR or RESULTS_URL) answers; downloads need it"
    )
    workers: list[WorkerInfo] = Field(default_factory=list)
    operations: list[str] = Field(default_factory=list, description="what at least one live worker can serve")
    operation_states: dict[str, OperationState] = Field(
        default_factory=dict, description="every operation (and if_upscale) with its state and, if unavailable, why"
    )
    queue_depth: int | None = None
    detail: str | None = None
