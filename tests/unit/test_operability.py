"""The pure parts of the service's observability: remaining steps per operation (checked against the models' own
loops), the job meter, the step-time mean, the JSON log format, request ids and rejection reasons."""

from __future__ import annotations

import inspect
import io
import json
import logging
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest

from app.metrics import ApiMetrics, JobMeter
from app.observability import reject_reason, valid_request_id
from core import logs
from core.gauges import merge_step_times
from core.operations import (
    OPERATIONS,
    SAMPLER_EVALS,
    UPSCALE_STEPS,
    cost_key,
    estimated_steps,
    remaining_steps,
    step_weight,
)
from core.record import iso
from core.settings import Settings
from workers.telemetry import StepTimes


def _params(kind: str, **given: object) -> dict:
    """The parameters as the API records them (validated, defaults filled in)."""
    model = OPERATIONS[kind].params.bounded(Settings(_env_file=None))
    required = {
        "if_sample": {"prompt": "a"},
        "if_anagram": {"prompts": ["a", "b"]},
        "if_hybrid": {"prompt_low": "a", "prompt_high": "b"},
    }.get(kind, {})
    return model.model_validate(required | given).model_dump(mode="json")


def test_the_constants_agree_with_the_models() -> None:
    from models.diffusion import ops
    from models.flow.sampling import EVALS_PER_STEP

    assert inspect.signature(ops.upscale).parameters["steps"].default == UPSCALE_STEPS
    assert SAMPLER_EVALS == EVALS_PER_STEP


def test_steps_of_each_operation_are_what_its_loop_reports() -> None:
    from models.diffusion.schedule import DDPMSchedule, cosine_alphas_cumprod, strided_timesteps

    timesteps = list(strided_timesteps(DDPMSchedule(cosine_alphas_cumprod(1000))))  # 990, 960, ..., 0
    assert len(timesteps) == 34
    for kind in ("if_sample", "if_inpaint", "if_anagram", "if_hybrid"):
        assert estimated_steps(kind, _params(kind)) == 34
        assert estimated_steps(kind, _params(kind, upscale=True)) == 34 + UPSCALE_STEPS
    for i_start in (0, 10, 33):
        # the loop's progress total: len(timesteps) - i_start
        assert estimated_steps("if_sdedit", _params("if_sdedit", i_start=i_start)) == len(timesteps) - i_start
    for t in (0, 1, 30, 31, 500, 999):
        # ops.denoise's iterative loop: t, then the strided timesteps below t
        expected = 1 + len([s for s in timesteps if s < t])
        assert estimated_steps("if_denoise", _params("if_denoise", t=t, method="iterative")) == expected
    assert estimated_steps("if_denoise", _params("if_denoise", method="one_step")) == 1
    assert estimated_steps("if_denoise", _params("if_denoise", method="blur")) == 1
    assert estimated_steps("mnist_sample", _params("mnist_sample", digit=7)) == 1  # the default: 1 midpoint step
    assert estimated_steps("mnist_sample", _params("mnist_sample")) == 3
    assert estimated_steps("mnist_sample", _params("mnist_sample", steps=40, sampler="euler")) == 40
    assert estimated_steps("nonsense", {}) == 0


def test_remaining_steps_follow_the_progress_and_the_stages() -> None:
    p = _params("if_sample", upscale=True)
    assert remaining_steps("if_sample", p, None) == 34 + 50
    assert remaining_steps("if_sample", p, {"step": 4, "total": 34, "stage": "I"}) == 30 + 50
    assert remaining_steps("if_sample", p, {"step": 40, "total": 50, "stage": "II"}) == 10
    m = _params("mnist_sample", digit=1, steps=20)
    assert remaining_steps("mnist_sample", m, {"step": 5, "total": 20}) == 15
    assert remaining_steps("mnist_sample", m, {"step": 20, "total": 20}) == 0
    assert remaining_steps("mnist_sample", m, {"step": "x"}) == 20


def test_step_weight_and_cost_key() -> None:
    assert step_weight("mnist_sample", _params("mnist_sample", n=10)) == 10 * 2  # midpoint: 2 evaluations a step
    assert step_weight("mnist_sample", _params("mnist_sample", n=3, sampler="euler")) == 3
    assert step_weight("if_sample", _params("if_sample")) == 1
    assert cost_key("if_sample", _params("if_sample", upscale=True)) == "if_sample+upscale"
    assert cost_key("mnist_sample", _params("mnist_sample")) == "mnist_sample"


def test_step_times_are_an_exponential_mean_per_cost_key() -> None:
    steps = StepTimes(alpha=0.5)
    p = _params("mnist_sample", n=2, steps=10, sampler="euler")  # 20 weighted steps
    assert steps.job("mnist_sample", p, 2.0) == pytest.approx(0.1)
    steps.job("mnist_sample", p, 4.0)
    assert steps.snapshot() == {"mnist_sample": pytest.approx(0.15)}
    assert steps.job("mnist_sample", p, 0.0) is None
    assert merge_step_times([{"step_s": {"a": 1.0}}, {"step_s": {"a": 3.0, "b": 2.0}}, {}]) == {"a": 2.0, "b": 2.0}


def _body(status: str, queued: float, running: float | None) -> dict:
    """A done body: queued for ``queued`` s, then running for ``running`` s (None: it never started)."""
    created = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    started = created + timedelta(seconds=queued) if running is not None else None
    finished = (started + timedelta(seconds=running)) if started and running else created + timedelta(seconds=queued)
    return {
        "status": status,
        "created_at": iso(created),
        "started_at": iso(started) if started else None,
        "finished_at": iso(finished),
    }


def _value(metrics: ApiMetrics, name: str, labels: dict[str, str]) -> float:
    assert metrics.registry is not None
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_the_job_meter_counts_the_jobs_it_accepted_once() -> None:
    metrics = ApiMetrics()
    meter = JobMeter(metrics)
    meter.accepted("a", "mnist_sample", "alice")
    meter.accepted("b", "if_sample")
    meter.done("a", _body("succeeded", 0.5, 2.0))
    meter.done("a", _body("succeeded", 0.5, 2.0))  # a second done of the same job: not counted again
    meter.done("c", _body("failed", 1, 1))  # another process's job
    meter.done("b", _body("canceled", 3.0, None))
    jobs = "diffusion_jobs_total"
    alice = {"operation": "mnist_sample", "tenant": "alice"}
    other = {"operation": "if_sample", "tenant": "default"}
    assert _value(metrics, jobs, {**alice, "status": "succeeded"}) == 1
    assert _value(metrics, jobs, {**other, "status": "canceled"}) == 1
    assert _value(metrics, jobs, {**alice, "status": "failed"}) == 0
    assert _value(metrics, "diffusion_job_seconds_sum", alice) == pytest.approx(2.5)
    assert _value(metrics, "diffusion_job_queued_seconds_sum", alice) == pytest.approx(0.5)
    assert _value(metrics, "diffusion_job_running_seconds_sum", alice) == pytest.approx(2.0)
    # a job canceled while queued: queued until its end, never running
    assert _value(metrics, "diffusion_job_queued_seconds_sum", other) == pytest.approx(3.0)
    assert _value(metrics, "diffusion_job_running_seconds_count", other) == 0
    assert len(meter) == 0


def test_the_job_meter_is_bounded() -> None:
    meter = JobMeter(ApiMetrics(), max_jobs=3)
    for i in range(5):
        meter.accepted(str(i), "mnist_sample")
    assert len(meter) == 3
    old = JobMeter(ApiMetrics(), max_age_s=0.0)
    old.accepted("x", "mnist_sample")
    old.accepted("y", "mnist_sample")
    assert len(old) <= 1


@pytest.fixture
def restored_logging():
    """``logs.configure`` changes process-wide state: put it back after the test."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.excepthook, threading.excepthook)
    routed = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate) for name in logs.ROUTED}
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    sys.excepthook, threading.excepthook = saved[2], saved[3]
    for name, (handlers, propagate) in routed.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate
    logging.captureWarnings(False)


def test_json_lines_carry_the_job_id_from_the_context_or_the_call(restored_logging) -> None:
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out)
    log = logging.getLogger("test.observability")
    try:
        with logs.job_context("job-1", "req-1"):
            log.info("inside %s", "the job")
        log.warning("about another", extra=logs.about("job-2"))
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1", "GET", "/x", "1.1", 200)
    finally:
        logging.getLogger().handlers[-1].flush()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (
        lines[0]["message"] == "inside the job" and lines[0]["job_id"] == "job-1" and lines[0]["request_id"] == "req-1"
    )
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "test.observability" and lines[0]["time"].endswith("Z")
    assert lines[1]["job_id"] == "job-2" and "request_id" not in lines[1]
    assert lines[2]["level"] == "ERROR" and "ValueError: boom" in lines[2]["exception"] and "job_id" not in lines[2]
    assert lines[3]["logger"] == "uvicorn.access" and lines[3]["message"] == '127.0.0.1 - "GET /x HTTP/1.1" 200'


def test_request_ids_and_reject_reasons() -> None:
    assert valid_request_id("abc-123_X.y:z") and valid_request_id("x" * 200)
    assert not valid_request_id("") and not valid_request_id("x" * 201)
    assert not valid_request_id("a\nb") and not valid_request_id("é") and not valid_request_id(" pad")
    assert reject_reason(503, "queue-full") == "queue_full"
    assert reject_reason(503, "operation-unavailable") == "unavailable"
    assert reject_reason(401, "unauthorized") == "unauthorized"
    assert reject_reason(413, None) == reject_reason(415, None) == "bad_input"
    assert reject_reason(422, "invalid-parameter") == "invalid"
    assert reject_reason(404, None) is None
