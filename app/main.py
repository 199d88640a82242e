"""The FastAPI application: `create_app()` wires routers, problem handlers and the Redis lifespan.

Run with ``uvicorn app.main:app`` (``make run`` does this). Importing this module must not
import torch; a unit test guards it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from redis import Redis
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app import openai_errors
from app.docs import install_docs
from app.events import EventHub
from app.imagecheck import DecoderPool
from app.jobs import QueueDepth
from app.problems import Problem, install_problem_handlers, problem_response
from app.routers import events, health, jobs, openai, operations
from app.routers import webhooks as webhook_routes
from app.routers.studio import install_studio
from app.webhooks import Deliverer
from core.lifecycle import Lifecycle, service_queue
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

DESCRIPTION = """
Diffusion-based image editing (DeepFloyd IF) and MNIST flow-matching generation.

Every generating endpoint answers **202 Accepted** with a `Location: /jobs/{id}` header and the job
body; poll `GET /jobs/{id}` until `status` is `succeeded`, `failed` or `canceled` (or follow
`GET /jobs/{id}/events`, a stream of Server-Sent Events), then download `GET /jobs/{id}/result`.
Errors are RFC 9457 `application/problem+json`. A browser studio for every operation is at `/`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5, health_check_interval=30)
        app.state.queue = service_queue(settings.queue_name, app.state.redis)
        app.state.lifecycle = Lifecycle(
            app.state.redis,
            app.state.queue,
            result_ttl_s=settings.result_ttl_s,
            tombstone_ttl_s=settings.tombstone_ttl_s,
        )
        app.state.depth = QueueDepth()
        app.state.events = EventHub(settings, app.state.lifecycle)
        settings.results_dir.mkdir(parents=True, exist_ok=True)
        app.state.decoder = DecoderPool()
        await run_in_threadpool(app.state.decoder.warm_up)
        app.state.webhooks = Deliverer(settings)  # sends the webhook deliveries the jobs' transitions queue
        app.state.webhooks.start()
        try:
            yield
        finally:
            await app.state.webhooks.close()
            await app.state.events.close()
            await run_in_threadpool(app.state.decoder.close)
            app.state.redis.close()

    app = FastAPI(
        title="Diffusion inference service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    install_problem_handlers(app)
    _limit_body_size(app, settings)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(webhook_routes.router)
    app.include_router(operations.router(settings))
    app.include_router(openai.router(settings))
    openai_errors.install(app)  # /v1 answers errors in OpenAI's shape (after the problem handlers and middleware)
    install_docs(app)
    install_studio(app)
    return app


def _limit_body_size(app: FastAPI, settings: Settings) -> None:
    """Refuse a request body larger than two uploads plus form fields before it is parsed (413).

    A plain ASGI middleware (no ``BaseHTTPMiddleware``: that one costs a task per request, on every poll)."""
    limit = 2 * settings.max_upload_bytes + 1024 * 1024
    app.add_middleware(BodySizeLimit, limit=limit)


class BodySizeLimit:
    """413 problem+json for a declared ``content-length`` above ``limit`` (or a malformed one)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = Headers(scope=scope).get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.limit):
                problem = Problem(413, "request-too-large", f"the request body is larger than {self.limit} bytes")
                await problem_response(problem, Request(scope))(scope, receive, send)
                return
        await self.app(scope, receive, send)


app = create_app()
