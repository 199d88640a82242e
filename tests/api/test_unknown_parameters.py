"""Unknown query parameters and form fields answer 422 naming them, on every operation (issue 24, item 7).

The known names are read from each route's declared parameters (``app.parameters``): these tests check that
they are exactly the operation's model fields plus its uploads, and that a parameter declared later in a
route's dependencies (a shared model of job options, say) is accepted by that declaration alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, Query
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel
from redis import Redis
from rq import Queue

from app.main import create_app
from app.parameters import UnknownParameters, route_parameters
from app.problems import install_problem_handlers, invalid_params
from app.routers import operations
from core.operations import OPERATIONS, MnistSample
from core.settings import Settings
from tests.images import gradient


@pytest.fixture
def settings(redis_server, tmp_path) -> Settings:
    return Settings(redis_url=redis_server.url, queue_name=f"unknown-{uuid.uuid4().hex[:8]}", results_dir=tmp_path)


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def _queued(settings: Settings) -> int:
    return Queue(settings.queue_name, connection=Redis.from_url(settings.redis_url)).count


def _errors(r) -> list[dict[str, str]]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == "urn:problem:invalid-parameter"
    for error in body["errors"]:
        assert f"{error['name']}: {error['reason']}" in body["detail"]
    return body["errors"]


def _valid_request(op) -> dict:
    """A request to ``op`` that it accepts (202), as keyword arguments of ``TestClient.post``."""
    fields = {
        "mnist_sample": {"digit": "3"},
        "if_sample": {"prompt": "a red panda"},
        "if_anagram": {"prompts": ["a campfire", "an old man"]},
        "if_hybrid": {"prompt_low": "a skull", "prompt_high": "waterfalls"},
    }.get(op.name, {})
    if op.transport == "query":
        return {"params": fields}
    files = {u.name: (f"{u.name}.png", gradient(), "image/png") for u in op.uploads}
    return {"data": fields, "files": files or None}


def test_dgit_is_422_naming_it_with_the_closest_name(client, settings) -> None:
    errors = _errors(client.post("/mnist/sample?dgit=3"))
    assert errors == [{"name": "dgit", "in": "query", "reason": "unknown parameter; did you mean digit?"}]
    assert _queued(settings) == 0  # nothing ran with the default instead


def test_unknown_names_come_with_the_other_errors_once_each(client) -> None:
    errors = _errors(client.post("/mnist/sample?dgit=3&dgit=4&n=0&colour=red"))
    assert [(e["name"], e["in"]) for e in errors] == [("dgit", "query"), ("colour", "query"), ("n", "query")]
    # no close name: the reason lists what the operation takes
    assert errors[1]["reason"] == (
        "unknown parameter (this operation takes: cache, digit, guidance, n, previews, priority, sampler, seed, steps, "
        "trajectory, webhook, webhook_events)"
    )
    assert errors[2]["reason"] == "must be at least 1"


def test_a_parameter_in_the_wrong_place_says_where_it_goes(client) -> None:
    # a form field sent to the query operation (curl -d digit=3), and a query parameter to a form operation
    errors = _errors(client.post("/mnist/sample", data={"digit": "3"}))
    assert errors == [
        {"name": "digit", "in": "body", "reason": "unknown parameter in the form body; send it in the query string"}
    ]
    errors = _errors(client.post("/sample?prompt=a", data={"prompt": "b"}))
    assert errors == [
        {
            "name": "prompt",
            "in": "query",
            "reason": "unknown parameter in the query string; send it as a form field (multipart/form-data)",
        }
    ]


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_every_operation_refuses_an_unknown_parameter(client, settings, name: str) -> None:
    op = OPERATIONS[name]
    request = _valid_request(op)
    if op.transport == "query":
        request["params"] = {**request["params"], "sede": "1"}
    else:
        request["data"] = {**request["data"], "sede": "1"}
    errors = _errors(client.post(op.path, **request))
    assert errors == [
        {
            "name": "sede",
            "in": "query" if op.transport == "query" else "body",
            "reason": "unknown parameter; did you mean seed?",
        }
    ]
    # misspelled upload names are caught too, next to the upload they leave missing
    for upload in op.uploads:
        files = {u.name: (f"{u.name}.png", gradient(), "image/png") for u in op.uploads if u is not upload}
        files[upload.name + "s"] = ("x.png", gradient(), "image/png")
        errors = _errors(client.post(op.path, data=request["data"], files=files))
        reasons = {e["name"]: e["reason"] for e in errors}
        assert reasons[upload.name + "s"] == f"unknown parameter; did you mean {upload.name}?"
        assert reasons[upload.name] == "required (a PNG, JPEG or WebP file)"
    assert _queued(settings) == 0
    assert client.post(op.path, **_valid_request(op)).status_code == 202


def test_the_known_names_are_the_model_fields_and_the_uploads(settings) -> None:
    routes = {r.name: r for r in operations.router(settings).routes if isinstance(r, APIRoute)}
    for op in OPERATIONS.values():
        known = route_parameters(routes[op.name])
        fields = set(op.params.model_fields)
        if op.transport == "query":
            assert (known.query, known.form) == (fields, set())
        else:
            assert (known.query, known.form) == (set(), fields | {u.name for u in op.uploads})
        assert known.files == {u.name for u in op.uploads}
    # the models stay lenient for the worker, which validates the dumped JSON of older and newer APIs again
    assert MnistSample.model_validate({"digit": 3, "a_field_of_another_version": 1}).digit == 3


class JobOptions(BaseModel):
    """Stands for options every operation may take later (webhook, priority, ...)."""

    priority: int = 0


def job_options(opts: Annotated[JobOptions, Query()]) -> JobOptions:
    return opts


def test_a_parameter_declared_in_a_dependency_is_accepted_by_that_alone() -> None:
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/op")
    def op(digit: int, unknown: UnknownParameters, opts: Annotated[JobOptions, Depends(job_options)]) -> dict[str, int]:
        if unknown:
            raise invalid_params(unknown)
        return {"digit": digit, "priority": opts.priority}

    with TestClient(app) as c:
        assert c.post("/op?digit=3&priority=2").json() == {"digit": 3, "priority": 2}
        errors = _errors(c.post("/op?digit=3&priorty=2"))
        assert errors == [{"name": "priorty", "in": "query", "reason": "unknown parameter; did you mean priority?"}]
