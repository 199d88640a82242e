"""Liveness and readiness."""

from __future__ import annotations

import json

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker

from app.deps import QueueDep, RedisDep
from app.jobs import operation_states
from app.schemas import Health, Readiness, WorkerInfo
from core.protocol import capabilities_key

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The API process is up")
def healthz() -> Health:
    return Health(status="ok")


def live_workers(redis: Redis, queue: Queue) -> list[WorkerInfo]:
    """Workers registered in RQ (their keys expire without heartbeats) with what each has loaded."""
    caps = {k.decode() if isinstance(k, bytes) else k: v for k, v in redis.hgetall(capabilities_key()).items()}
    out = []
    for worker in Worker.all(queue=queue):
        info = json.loads(caps.get(worker.name, "{}"))
        out.append(
            WorkerInfo(
                name=worker.name,
                state=str(worker.get_state()),
                device=info.get("device"),
                models=info.get("models", {}),
                operations=info.get("operations", []),
            )
        )
    return out


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Redis reachable and at least one live worker; the state of every operation",
    responses={503: {"model": Readiness, "description": "not ready (no Redis or no worker)"}},
)
def readyz(redis: RedisDep, queue: QueueDep) -> JSONResponse:
    try:
        redis.ping()
        workers = live_workers(redis, queue)
        _, states = operation_states(redis, queue)
        depth = queue.count
    except RedisError as exc:
        body = Readiness(ready=False, redis=False, detail=f"Redis unreachable: {exc}")
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    ready = bool(workers)
    body = Readiness(
        ready=ready,
        redis=True,
        workers=workers,
        operations=sorted(name for name, state in states.items() if state.available),
        operation_states=states,
        queue_depth=depth,
        detail=None if ready else "no live worker is registered",
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)
