"""Writes postman/collection.json (Postman v2.1) and postman/environment.json.

Run `python postman/build_collection.py` after changing an endpoint; a unit test checks that the
committed JSON matches this file. Every operation is a folder of three requests: submit (202,
Location, job body), poll (repeats itself until the job is terminal; expects `succeeded`) and
download (200 image/png). A "Webhook" folder submits a job with a webhook (to `{{webhookUrl}}`) and asks for
its redelivery; an "OpenAI Images API" folder calls the /v1 routes as the openai SDK does. An "Errors" folder
checks problem+json answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TERMINAL_POLLS = 1200  # x 100 ms


def _script(lines: list[str]) -> list[dict[str, Any]]:
    return [{"listen": "test", "script": {"type": "text/javascript", "exec": lines}}]


def _url(path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
    raw = "{{baseUrl}}" + path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    url: dict[str, Any] = {"raw": raw, "host": ["{{baseUrl}}"], "path": [p for p in path.split("/") if p]}
    if query:
        url["query"] = [{"key": k, "value": v} for k, v in query.items()]
    return url


def _form(fields: list[tuple[str, str]], files: dict[str, str]) -> dict[str, Any]:
    data = [{"key": k, "value": v, "type": "text"} for k, v in fields]
    data += [{"key": k, "src": src, "type": "file"} for k, src in files.items()]
    return {"mode": "formdata", "formdata": data}


def _headers() -> list[dict[str, str]]:
    return [{"key": "X-API-Key", "value": "{{apiKey}}", "type": "text"}]


def job_folder(
    name: str,
    method_path: str,
    *,
    query: dict[str, str] | None = None,
    fields: list[tuple[str, str]] | None = None,
    files: dict[str, str] | None = None,
    description: str,
) -> dict[str, Any]:
    submit: dict[str, Any] = {
        "method": "POST",
        "header": _headers(),
        "url": _url(method_path, query),
        "description": description,
    }
    if fields is not None or files:
        submit["body"] = _form(fields or [], files or {})
    poll_name = f"{name}: poll"
    return {
        "name": name,
        "item": [
            {
                "name": f"{name}: submit",
                "request": submit,
                "event": _script(
                    [
                        "pm.test('202 Accepted with a Location header', () => {",
                        "  pm.response.to.have.status(202);",
                        "  pm.expect(pm.response.headers.get('Content-Type')).to.include('application/json');",
                        "  pm.expect(pm.response.headers.get('Location')).to.eql('/jobs/' + pm.response.json().id);",
                        "});",
                        "pm.test('job body', () => {",
                        "  const body = pm.response.json();",
                        "  pm.expect(['queued', 'running', 'succeeded']).to.include(body.status);",
                        "  pm.expect(body.id).to.match(/^[0-9a-f]{32}$/);",
                        "});",
                        "pm.environment.set('jobId', pm.response.json().id);",
                        "pm.environment.set('polls', 0);",
                    ]
                ),
            },
            {
                "name": poll_name,
                "request": {"method": "GET", "header": _headers(), "url": _url("/jobs/{{jobId}}")},
                "event": _script(
                    [
                        "const body = pm.response.json();",
                        "pm.test('poll answers 200 JSON', () => {",
                        "  pm.response.to.have.status(200);",
                        "  pm.expect(pm.response.headers.get('Content-Type')).to.include('application/json');",
                        "});",
                        "const polls = Number(pm.environment.get('polls') || 0);",
                        f"if (['queued', 'running'].includes(body.status) && polls < {TERMINAL_POLLS}) {{",
                        "  pm.environment.set('polls', polls + 1);",
                        f"  postman.setNextRequest('{poll_name}');",
                        "  setTimeout(() => {}, 100);",
                        "} else {",
                        "  pm.test('job succeeded', () => pm.expect(body.status, body.error).to.eql('succeeded'));",
                        "  pm.test('result URLs listed', () => pm.expect(body.result_url).to.eql('/jobs/' + body.id + '/result'));",
                        "}",
                    ]
                ),
            },
            {
                "name": f"{name}: download",
                "request": {"method": "GET", "header": _headers(), "url": _url("/jobs/{{jobId}}/result")},
                "event": _script(
                    [
                        "pm.test('200 image/png', () => {",
                        "  pm.response.to.have.status(200);",
                        "  pm.expect(pm.response.headers.get('Content-Type')).to.eql('image/png');",
                        "  pm.expect(pm.response.stream.slice(1, 4).toString()).to.eql('PNG');",
                        "});",
                    ]
                ),
            },
        ],
    }


def events_folder() -> dict[str, Any]:
    """A job with previews and a trajectory, then its event stream (replayed in full once the job is done,
    ending with its ``done`` event) and one preview it announced."""
    folder = job_folder(
        "Events and previews",
        "/mnist/sample",
        query={"digit": "4", "n": "4", "steps": "20", "seed": "3", "previews": "true", "trajectory": "true"},
        description="a job with previews (every PREVIEW_EVERY steps) and trajectory.gif / trajectory.png",
    )
    folder["item"].append(
        {
            "name": "Events and previews: event stream",
            "request": {"method": "GET", "header": _headers(), "url": _url("/jobs/{{jobId}}/events")},
            "event": _script(
                [
                    "pm.test('200 text/event-stream ending with done', () => {",
                    "  pm.response.to.have.status(200);",
                    "  pm.expect(pm.response.headers.get('Content-Type')).to.include('text/event-stream');",
                    "  const text = pm.response.text();",
                    "  pm.expect(text).to.include('event: status');",
                    "  pm.expect(text).to.include('event: progress');",
                    "  const done = text.split('event: done')[1];",
                    '  pm.expect(done).to.include(\'"status":"succeeded"\');',
                    "  pm.expect(done).to.include('trajectory.gif');",
                    "});",
                    'const previews = [...pm.response.text().matchAll(/"name":"(\\d+\\.png)"/g)];',
                    "pm.test('previews announced', () => pm.expect(previews.length).to.be.above(0));",
                    "if (previews.length) pm.environment.set('previewName', previews[previews.length - 1][1]);",
                ]
            ),
        }
    )
    folder["item"].append(
        {
            "name": "Events and previews: preview",
            "request": {
                "method": "GET",
                "header": _headers(),
                "url": _url("/jobs/{{jobId}}/previews/{{previewName}}"),
            },
            "event": _script(
                [
                    "pm.test('200 image/png', () => {",
                    "  pm.response.to.have.status(200);",
                    "  pm.expect(pm.response.headers.get('Content-Type')).to.eql('image/png');",
                    "});",
                ]
            ),
        }
    )
    return folder


def webhook_folder() -> dict[str, Any]:
    """A job with a webhook (start and completed, to ``{{webhookUrl}}``; the service must allow that host through
    WEBHOOK_ALLOW and have a WEBHOOK_SECRET), its webhook state once it ended, and a redelivery."""
    folder = job_folder(
        "Webhook",
        "/mnist/sample",
        query={"digit": "5", "n": "2", "seed": "8", "webhook": "{{webhookUrl}}", "webhook_events": "start"},
        description="a job whose start and end are POSTed, signed (Standard Webhooks), to webhookUrl",
    )
    folder["item"][0]["request"]["url"]["query"].append({"key": "webhook_events", "value": "completed"})
    folder["item"][0]["request"]["url"]["raw"] += "&webhook_events=completed"
    folder["item"].append(
        {
            "name": "Webhook: state and redelivery",
            "request": {"method": "POST", "header": _headers(), "url": _url("/jobs/{{jobId}}/webhook/redeliver")},
            "event": _script(
                [
                    "pm.test('202: the completed delivery is queued again', () => {",
                    "  pm.response.to.have.status(202);",
                    "  const hook = pm.response.json().webhook;",
                    "  pm.expect(hook.url).to.eql(pm.environment.get('webhookUrl'));",
                    "  pm.expect(hook.events).to.eql(['start', 'completed']);",
                    "  pm.expect(hook.state).to.eql('pending');",
                    "});",
                ]
            ),
        }
    )
    return folder


def _openai_headers() -> list[dict[str, str]]:
    return [{"key": "Authorization", "value": "Bearer {{apiKey}}", "type": "text"}]


def _openai_request(
    name: str,
    path: str,
    checks: list[str],
    *,
    json_body: dict[str, Any] | None = None,
    fields: list[tuple[str, str]] | None = None,
    files: dict[str, str] | None = None,
    method: str = "POST",
) -> dict[str, Any]:
    request: dict[str, Any] = {"method": method, "header": _openai_headers(), "url": _url(path)}
    if json_body is not None:
        request["header"] = [*_openai_headers(), {"key": "Content-Type", "value": "application/json", "type": "text"}]
        request["body"] = {"mode": "raw", "raw": json.dumps(json_body), "options": {"raw": {"language": "json"}}}
    if fields is not None or files:
        request["body"] = _form(fields or [], files or {})
    return {"name": name, "request": request, "event": _script(checks)}


def _images_ok(n: int, kind: str) -> list[str]:
    return [
        "pm.test('200 with OpenAI images', () => {",
        "  pm.response.to.have.status(200);",
        "  const body = pm.response.json();",
        "  pm.expect(body.created).to.be.a('number');",
        f"  pm.expect(body.data.length).to.eql({n});",
        f"  body.data.forEach(item => pm.expect(item.{kind}).to.be.a('string'));",
        "  body.data.forEach(item => pm.expect(item.job_id).to.match(/^[0-9a-f]{32}$/));",
        "});",
    ]


def openai_folder() -> dict[str, Any]:
    """The /v1 routes as the openai SDK calls them (Authorization: Bearer; JSON and multipart bodies)."""
    return {
        "name": "OpenAI Images API (/v1)",
        "item": [
            _openai_request(
                "models.list",
                "/v1/models",
                [
                    "pm.test('both models', () => {",
                    "  pm.response.to.have.status(200);",
                    "  pm.expect(pm.response.json().data.map(m => m.id)).to.have.members(['deepfloyd-if', 'mnist-flow']);",
                    "});",
                ],
                method="GET",
            ),
            _openai_request(
                "images.generate: mnist-flow, n=2, b64_json",
                "/v1/images/generations",
                _images_ok(2, "b64_json"),
                json_body={"model": "mnist-flow", "prompt": "7", "n": 2, "response_format": "b64_json", "seed": 1},
            ),
            _openai_request(
                "images.generate: deepfloyd-if, url",
                "/v1/images/generations",
                [*_images_ok(1, "url"), "pm.environment.set('imageUrl', pm.response.json().data[0].url);"],
                json_body={"model": "deepfloyd-if", "prompt": "a red panda", "response_format": "url", "seed": 0},
            ),
            _openai_request(
                "images.edit: with an RGBA mask (inpaint)",
                "/v1/images/edits",
                _images_ok(1, "b64_json"),
                fields=[("prompt", "a hot air balloon"), ("response_format", "b64_json"), ("seed", "7")],
                files={"image": "photo.png", "mask": "mask_rgba.png"},
            ),
            _openai_request(
                "images.create_variation",
                "/v1/images/variations",
                _images_ok(2, "b64_json"),
                fields=[("n", "2"), ("response_format", "b64_json")],
                files={"image": "photo.jpg"},
            ),
            _openai_request(
                "a bad request: 400 in OpenAI's shape",
                "/v1/images/generations",
                [
                    "pm.test('400 invalid_request_error naming the field', () => {",
                    "  pm.response.to.have.status(400);",
                    "  const error = pm.response.json().error;",
                    "  pm.expect(error.type).to.eql('invalid_request_error');",
                    "  pm.expect(error.param).to.eql('prompt');",
                    "  pm.expect(error.message).to.include('0 to 9');",
                    "});",
                ],
                json_body={"model": "mnist-flow", "prompt": "twelve"},
            ),
        ],
    }


def problem_request(
    name: str,
    method: str,
    path: str,
    status: int,
    *,
    query: dict[str, str] | None = None,
    fields: list[tuple[str, str]] | None = None,
    files: dict[str, str] | None = None,
) -> dict[str, Any]:
    request: dict[str, Any] = {"method": method, "header": _headers(), "url": _url(path, query)}
    if fields is not None or files:
        request["body"] = _form(fields or [], files or {})
    return {
        "name": name,
        "request": request,
        "event": _script(
            [
                f"pm.test('{status} problem+json', () => {{",
                f"  pm.response.to.have.status({status});",
                "  pm.expect(pm.response.headers.get('Content-Type')).to.eql('application/problem+json');",
                "  const body = pm.response.json();",
                f"  pm.expect(body.status).to.eql({status});",
                "  pm.expect(body.type).to.match(/^urn:problem:/);",
                "});",
            ]
        ),
    }


def wait_and_delete_folder() -> dict[str, Any]:
    """One request for a whole job (``Prefer: wait``), its download, then ``DELETE`` and the 410 after it."""
    headers = [*_headers(), {"key": "Prefer", "value": "wait=60", "type": "text"}]
    job = "{{waitJobId}}"
    return {
        "name": "One request (Prefer: wait), then delete",
        "item": [
            {
                "name": "submit and wait",
                "request": {
                    "method": "POST",
                    "header": headers,
                    "url": _url("/mnist/sample", {"digit": "3", "n": "4", "seed": "11"}),
                    "description": "holds the answer until the job ends (at most 60 s): 200 with the final job body",
                },
                "event": _script(
                    [
                        "pm.test('200 with the final body', () => {",
                        "  pm.response.to.have.status(200);",
                        "  pm.expect(pm.response.headers.get('Preference-Applied')).to.eql('wait=60');",
                        "  const body = pm.response.json();",
                        "  pm.expect(body.status).to.eql('succeeded');",
                        "  pm.expect(pm.response.headers.get('Location')).to.eql('/jobs/' + body.id);",
                        "  pm.collectionVariables.set('waitJobId', body.id);",
                        "});",
                    ]
                ),
            },
            {
                "name": "download",
                "request": {"method": "GET", "header": _headers(), "url": _url(f"/jobs/{job}/result")},
                "event": _script(
                    [
                        "pm.test('the PNG', () => { pm.response.to.have.status(200);"
                        " pm.expect(pm.response.headers.get('Content-Type')).to.eql('image/png'); });"
                    ]
                ),
            },
            {
                "name": "delete",
                "request": {"method": "DELETE", "header": _headers(), "url": _url(f"/jobs/{job}")},
                "event": _script(["pm.test('204', () => { pm.response.to.have.status(204); });"]),
            },
            {
                "name": "gone",
                "request": {"method": "GET", "header": _headers(), "url": _url(f"/jobs/{job}")},
                "event": _script(
                    [
                        "pm.test('410 job-deleted', () => { pm.response.to.have.status(410);"
                        " pm.expect(pm.response.json().type).to.eql('urn:problem:job-deleted'); });"
                    ]
                ),
            },
        ],
    }


def cache_folder() -> dict[str, Any]:
    """The same seeded request twice: the second is answered from the result cache (``cached``, its ``source``), at
    once; ``priority`` and ``cache`` are job options beside the parameters."""
    headers = [*_headers(), {"key": "Prefer", "value": "wait=60", "type": "text"}]
    query = {"digit": "5", "n": "2", "seed": "2025", "priority": "high"}
    return {
        "name": "Result cache and priority",
        "item": [
            {
                "name": "first run",
                "request": {
                    "method": "POST",
                    "header": headers,
                    "url": _url("/mnist/sample", query),
                    "description": "a seeded request (priority high: first among this tenant's waiting jobs)",
                },
                "event": _script(
                    [
                        "pm.test('run by a worker', () => {",
                        "  pm.response.to.have.status(200);",
                        "  const body = pm.response.json();",
                        "  pm.expect(body.status).to.eql('succeeded');",
                        "  pm.expect(body.priority).to.eql('high');",
                        "  pm.collectionVariables.set('cacheSourceId', body.id);",
                        "});",
                    ]
                ),
            },
            {
                "name": "same request: from the cache",
                "request": {
                    "method": "POST",
                    "header": headers,
                    "url": _url("/mnist/sample", query),
                    "description": "the same request, seed, weights and code: answered at once with the same files",
                },
                "event": _script(
                    [
                        "pm.test('cached, from the first run', () => {",
                        "  pm.response.to.have.status(200);",
                        "  const body = pm.response.json();",
                        "  pm.expect(body.cached).to.eql(true);",
                        "  pm.expect(body.source).to.eql(pm.collectionVariables.get('cacheSourceId'));",
                        "});",
                    ]
                ),
            },
            {
                "name": "cache=false: run again",
                "request": {
                    "method": "POST",
                    "header": headers,
                    "url": _url("/mnist/sample", {**query, "cache": "false"}),
                    "description": "bypasses the cache",
                },
                "event": _script(
                    [
                        "pm.test('not cached', () => { pm.response.to.have.status(200);"
                        " pm.expect(pm.response.json().cached).to.eql(false); });"
                    ]
                ),
            },
        ],
    }


def collection() -> dict[str, Any]:
    health = {
        "name": "Health",
        "item": [
            {
                "name": "healthz",
                "request": {"method": "GET", "url": _url("/healthz")},
                "event": _script(
                    [
                        "pm.test('200 ok', () => { pm.response.to.have.status(200);"
                        " pm.expect(pm.response.json().status).to.eql('ok'); });"
                    ]
                ),
            },
            {
                "name": "readyz",
                "request": {"method": "GET", "url": _url("/readyz")},
                "event": _script(
                    [
                        "pm.test('ready with MNIST and DeepFloyd operations', () => {",
                        "  pm.response.to.have.status(200);",
                        "  const ops = pm.response.json().operations;",
                        "  ['mnist_sample', 'if_sample', 'if_sdedit', 'if_inpaint', 'if_anagram', 'if_hybrid',"
                        " 'if_denoise'].forEach(op => pm.expect(ops).to.include(op));",
                        "});",
                    ]
                ),
            },
        ],
    }
    items = [
        health,
        job_folder(
            "MNIST digit",
            "/mnist/sample",
            query={"digit": "7", "n": "10", "seed": "42"},
            description="10 samples of the digit 7 (class-conditioned flow matching; the default solver: 1 midpoint step, "
            "CFG 1.5)",
        ),
        job_folder(
            "MNIST unguided",
            "/mnist/sample",
            query={"n": "20", "sampler": "heun", "steps": "25", "seed": "1"},
            description="20 digits from the time-conditioned model with the Heun sampler",
        ),
        job_folder(
            "Sample",
            "/sample",
            fields=[("prompt", "an oil painting of a snowy mountain village"), ("seed", "0")],
            description="text to image at 64x64 (stage I)",
        ),
        job_folder(
            "Sample upscaled",
            "/sample",
            fields=[("prompt", "a photo of a red panda"), ("seed", "0"), ("upscale", "true")],
            description="text to image, then stage II to 256x256",
        ),
        job_folder(
            "SDEdit",
            "/sdedit",
            fields=[("prompt", "a pencil drawing"), ("i_start", "10"), ("seed", "7")],
            files={"image": "photo.jpg"},
            description="image-to-image from noise level i_start",
        ),
        job_folder(
            "Inpaint",
            "/inpaint",
            fields=[("prompt", "a hot air balloon"), ("seed", "7")],
            files={"image": "photo.png", "mask": "mask.png"},
            description="regenerate where the mask is white, keep the rest",
        ),
        job_folder(
            "Anagram",
            "/anagram",
            fields=[
                ("prompts", "an oil painting of people around a campfire"),
                ("prompts", "an oil painting of an old man"),
                ("views", "identity"),
                ("views", "flip_vertical"),
                ("seed", "5"),
            ],
            description="one image: a campfire, and upside down an old man",
        ),
        job_folder(
            "Hybrid",
            "/hybrid",
            fields=[
                ("prompt_low", "a lithograph of a skull"),
                ("prompt_high", "a lithograph of waterfalls"),
                ("kernel_size", "33"),
                ("sigma", "2"),
                ("seed", "5"),
            ],
            description="a skull from afar, waterfalls up close",
        ),
        job_folder(
            "Denoise",
            "/denoise",
            fields=[("t", "500"), ("method", "iterative"), ("seed", "3")],
            files={"image": "photo.png"},
            description="noise to t=500, then denoise iteratively",
        ),
        events_folder(),
        wait_and_delete_folder(),
        cache_folder(),
        webhook_folder(),
        openai_folder(),
        {
            "name": "Errors",
            "item": [
                problem_request("digit out of range", "POST", "/mnist/sample", 422, query={"digit": "10"}),
                problem_request("unknown job", "GET", "/jobs/00000000000000000000000000000000", 404),
                problem_request("not an image", "POST", "/sdedit", 415, files={"image": "README.md"}),
                problem_request(
                    "odd kernel required",
                    "POST",
                    "/hybrid",
                    422,
                    fields=[("prompt_low", "a"), ("prompt_high", "b"), ("kernel_size", "32")],
                ),
                problem_request("one prompt is no anagram", "POST", "/anagram", 422, fields=[("prompts", "a")]),
                problem_request(
                    "a webhook to a metadata address",
                    "POST",
                    "/mnist/sample",
                    422,
                    query={"digit": "1", "webhook": "http://169.254.169.254/latest/meta-data/"},
                ),
            ],
        },
    ]
    return {
        "info": {
            "name": "Diffusion inference service",
            "description": "Every endpoint: submit, poll until done, download; plus problem+json errors. "
            "Run: npx newman run postman/collection.json -e postman/environment.json "
            "--working-dir postman",
            "schema": "https://schema.getpostman.com/json/collection/v2.1.0/collection.json",
        },
        "item": items,
    }


def environment() -> dict[str, Any]:
    return {
        "name": "local",
        "values": [
            {"key": "baseUrl", "value": "http://127.0.0.1:8000", "enabled": True},
            {"key": "apiKey", "value": "", "enabled": True},
            {"key": "webhookUrl", "value": "http://127.0.0.1:9/hook", "enabled": True},
        ],
    }


def render() -> dict[str, str]:
    return {
        "collection.json": json.dumps(collection(), indent=2) + "\n",
        "environment.json": json.dumps(environment(), indent=2) + "\n",
    }


if __name__ == "__main__":
    for name, text in render().items():
        (HERE / name).write_text(text)
