"""Typed dependencies shared by the routers.

Every dependency here is ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
per dependency per request, which costs more than these functions do (they do no I/O).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from redis import Redis

from app.imagecheck import DecoderPool
from app.jobs import QueueDepth
from app.problems import Problem
from core.lifecycle import AsyncRecords, Lifecycle
from core.settings import Settings
from core.store import ResultStore
from core.tenants import DEFAULT_TENANT, Tenant, Tenants


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


@dataclass(frozen=True)
class Caller:
    """Who sent a request: its tenant, and whether it may see only that tenant's jobs (``scoped``: with a tenants
    file). Without a tenants file every caller is the ``default`` tenant and sees every job, as before."""

    tenant: Tenant
    scoped: bool = False

    @property
    def owner(self) -> str | None:
        """The tenant a job must belong to for this caller to see it; None: any job."""
        return self.tenant.name if self.scoped else None


def _bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def require_api_key(
    request: Request,
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Caller:
    """Who is calling. With TENANTS_FILE: every protected route needs a tenant's key, ``X-API-Key: <key>`` or
    ``Authorization: Bearer <key>``, found by its SHA-256 (``core.tenants``); else 401. Without it: when API_KEY is
    set, the same headers must carry it (constant-time comparison). Nothing here logs a key."""
    tenants: Tenants = request.app.state.tenants
    given = x_api_key if x_api_key is not None else _bearer(authorization)
    if tenants.from_file:
        tenant = tenants.identify(given)
        if tenant is None:
            raise _unauthorized()
        request.scope.setdefault("state", {})["tenant"] = tenant.name  # the metrics label it, never the key
        return Caller(tenant, scoped=True)
    if settings.api_key and (given is None or not hmac.compare_digest(given.encode(), settings.api_key.encode())):
        raise _unauthorized()
    request.scope.setdefault("state", {})["tenant"] = DEFAULT_TENANT
    return Caller(tenants.get(DEFAULT_TENANT))


def _unauthorized() -> Problem:
    return Problem(
        401,
        "unauthorized",
        "missing or wrong API key (X-API-Key header, or Authorization: Bearer)",
        headers={"WWW-Authenticate": "ApiKey"},
    )


CallerDep = Annotated[Caller, Depends(require_api_key)]
