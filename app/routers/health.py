"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from app.deps import LifecycleDep, StoreDep
from app.jobs import operation_states
from app.schemas import Health, Readiness, WorkerInfo
from core.store import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The API process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Redis reachable and at least one live worker; the state of every operation",
    responses={503: {"model": Readiness, "description": "not ready (no Redis or no worker)"}},
)
def readyz(lifecycle: LifecycleDep, store: StoreDep) -> JSONResponse:
    try:
        live, states, infos = operation_states(lifecycle)
        depth = lifecycle.depth()
        workers = [
            WorkerInfo(
                name=name,
                state=str(infos.get(name, {}).get("state", "idle")),
                device=infos.get(name, {}).get("device"),
                models=infos.get(name, {}).get("models", {}),
                operations=infos.get(name, {}).get("operations", []),
            )
            for name in live
        ]
    except RedisError as exc:
        body = Readiness(ready=False, redis=False, detail=f"Redis unreachable: {exc}")
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    try:
        store.check()
        store_ok, store_detail = True, None
    except StoreUnavailable as exc:  # downloads answer 503 meanwhile; jobs still queue and run
        store_ok, store_detail = False, f"the result store is unreachable: {exc}"
    ready = bool(workers)
    body = Readiness(
        ready=ready,
        redis=True,
        store=store_ok,
        workers=workers,
        operations=sorted(name for name, state in states.items() if state.available),
        operation_states=states,
        queue_depth=depth,
        detail="; ".join(d for d in ("" if ready else "no live worker is registered", store_detail or "") if d) or None,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)
