"""Container health check for a worker: exit 0 when a worker of this host is registered in RQ."""

from __future__ import annotations

import socket
import sys

from redis import Redis
from rq import Queue, Worker

from core.settings import get_settings


def main() -> int:
    settings = get_settings()
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=3)
    host = socket.gethostname()
    alive = [
        w.name for w in Worker.all(queue=Queue(settings.queue_name, connection=redis)) if w.name.startswith(host + ":")
    ]
    print("alive:", alive or "none")
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
