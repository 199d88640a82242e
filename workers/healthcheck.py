"""Container health check for a worker: exit 0 when a worker of this host has a live heartbeat."""

from __future__ import annotations

import socket
import sys
import time

from redis import Redis

from core.protocol import workers_key
from core.settings import get_settings


def main() -> int:
    settings = get_settings()
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=3)
    host = socket.gethostname()
    live = redis.zrangebyscore(workers_key(settings.queue_name), time.time(), "+inf")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in live]
    alive = [n for n in names if n.startswith(host + ":")]
    print("alive:", alive or "none")
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
