"""Traces: one trace per job from the API's submission to the worker's done, with the SDK's in-memory exporter.

The API runs in-process (TestClient, its lifespan included) and the worker's loop in-process with a batcher (the
real forwards of two jobs shared); tracing is installed with an in-memory exporter, as ``setup`` would install
the OTLP one. A client's ``traceparent`` is honoured: its job's spans join the client's trace.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.main import create_app
from core import tracing
from core.settings import Settings
from tests.support import ROOT
from workers.batcher import Batcher
from workers.context import WorkerEnv
from workers.loop import WorkLoop
from workers.telemetry import WorkerTelemetry, model_namer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.uninstall()
    provider.shutdown()


def _trace(all_spans: tuple[ReadableSpan, ...], trace_id: int) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in all_spans:
        if span.context.trace_id == trace_id:
            out.setdefault(span.name, []).append(span)
    return out


def test_one_trace_per_job_spans_the_api_and_the_worker(
    spans: InMemorySpanExporter, settings: Settings, env: WorkerEnv
) -> None:
    telemetry = WorkerTelemetry()
    telemetry.forwards.names = model_namer({name: m.model for name, m in env.registry.models.items()})
    batcher = Batcher(max_rows=settings.max_batch_rows, meter=telemetry.forwards).start()
    env.batcher, env.telemetry = batcher, telemetry
    ids: list[str] = []
    try:
        with TestClient(create_app(settings)) as client:
            params = {"digit": 5, "n": 2, "steps": 4, "seed": 1}
            answer = client.post("/mnist/sample", params=params, headers={"traceparent": CLIENT_PARENT})
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
            answer = client.post("/mnist/sample", params=params | {"seed": 2})
            ids.append(answer.json()["id"])
            # both queued: the loop starts them in one round trip and their requests share the forwards
            WorkLoop(env, max_inflight=2, heartbeat_s=1, dead_after_s=3, maintenance_s=60, shutdown_s=5).run(burst=True)
            assert [client.get(f"/jobs/{i}").json()["status"] for i in ids] == ["succeeded", "succeeded"]
    finally:
        batcher.stop()
    finished = spans.get_finished_spans()
    jobs = [s for s in finished if s.name == "job"]
    assert sorted(str(s.attributes["job.id"]) for s in jobs) == sorted(ids)  # type: ignore[index]
    job_span: dict[str, Any] = {str(s.attributes["job.id"]): s for s in jobs}  # type: ignore[index]
    for i, job_id in enumerate(ids):
        trace_id = job_span[job_id].context.trace_id
        if i == 0:
            assert f"{trace_id:032x}" == CLIENT_TRACE  # the client's traceparent is honoured
        trace = _trace(finished, trace_id)
        assert {"submit", "enqueue", "job", "store.write", "finish"} <= set(trace), sorted(trace)
        assert len(trace["submit"]) == 1 and len(trace["job"]) == 1  # one job, one trace
        submit, enqueue, job = trace["submit"][0], trace["enqueue"][0], trace["job"][0]
        assert enqueue.parent is not None and enqueue.parent.span_id == submit.context.span_id
        assert job.parent is not None and job.parent.span_id == enqueue.context.span_id  # API -> worker
        for name in ("store.write", "finish"):
            assert all(s.parent is not None and s.parent.span_id == job.context.span_id for s in trace[name])
        assert {str(s.attributes["file"]) for s in trace["store.write"]} >= {"samples.png", "manifest.json"}  # type: ignore[index]
    # each batched forward is a span of its own, linked to every job in it; some held both jobs
    forwards = [s for s in finished if s.name == "forward"]
    assert forwards and all(s.parent is None for s in forwards)
    job_contexts = {job_span[i].context.span_id for i in ids}
    linked = [{link.context.span_id for link in s.links} for s in forwards]
    assert all(links <= job_contexts and links for links in linked)
    assert any(links == job_contexts for links in linked)
    assert {s.attributes["model"] for s in forwards} == {"mnist_class"}  # type: ignore[index]


def test_tracing_off_imports_no_sdk_and_records_nothing() -> None:
    """Unset, no span is made and neither process imports the trace SDK or an exporter (redis-py may import the
    SDK's metrics module by itself when the SDK is installed; that is not ours)."""
    code = (
        "import sys; import app.main, workers.loop, workers.batcher, workers.telemetry; from core import tracing; "
        "assert not tracing.active; "
        "bad = [m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter'))]; "
        "print(bad); assert not bad"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    with tracing.span("nothing") as span:
        assert span is None
    assert tracing.traceparent() is None and tracing.current() is None
