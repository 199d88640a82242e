"""When to claim: one subscription per worker to ``svc:submitted``, which wakes the work loop.

With a tenants file every job waits in its tenant's lists and a worker claims by fair share with a script (a list
a worker could block on would be one tenant's): it cannot block in Redis for the next job. The submission pipeline
publishes the base queue's name instead (one command per job), and this thread turns each message for our queue
into a set event that ends the loop's wait. Without a tenants file the loop blocks on the normal list as before, and
only a job of another priority is announced (its list is not the one the loop blocks on). A blocked ``BLMOVE`` does
not see that event, so the loop's blocking claims run on a connection of their own (``blocking``) whose server-side
client id is known, and an announcement (or a stop request) ends the wait at once with ``CLIENT UNBLOCK``: a high or
low priority job on an idle worker starts within a round trip, not after the rest of the claim's block.

Both sides avoid the race of an announcement that comes just before the loop blocks: the loop marks itself blocking
before it looks at the event one last time; this thread sets the event before it looks at the mark, and while the
mark stands it repeats the unblock for a moment (the ``BLMOVE`` may still be on its way to the server).

A message lost while the subscription was down costs at most the loop's poll interval (an idle loop claims once a
second anyway); after a reconnect the event is set, so the loop looks at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from core.protocol import submitted_channel

log = logging.getLogger(__name__)

#: How long an announcement keeps trying to end a blocking claim that has not reached the server yet.
UNBLOCK_TRIES, UNBLOCK_EVERY_S = 50, 0.002


class Wakeups:
    """``wait`` until a job was submitted to ``queue`` (or ``timeout``); ``take`` whether one was."""

    def __init__(self, redis: Redis, queue: str) -> None:
        self._redis = redis
        self._queue = queue.encode()
        self._event = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="wakeups", daemon=True)
        self._blocker: Redis | None = None  # the blocking claims' own connection (made on the first claim)
        self._id: int | None = None  # its server-side client id
        self._blocked = False  # the loop is in (or entering) a blocking claim

    def start(self, timeout: float = 5.0) -> Wakeups:
        self._thread.start()
        if not self._ready.wait(timeout):
            log.warning("submission subscription not confirmed within %.0f s; the loop polls every second", timeout)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._event.set()
        self._thread.join(5)
        if self._blocker is not None:
            with contextlib.suppress(RedisError, OSError):
                self._blocker.close()

    def nudge(self) -> None:
        """Wake the loop now (a stop request), ending its blocking claim if it is in one."""
        self._event.set()
        with contextlib.suppress(RedisError, OSError):
            self._wake_loop()

    def blocking(self, claim: Callable[[Redis], str | None]) -> str | None:
        """Run ``claim`` (a blocking claim) on the claims' own connection, unless a job was announced already: then
        None, and the loop looks at every list at once. An announcement during the claim ends it (None too)."""
        client = self._blocking_client()
        self._blocked = True
        try:
            if self._event.is_set():
                return None
            return claim(client)
        finally:
            self._blocked = False

    def _blocking_client(self) -> Redis:
        """One connection of the process's pool, held for the blocking claims; a connect callback reads its
        server-side id on every (re)connect (redis-py reconnects it on its own after an outage)."""
        if self._blocker is None:
            client = Redis(connection_pool=self._redis.connection_pool, single_connection_client=True)
            connection = client.connection
            assert connection is not None
            self._id = self._client_id(connection)
            connection.register_connect_callback(self._connected)  # type: ignore[no-untyped-call]
            self._blocker = client
        return self._blocker

    def _connected(self, connection: Any) -> None:
        self._id = self._client_id(connection)

    @staticmethod
    def _client_id(connection: Any) -> int:
        connection.send_command("CLIENT", "ID")
        return int(connection.read_response())

    def _unblock(self) -> bool:
        """End the blocking claim (as if its time were up); False if the connection is not blocked."""
        return self._id is not None and bool(self._redis.client_unblock(self._id))

    def _wake_loop(self) -> None:
        """The event is set: end the loop's blocking claim if it is in one (or about to be)."""
        for _ in range(UNBLOCK_TRIES):
            if not self._blocked or self._unblock():
                return
            time.sleep(UNBLOCK_EVERY_S)

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
                            self._wake_loop()
            except RedisError as exc:
                self._ready.clear()
                if not self._stop.is_set():
                    log.warning("submission subscription lost (%s); reconnecting", exc)
                    time.sleep(1)
            finally:
                with contextlib.suppress(RedisError):
                    pubsub.close()
