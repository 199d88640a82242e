"""The anchor of the load benchmark: the service's architecture at its barest, doing nothing.

A FastAPI app whose ``POST /mnist/sample`` enqueues an RQ job of a no-op function and answers 202 with its id,
whose ``GET /jobs/{id}`` answers the job's RQ status, and whose ``GET /jobs/{id}/result`` answers a fixed
68-byte PNG; an RQ ``SimpleWorker`` runs the jobs. The routes have the service's paths and answer shapes, so
``bench/load.py`` drives it with the same clients (``--anchor`` adds its row to a run). It validates nothing,
stores nothing, runs no model: whatever the service does on top of it is the service's per-job overhead.

    .venv/bin/python bench/bare_stack.py api --redis redis://127.0.0.1:6379/0 --port 8100   # the app (uvicorn)
    .venv/bin/python bench/bare_stack.py worker --redis redis://127.0.0.1:6379/0            # the worker
"""

from __future__ import annotations

import argparse
import base64
import uuid
from typing import Any

QUEUE = "bare"
#: a 1x1 black PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==")
_STATUS = {"finished": "succeeded", "failed": "failed", "started": "running", "canceled": "canceled"}


def noop(**params: Any) -> dict[str, Any]:
    """The job: nothing."""
    return {"ok": True}


def make_app(redis_url: str) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from redis import Redis
    from rq import Queue
    from rq.job import Job

    redis = Redis.from_url(redis_url)
    queue = Queue(QUEUE, connection=redis)
    app = FastAPI()

    @app.post("/mnist/sample", status_code=202)
    def submit(digit: int = 0, n: int = 1, seed: int = 0) -> JSONResponse:
        job = queue.enqueue_call(
            "bare_stack.noop", kwargs={"digit": digit, "n": n, "seed": seed}, job_id=uuid.uuid4().hex
        )
        return JSONResponse(
            {"id": job.id, "status": "queued"}, status_code=202, headers={"Location": f"/jobs/{job.id}"}
        )

    @app.get("/jobs/{job_id}")
    def status(job_id: str) -> JSONResponse:
        job = Job.fetch(job_id, connection=redis)
        return JSONResponse({"id": job_id, "status": _STATUS.get(job.get_status(), "queued")})

    @app.get("/jobs/{job_id}/result")
    def result(job_id: str) -> Response:
        return Response(PNG, media_type="image/png")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=["api", "worker"])
    parser.add_argument("--redis", required=True)
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    if args.role == "api":
        import uvicorn

        uvicorn.run(make_app(args.redis), host="127.0.0.1", port=args.port, log_level="warning")
    else:
        from redis import Redis
        from rq import Queue, SimpleWorker

        redis = Redis.from_url(args.redis)
        SimpleWorker([Queue(QUEUE, connection=redis)], connection=redis).work(logging_level="WARNING")


if __name__ == "__main__":
    main()
