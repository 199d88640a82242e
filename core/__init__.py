"""The torch-free core shared by the API (`app`) and the workers (`workers`).

| module | what it holds |
| --- | --- |
| `settings` | the one pydantic-settings class (`Settings`, `get_settings`) |
| `protocol` | the API-worker contract: job states, job errors, Redis keys, cancellation |
| `record` | the job record (one Redis hash per job), its client body, and the scripts of its transitions |
| `lifecycle` | each transition of a job as one call: submit, view, start, event, finish, requeue, cancel, recover |
| `events` | the live events of a job: schema, stream keys, parsing |
| `operations` | one typed parameter model per operation, and the table of operations |
| `store` | the result store: one interface, a folder backend (`RESULTS_DIR`) and an S3 backend (`RESULTS_URL`) |
| `tenants` | the tenants file (`TENANTS_FILE`): keys by digest, weights, limits; the queue of each tenant and priority |

`app` and `workers` both import this package and never each other; this package imports neither,
nor `models` or torch (import contracts in `pyproject.toml`, checked by `make lint`).
"""
