"""Typed dependencies shared by the routers.

Every dependency here is ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
per dependency per request, which costs more than these functions do (they do no I/O).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request
from redis import Redis

from app.imagecheck import DecoderPool
from app.jobs import QueueDepth
from app.problems import Problem
from core.lifecycle import AsyncRecords, Lifecycle
from core.settings import Settings
from core.store import ResultStore


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with (``create_app``)."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_redis(request: Request) -> Redis:
    """The connection opened by the app's lifespan."""
    redis: Redis = request.app.state.redis
    return redis


RedisDep = Annotated[Redis, Depends(get_redis)]


async def get_lifecycle(request: Request) -> Lifecycle:
    """The job records and the queue (``core.lifecycle``), made once by the app's lifespan."""
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]


async def get_depth(request: Request) -> QueueDepth:
    depth: QueueDepth = request.app.state.depth
    return depth


DepthDep = Annotated[QueueDepth, Depends(get_depth)]


async def get_records(request: Request) -> AsyncRecords:
    """The asyncio reads of job records (polls, downloads), on the event hub's connection pool."""
    records: AsyncRecords = request.app.state.records
    return records


RecordsDep = Annotated[AsyncRecords, Depends(get_records)]


async def get_store(request: Request) -> ResultStore:
    """The result store (``core.store``: the results folder, or S3 with RESULTS_URL), opened by the lifespan."""
    store: ResultStore = request.app.state.store
    return store


StoreDep = Annotated[ResultStore, Depends(get_store)]


async def get_decoder(request: Request) -> DecoderPool:
    """The upload decoder processes started by the app's lifespan."""
    decoder: DecoderPool = request.app.state.decoder
    return decoder


DecoderDep = Annotated[DecoderPool, Depends(get_decoder)]

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="the same key with the same request returns the same job"),
]


async def require_api_key(
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """When API_KEY is set, every protected route needs the key: the header ``X-API-Key: <key>``, or
    ``Authorization: Bearer <key>`` (as the openai SDK and most HTTP clients send one). Constant-time check."""
    if not settings.api_key:
        return
    scheme, _, token = (authorization or "").strip().partition(" ")
    given = x_api_key if x_api_key is not None else (token.strip() if scheme.lower() == "bearer" else None)
    if given is None or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
        raise Problem(
            401,
            "unauthorized",
            "missing or wrong API key (X-API-Key header, or Authorization: Bearer)",
            headers={"WWW-Authenticate": "ApiKey"},
        )
