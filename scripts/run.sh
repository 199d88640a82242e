#!/usr/bin/env bash
# `make run`: Redis (started here unless one answers at REDIS_URL), the API and one worker.
# Settings come from the environment or .env (PORT, HOST, REDIS_URL, ...; see .env.example).
# It says "ready" once /readyz answers 200, and what it waits for until then; it fails (status 1) with a
# message when the API cannot listen on PORT, or the API or the worker exits by itself.
# Ctrl-C (or SIGTERM) stops everything this script started, in order and quietly (status 0).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python

read -r REDIS_HOST REDIS_PORT HOST PORT RESULTS_DIR API_WORKERS < <("$PY" - <<'PYEOF'
from urllib.parse import urlparse
from core.settings import get_settings
s = get_settings()
u = urlparse(s.redis_url)
print(u.hostname or "localhost", u.port or 6379, s.host, s.port, s.results_dir, s.api_workers)
PYEOF
)

# The API must be able to listen: say so now, before anything is started, rather than after Redis and the
# worker (uvicorn's own "address already in use" comes late and among other lines).
if ! "$PY" - "$HOST" "$PORT" <<'PYEOF'
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
except OSError as exc:
    sys.exit(f"run: cannot start the API: HOST={host} is not an address of this machine ({exc.strerror})")
for family, kind, proto, _, address in addresses:
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(address)
        except OSError as exc:
            sys.exit(f"run: cannot start the API: port {port} on {host} is not free ({exc.strerror}); "
                     f"stop what uses it, or choose another port: PORT=8080 make run")
PYEOF
then
  exit 1
fi

# TINY_IF=1: serve DeepFloyd IF with the tiny random-weight pipelines (built once into $TINY_IF_DIR, default
# var/tiny-if), so that every endpoint works without the real weights or a GPU (the images are noise, by design).
if [ "${TINY_IF:-0}" = "1" ]; then
  TINY_IF_DIR=$(realpath -m "${TINY_IF_DIR:-var/tiny-if}")
  [ -d "$TINY_IF_DIR/stage2" ] || "$PY" -m models.diffusion.tiny "$TINY_IF_DIR/stage1" --stage2 "$TINY_IF_DIR/stage2"
  export IF_ENABLED=true IF_STAGE1_MODEL="$TINY_IF_DIR/stage1" IF_STAGE2_MODEL="$TINY_IF_DIR/stage2"
fi

pids=()        # the API and the worker
names=()
redis_pid=""
# 0 once none of the API and the worker runs any more, 1 if one still does after $1 seconds.
all_gone() {
  local i pid running
  for ((i = 0; i < $1 * 10; i++)); do
    running=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
    [ "$running" = 0 ] && return 0
    sleep 0.1
  done
  return 1
}
# Shut down in order: the API and the worker first (the worker unregisters in Redis as it leaves), Redis last.
# A graceful stop that takes more than 15 s (a job still running, an open event stream, a stuck shutdown) is
# asked again, which RQ and uvicorn take as "stop now"; 10 s later what still runs is killed.
cleanup() {
  # a second Ctrl-C reaches the API and the worker too (they stop at once); this script goes on, to stop Redis
  trap '' INT TERM
  trap - EXIT
  echo "run: stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  if ! all_gone 15; then
    echo "run: still stopping after 15 s; stopping now"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    all_gone 10 || for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$redis_pid" ]; then
    kill -TERM "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  echo "run: stopped"
}
# Ctrl-C or SIGTERM: the way to stop it, so a quiet stop and status 0. Any other exit stops everything too.
trap 'cleanup; exit 0' INT TERM
trap cleanup EXIT

# Fails (status 1) when the API or the worker has exited during start-up; what it printed is above.
check_started() {
  local i status
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      status=0
      wait "${pids[$i]}" || status=$?
      echo "run: the ${names[$i]} exited during start-up (status $status); its messages are above" >&2
      return 1
    fi
  done
}

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
  if ! redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    echo "run: redis-server did not start on $REDIS_HOST:$REDIS_PORT (is the port taken? set REDIS_URL)" >&2
    exit 1
  fi
fi

mkdir -p "$RESULTS_DIR"
"$PY" -m workers &
pids+=($!); names+=("worker")
"$PY" -m uvicorn app.main:app --host "$HOST" --port "$PORT" --workers "$API_WORKERS" &
pids+=($!); names+=("API")

# Ready once /readyz answers 200 (Redis up and a worker registered, its models loaded); until then say
# what it is waiting for, each time that changes.
case "$HOST" in
  0.0.0.0 | "") probe_host=127.0.0.1 ;;
  :: | "[::]") probe_host="[::1]" ;;
  *:*) probe_host="[$HOST]" ;;
  *) probe_host=$HOST ;;
esac
url="http://$probe_host:$PORT"
waiting=""
while :; do
  check_started || exit 1
  answer=$(curl -s --max-time 2 -w '\n%{http_code}' "$url/readyz" || true)
  code=${answer##*$'\n'}
  [ "$code" = 200 ] && break
  if [ "$code" = 000 ] || [ -z "$code" ]; then
    now="waiting for the API to answer on $url"
  elif [[ $answer == *'"redis":false'* ]]; then
    now="waiting for Redis at $REDIS_HOST:$REDIS_PORT"
  else
    now="waiting for the worker to load its models"
  fi
  if [ "$now" != "$waiting" ]; then echo "run: $now"; waiting=$now; fi
  sleep 1  # each probe is a line of the API's access log
done
echo "run: ready: http://$HOST:$PORT (studio at /, API docs at /docs); Ctrl-C stops everything"

# Serve until Ctrl-C; if the API or the worker exits by itself, stop the rest and fail.
status=0
wait -n -p exited "${pids[@]}" || status=$?
for i in "${!pids[@]}"; do [ "${pids[$i]}" = "${exited:-}" ] && name=${names[$i]}; done
echo "run: the ${name:-API or worker} exited unexpectedly (status $status); stopping the rest" >&2
exit 1
