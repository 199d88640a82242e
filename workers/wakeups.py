"""When to claim: one subscription per worker to ``svc:submitted``, which wakes the work loop.

With a tenants file every job waits in its tenant's lists and a worker claims by fair share with a script (a list
a worker could block on would be one tenant's): it cannot block in Redis for the next job. The submission pipeline
publishes the base queue's name instead (one command per job), and this thread turns each message for our queue
into a set event that ends the loop's wait. Without a tenants file the loop blocks on the normal list as before, and
only a job of another priority is announced (its list is not the one the loop blocks on).

A message lost while the subscription was down costs at most the loop's poll interval (an idle loop claims once a
second anyway); after a reconnect the event is set, so the loop looks at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from redis import Redis
from redis.exceptions import RedisError

from core.protocol import submitted_channel

log = logging.getLogger(__name__)


class Wakeups:
    """``wait`` until a job was submitted to ``queue`` (or ``timeout``); ``take`` whether one was."""

    def __init__(self, redis: Redis, queue: str) -> None:
        self._redis = redis
        self._queue = queue.encode()
        self._event = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="wakeups", daemon=True)

    def start(self, timeout: float = 5.0) -> Wakeups:
        self._thread.start()
        if not self._ready.wait(timeout):
            log.warning("submission subscription not confirmed within %.0f s; the loop polls every second", timeout)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._event.set()
        self._thread.join(5)

    def nudge(self) -> None:
        """Wake the loop now (a stop request)."""
        self._event.set()

    def take(self) -> bool:
        """Whether a job was announced since the last ``take`` (and forget it)."""
        if self._event.is_set():
            self._event.clear()
            return True
        return False

    def wait(self, timeout: float) -> bool:
        """Block until a job is announced or ``timeout`` seconds pass; True if one was (not forgotten)."""
        return self._event.wait(timeout)

    def _listen(self) -> None:
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(submitted_channel())
                self._ready.set()
                self._event.set()  # (re)subscribed: messages may have been missed meanwhile
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        data = message["data"]
                        if (data if isinstance(data, bytes) else str(data).encode()) == self._queue:
                            self._event.set()
            except RedisError as exc:
                self._ready.clear()
                if not self._stop.is_set():
                    log.warning("submission subscription lost (%s); reconnecting", exc)
                    time.sleep(1)
            finally:
                with contextlib.suppress(RedisError):
                    pubsub.close()
