#!/usr/bin/env bash
# `make run`: Redis (started here unless one answers at REDIS_URL), the API and one worker.
# Ctrl-C (or SIGTERM) stops everything this script started.
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

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo "run: stopping ${pids[*]:-nothing}"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM EXIT

if redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  echo "run: using the Redis at $REDIS_HOST:$REDIS_PORT"
else
  mkdir -p var/redis
  echo "run: starting redis-server on $REDIS_HOST:$REDIS_PORT (append-only persistence in var/redis)"
  redis-server --bind "$REDIS_HOST" --port "$REDIS_PORT" --dir "$PWD/var/redis" --appendonly yes --save "" &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

mkdir -p "$RESULTS_DIR"
"$PY" -m workers &
pids+=($!)
"$PY" -m uvicorn app.main:app --host "$HOST" --port "$PORT" &
pids+=($!)
echo "run: API on http://$HOST:$PORT (docs at /docs); Ctrl-C stops everything"
wait -n "${pids[@]}" || true
