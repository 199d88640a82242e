"""Which jobs in flight have been canceled, without a Redis round trip per sampling step.

The API sets a running job's ``cancel`` field in its record and publishes its id on
``core.protocol.cancel_channel()`` (one script). A worker keeps one subscription to that channel (``CancelWatch``)
and a set of its canceled jobs in flight, so that a job's per-step check is a set lookup: with many jobs batched
into one step, per-job Redis calls would cost more than the step. A job's flag comes with its start (a cancel
that came before), and the flags of every job in flight are read again after the subscription had to reconnect
(messages may have been missed meanwhile).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from redis import Redis
from redis.exceptions import RedisError

from core.protocol import cancel_channel
from core.record import record_key

log = logging.getLogger(__name__)


class CancelWatch:
    """One subscription per worker; ``watch``/``unwatch`` a job around its run, ``canceled`` every step."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._lock = threading.Lock()
        self._watched: set[str] = set()
        self._canceled: set[str] = set()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="cancel-watch", daemon=True)

    def start(self, timeout: float = 5.0) -> CancelWatch:
        """Subscribe (waits until the subscription is in place, at most ``timeout`` seconds)."""
        self._thread.start()
        if not self._ready.wait(timeout):
            log.warning("cancel subscription not confirmed within %.0f s; cancel checks fall back to Redis", timeout)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def watch(self, job_id: str, *, already: bool = False) -> None:
        """Start watching a job; ``already``: its record's cancel flag when it started."""
        with self._lock:
            self._watched.add(job_id)
            if already:
                self._canceled.add(job_id)

    def unwatch(self, job_id: str) -> None:
        with self._lock:
            self._watched.discard(job_id)
            self._canceled.discard(job_id)

    def canceled(self, job_id: str) -> bool:
        """True once the job has been canceled (as far as this worker has heard: while the subscription is down,
        a cancel is learnt when it is back)."""
        with self._lock:
            return job_id in self._canceled

    def _recheck(self) -> None:
        with self._lock:
            watched = list(self._watched)
        if not watched:
            return
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in watched:
                pipe.hget(record_key(job_id), "cancel")
            flags = pipe.execute()
        with self._lock:
            self._canceled.update(j for j, flag in zip(watched, flags, strict=True) if flag in (b"1", "1"))

    def _listen(self) -> None:
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(cancel_channel())
                self._recheck()
                self._ready.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        data = message["data"]
                        job_id = data.decode() if isinstance(data, bytes) else str(data)
                        with self._lock:
                            if job_id in self._watched:
                                self._canceled.add(job_id)
            except RedisError as exc:
                self._ready.clear()
                if not self._stop.is_set():
                    log.warning("cancel subscription lost (%s); reconnecting", exc)
                    time.sleep(1)
            finally:
                with contextlib.suppress(RedisError):
                    pubsub.close()
