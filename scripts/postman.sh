#!/usr/bin/env bash
# Runs the Postman collection with newman against a live service: its own redis-server, one worker
# with the shipped MNIST checkpoints and the tiny random-weight IF pipelines (stage I and II), and the
# API. Exits non-zero when any request or test of the collection fails; leaves nothing behind in the
# temporary directory (TMPDIR, default /tmp), also when it fails or is interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
# Everything of one run (tiny pipelines, results, logs: about 4.5 MB) goes in one folder, removed however the
# run ends: passed, failed or interrupted.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/postman-run.XXXXXX")
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ] && compgen -G "$WORK/*.log" >/dev/null; then
    echo "postman: failed (status $status); the service's last log lines:" >&2
    tail -n 30 "$WORK"/*.log >&2 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT   # the EXIT trap still runs
trap 'exit 143' TERM

REDIS_PORT=$(free_port)
API_PORT=$(free_port)

"$PY" -m models.diffusion.tiny "$WORK/if-stage1" --stage2 "$WORK/if-stage2" >/dev/null
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
pids+=($!)

# webhooks on, to loopback only (the collection's webhookUrl is a closed port there: the job is not held up by it)
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" RESULTS_DIR="$WORK/results" PORT="$API_PORT" \
       IF_ENABLED=true IF_STAGE1_MODEL="$WORK/if-stage1" IF_STAGE2_MODEL="$WORK/if-stage2" OMP_NUM_THREADS=1 \
       WEBHOOK_SECRET="whsec_$("$PY" -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())')" \
       WEBHOOK_ALLOW=127.0.0.1
"$PY" -m workers --name postman-worker >"$WORK/worker.log" 2>&1 &
pids+=($!)
"$PY" -m uvicorn app.main:app --host 127.0.0.1 --port "$API_PORT" --log-level warning >"$WORK/api.log" 2>&1 &
pids+=($!)

for _ in $(seq 300); do
  if curl -sf "http://127.0.0.1:$API_PORT/readyz" | grep -q if_sdedit; then break; fi
  sleep 0.2
done
if ! curl -sf "http://127.0.0.1:$API_PORT/readyz" >/dev/null; then
  echo "postman: the service did not become ready" >&2
  exit 1
fi

npx --no-install newman run postman/collection.json -e postman/environment.json --working-dir postman \
  --env-var "baseUrl=http://127.0.0.1:$API_PORT" --bail failure --color off
