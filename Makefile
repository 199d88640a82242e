# The three commands of the README: setup, test, run.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup lint test run s3 postman screenshot worker api clean

setup:            ## install everything on a fresh Debian machine (Python deps, redis-server, chromium, newman)
	bash scripts/setup.sh

lint:             ## static checks: ruff (lint + format), mypy (strict for core, app, workers), import contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test:             ## run the whole test suite (starts its own redis-server, workers and API)
	$(PY) -m pytest -q

run:              ## start Redis (if none answers at REDIS_URL), the API and one worker; Ctrl-C stops all
	bash scripts/run.sh

s3:               ## a local S3 server (SeaweedFS) with a bucket for RESULTS_URL; its settings in var/s3/env
	VENV=$(VENV) bash scripts/s3.sh

postman:          ## run the Postman collection with newman against a fresh service (tiny IF pipeline)
	bash scripts/postman.sh

screenshot:       ## retake docs/studio.png (the README's screenshot) with the browser test
	STUDIO_SCREENSHOT=$(CURDIR)/docs/studio.png $(PY) -m pytest -q tests/browser -k inpaint

api:
	$(PY) -m uvicorn app.main:app --host $${HOST:-127.0.0.1} --port $${PORT:-8000} --workers $${API_WORKERS:-1}

worker:
	$(PY) -m workers

clean:
	rm -rf var .pytest_cache
