#!/usr/bin/env bash
# `make run`: Redis (started here unless one answers at REDIS_URL), the API and one worker.
# Settings come from the environment or .env (PORT, HOST, REDIS_URL, ...; see .env.example).
# Ctrl-C (or SIGTERM) stops everything this script started, in order and quietly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python

read -r REDIS_HOST REDIS_PORT HOST PORT RESULTS_DIR < <("$PY" - <<'PYEOF'
from urllib.parse import urlparse
from core.settings import get_settings
s = get_settings()
u = urlparse(s.redis_url)
print(u.hostname or "localhost", u.port or 6379, s.host, s.port, s.results_dir)
PYEOF
)

# TINY_IF=1: serve DeepFloyd IF with the tiny random-weight pipelines (built once into $TINY_IF_DIR, default
# var/tiny-if), so that every endpoint works without the real weights or a GPU (the images are noise, by design).
if [ "${TINY_IF:-0}" = "1" ]; then
  TINY_IF_DIR=$(realpath -m "${TINY_IF_DIR:-var/tiny-if}")
  [ -d "$TINY_IF_DIR/stage2" ] || "$PY" -m models.diffusion.tiny "$TINY_IF_DIR/stage1" --stage2 "$TINY_IF_DIR/stage2"
  export IF_ENABLED=true IF_STAGE1_MODEL="$TINY_IF_DIR/stage1" IF_STAGE2_MODEL="$TINY_IF_DIR/stage2"
fi

pids=()        # the API and the worker
redis_pid=""
# Shut down in order: the API and the worker first (the worker unregisters in Redis as it leaves), Redis last.
cleanup() {
  trap - INT TERM EXIT
  echo "run: stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$redis_pid" ]; then
    kill -TERM "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  echo "run: stopped"
}
trap cleanup INT TERM EXIT

if redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  echo "run: using the Redis at $REDIS_HOST:$REDIS_PORT"
else
  mkdir -p var/redis
  echo "run: starting redis-server on $REDIS_HOST:$REDIS_PORT (append-only persistence in var/redis)"
  # its own session: Ctrl-C (SIGINT to the terminal's process group) must not stop it before the worker
  setsid redis-server --bind "$REDIS_HOST" --port "$REDIS_PORT" --dir "$PWD/var/redis" --appendonly yes --save "" \
    --loglevel warning &
  redis_pid=$!
  for _ in $(seq 50); do redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

mkdir -p "$RESULTS_DIR"
"$PY" -m workers &
pids+=($!)
"$PY" -m uvicorn app.main:app --host "$HOST" --port "$PORT" &
pids+=($!)
echo "run: API on http://$HOST:$PORT (docs at /docs); Ctrl-C stops everything"
wait -n "${pids[@]}" || true
