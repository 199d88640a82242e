"""The FastAPI application: `create_app()` wires routers, problem handlers and the Redis lifespan.

Run with ``uvicorn app.main:app`` (``make run`` does this). Importing this module must not
import torch; a unit test guards it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from redis import Redis
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app import openai_errors
from app.docs import install_docs
from app.events import EventHub
from app.imagecheck import DecoderPool
from app.jobs import QueueDepth
from app.metrics import CONTENT_TYPE, ApiMetrics, JobMeter, RedisGauges, process_exit, render
from app.observability import Observability
from app.oversize import find_oversized
from app.problems import Problem, install_problem_handlers, problem_response
from app.quotas import Quotas
from app.routers import events, health, jobs, openai, operations
from app.routers import webhooks as webhook_routes
from app.routers.studio import install_studio
from app.uploads import human_bytes
from app.webhooks import Deliverer
from core import logs, tracing
from core.gauges import GaugeReader
from core.lifecycle import AsyncRecords, Lifecycle, service_queue
from core.operations import OPERATIONS
from core.settings import Settings, get_settings
from core.store import open_store
from core.tenants import load_tenants

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
    tenants = load_tenants(settings.tenants_file)  # TenantsFileError: refuse to start on a bad file
    if tenants.from_file and settings.api_key:
        log.warning("TENANTS_FILE is set: API_KEY is ignored (every key is a tenant's)")
    metrics = ApiMetrics()
    meter = JobMeter(metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5, health_check_interval=30)
        app.state.queue = service_queue(settings.queue_name, app.state.redis)
        app.state.lifecycle = Lifecycle(
            app.state.redis,
            app.state.queue,
            result_ttl_s=settings.result_ttl_s,
            tombstone_ttl_s=settings.tombstone_ttl_s,
            tenants=tenants,
        )
        app.state.quotas = Quotas(settings.redis_url, tenants, settings.queue_name)
        app.state.depth = QueueDepth()
        app.state.store = open_store(settings)
        app.state.events = EventHub(
            settings,
            app.state.lifecycle,
            on_done=meter.done,
            on_listeners=metrics.listeners.inc,
            wants_done=meter.counts,
        )
        app.state.events.start()  # subscribed from the start: every done event reaches the job metrics
        app.state.records = AsyncRecords(app.state.events.aredis, app.state.lifecycle)
        app.state.gauges = RedisGauges(GaugeReader(app.state.lifecycle, default_step_s=settings.pending_step_s_default))
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
            process_exit()

    app = FastAPI(
        title="Diffusion inference service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.tenants = tenants
    app.state.metrics, app.state.meter, app.state.gauges = metrics, meter, None
    install_problem_handlers(app)
    _limit_body_size(app, settings)
    # outermost (added last): request ids and HTTP metrics for every answer, a 413 of BodySizeLimit included
    app.add_middleware(Observability, metrics=metrics, submit_paths={op.path for op in OPERATIONS.values()})

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        """Prometheus text format; like /healthz, no API key (keep it off the public network)."""
        return Response(render(metrics, app.state.gauges), media_type=CONTENT_TYPE)

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


#: Room in a request body for the form fields besides the uploads.
FORM_FIELDS_BYTES = 1024 * 1024


def _limit_body_size(app: FastAPI, settings: Settings) -> None:
    """Refuse a request body larger than two uploads plus form fields before it is parsed (413).

    A plain ASGI middleware (no ``BaseHTTPMiddleware``: that one costs a task per request, on every poll)."""
    limit = 2 * settings.max_upload_bytes + FORM_FIELDS_BYTES
    explain = (
        f"two uploads of at most {human_bytes(settings.max_upload_bytes)} each (MAX_UPLOAD_BYTES) "
        f"plus {human_bytes(FORM_FIELDS_BYTES)} for the other form fields"
    )
    app.add_middleware(BodySizeLimit, limit=limit, explain=explain, per_upload=settings.max_upload_bytes)


class BodySizeLimit:
    """413 problem+json for a declared ``content-length`` above ``limit`` (or a malformed one); ``explain``
    says what the limit is made of, for the message. For a multipart body it reads just enough to name the upload
    over ``per_upload`` bytes (``app.oversize``), as a per-upload 413 does."""

    def __init__(self, app: ASGIApp, limit: int, explain: str = "", per_upload: int | None = None) -> None:
        self.app, self.limit, self.explain, self.per_upload = app, limit, explain, per_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.limit):
                sent = f" ({human_bytes(int(length))})" if length.isdigit() else ""
                detail = f"the request body{sent} is over the {human_bytes(self.limit)} limit"
                problem = Problem(413, "request-too-large", f"{detail}: {self.explain}" if self.explain else detail)
                found = None
                if self.per_upload is not None and length.isdigit():
                    found = await find_oversized(headers.get("content-type", ""), receive, self.per_upload, self.limit)
                if found is not None:
                    reason = (
                        f"more than {human_bytes(self.per_upload or 0)}, the limit of one upload (MAX_UPLOAD_BYTES)"
                    )
                    problem = Problem(
                        413,
                        "upload-too-large",
                        f"{found.field}: {reason}; {detail}",
                        errors=[{"name": found.field, "in": "body", "reason": reason}],
                    )
                await problem_response(problem, Request(scope))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _configure_process(settings: Settings) -> None:
    """Logging (``LOG_FORMAT``; uvicorn's loggers included) and tracing of the API process: once, at import by
    uvicorn, before any request."""
    logs.configure(settings.log_level, settings.log_format)
    tracing.setup(settings.otel_exporter_otlp_endpoint, "diffusion-api")


_configure_process(get_settings())
app = create_app()
