"""Live job events for ``GET /jobs/{id}/events`` and waits for a job's end: one hub per API process.

The events of a job live in its Redis stream (``core.events``); each is also announced on one pub/sub channel.
The hub holds the process's one subscription to that channel and hands each event to the listeners of its
job; a listener first reads the job's stream after its ``Last-Event-ID`` (the backlog), then takes the live
events, skipping any it has already sent (the stream id orders them), so nothing is lost or repeated.

The terminal ``done`` event is pushed by whatever ends the job (``core.record``), so the hub only relays it: to
the listeners of the job and to the requests waiting for it (``wait``, behind ``Prefer: wait``). After a lost
subscription, every listener re-reads its stream and every waiter its job's record, so an end announced while
the hub was disconnected is not missed. ``queue`` events (the position of a queued job) are sent to listeners
only, when a job starts or ends and on each keep-alive tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from redis import asyncio as aioredis
from redis.exceptions import RedisError
from sse_starlette import ServerSentEvent

from app.jobs import eta_s, recent_workers
from core import events
from core.events import Event
from core.lifecycle import Lifecycle
from core.protocol import JobState
from core.settings import Settings

log = logging.getLogger(__name__)

LISTENER_QUEUE = 1000  # events buffered per listener; a slower client is re-synced from the stream
RETRY = 1000  # ms: how soon an EventSource reconnects


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


RESYNC = _Signal("RESYNC")  # read the stream again from the last event sent (lost messages, a full buffer)
GONE = _Signal("GONE")  # the job no longer exists: end the stream


@dataclass(eq=False)
class Listener:
    """One open event stream: the events of ``job_id`` that the hub hands over, in order."""

    job_id: str
    items: asyncio.Queue[Event | _Signal] = field(default_factory=lambda: asyncio.Queue(LISTENER_QUEUE))

    def put(self, item: Event | _Signal) -> None:
        try:
            self.items.put_nowait(item)
        except asyncio.QueueFull:  # drop the buffer; the stream has every stored event
            while not self.items.empty():
                self.items.get_nowait()
            self.items.put_nowait(RESYNC)


@dataclass(frozen=True)
class Snapshot:
    """A job's state as the hub last looked it up."""

    state: JobState | None  # None: the job no longer exists
    position: int | None = None
    body: dict[str, Any] | None = None
    eta_s: float | None = None

    @property
    def queue_event(self) -> dict[str, Any]:
        return {"position": self.position, "eta_s": self.eta_s}


def look_up(lifecycle: Lifecycle, job_id: str, default_step_s: float = 0.05) -> Snapshot:
    """The job's state, queue position (with its ETA) and body (blocking: run it in a thread)."""
    record, position, _ = lifecycle.view(job_id)
    if record is None:
        return Snapshot(None)
    eta = eta_s(recent_workers(lifecycle), record, position, default_step_s) if position is not None else None
    return Snapshot(record.state, position, record.body(position, eta), eta)


AREDIS_CONNECTIONS = 32


class EventHub:
    """The API process's one subscription to the event channel, its listeners and its waiters (see the module
    docstring). Created by the app's lifespan; it connects when first needed and reconnects on its own."""

    def __init__(
        self,
        settings: Settings,
        lifecycle: Lifecycle,
        *,
        on_done: Callable[[str, dict[str, Any]], None] | None = None,
        on_listeners: Callable[[int], None] | None = None,
        wants_done: Callable[[str], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.on_done = on_done  # every done event (the job metrics count the jobs this process accepted)
        self.on_listeners = on_listeners  # +1 / -1 as a listener comes and goes
        self.wants_done = wants_done  # whether on_done wants a job's done event (else it is not even parsed)
        # A blocking pool: when a terminal event wakes hundreds of listeners at once, their reads wait for one of
        # AREDIS_CONNECTIONS connections instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=AREDIS_CONNECTIONS, timeout=30, socket_connect_timeout=5
        )
        self.aredis = aioredis.Redis(connection_pool=pool)
        self.listeners: dict[str, set[Listener]] = defaultdict(set)
        self.waiters: dict[str, set[asyncio.Future[dict[str, Any]]]] = defaultdict(set)
        self._positions: dict[str, int | None] = {}
        self._ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False
        self._refreshing = False
        self._refresh_again = False

    # -- life cycle -------------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        """Subscribe (in the background; once). The app's lifespan starts the hub, so that every done event reaches
        the job metrics from the first job on."""
        if not self._running:
            self._running = True
            self._spawn(self._read())
            self._spawn(self._tick())

    async def ready(self, timeout: float = 5.0) -> bool:
        """Start the hub (once) and wait until it is subscribed; False if Redis does not answer in time."""
        self.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self._ready.is_set()

    async def close(self) -> None:
        self._running = False
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.aredis.aclose()

    @property
    def count(self) -> int:
        return sum(len(group) for group in self.listeners.values())

    def add(self, job_id: str) -> Listener:
        listener = Listener(job_id)
        self.listeners[job_id].add(listener)
        if self.on_listeners is not None:
            self.on_listeners(1)
        return listener

    def remove(self, listener: Listener) -> None:
        group = self.listeners.get(listener.job_id)
        if group is None or listener not in group:
            return
        group.discard(listener)
        if self.on_listeners is not None:
            self.on_listeners(-1)
        if not group:
            del self.listeners[listener.job_id]
            self._positions.pop(listener.job_id, None)

    # -- waiting for a job's end ------------------------------------------------------------------------------
    def expect(self, job_id: str) -> asyncio.Future[dict[str, Any]]:
        """A future that gets the job's final body when its ``done`` event arrives. Register it before the job
        can end (before it is enqueued), then ``wait`` on it."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters[job_id].add(future)
        return future

    def forget(self, job_id: str, future: asyncio.Future[dict[str, Any]]) -> None:
        group = self.waiters.get(job_id)
        if group is not None:
            group.discard(future)
            if not group:
                del self.waiters[job_id]
        if not future.done():
            future.cancel()

    async def wait(self, job_id: str, future: asyncio.Future[dict[str, Any]], timeout: float) -> dict[str, Any] | None:
        """The job's final body, or None if it has not ended within ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return None
        finally:
            self.forget(job_id, future)

    def _resolve(self, job_id: str, body: dict[str, Any]) -> None:
        for future in self.waiters.pop(job_id, ()):
            if not future.done():
                future.set_result(body)

    # -- the subscription ---------------------------------------------------------------------------------
    async def _read(self) -> None:
        delay = 0.1
        first = True
        while self._running:
            pubsub = self.aredis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(events.CHANNEL)
                self._ready.set()
                if not first:  # messages may have been lost while disconnected
                    self._resync()
                first, delay = False, 0.1
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    parts = events.split_message(message["data"])
                    if parts is None or not self._wants(parts[0], parts[2]):
                        continue  # every API process hears every job's events: most are not its business
                    event = events.parse_split(*parts)
                    if event is not None:
                        self._dispatch(event)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._ready.clear()
                log.warning("event subscription lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _resync(self) -> None:
        for group in self.listeners.values():
            for listener in group:
                listener.put(RESYNC)
        for job_id in list(self.waiters):
            self._spawn(self._recheck_waiter(job_id))

    async def _recheck_waiter(self, job_id: str) -> None:
        with contextlib.suppress(RedisError):
            snapshot = await anyio.to_thread.run_sync(self._look_up, job_id)
            if snapshot.body is not None and snapshot.state is not None and snapshot.state.terminal:
                self._resolve(job_id, snapshot.body)

    def _wants(self, job_id: str, event: str) -> bool:
        """Whether an event needs parsing here: a listener or a waiter has its job, or it is a ``done`` the job
        metrics count (``wants_done``), or a start or end that moves the queue positions listeners see."""
        if job_id in self.listeners or job_id in self.waiters:
            return True
        if event == "done" and self.wants_done is not None and self.wants_done(job_id):
            return True
        return event in ("status", "done") and any(p is not None for p in self._positions.values())

    def _dispatch(self, event: Event) -> None:
        if event.terminal:
            self._resolve(event.job_id, event.data)
            if self.on_done is not None:
                self.on_done(event.job_id, event.data)
        for listener in self.listeners.get(event.job_id) or ():
            listener.put(event)
        if event.event in ("status", "done") and any(p is not None for p in self._positions.values()):
            self._spawn(self._refresh_positions())  # a job started or ended: queued jobs moved up

    # -- queue positions ------------------------------------------------------------------------------------
    async def check(self, job_id: str) -> Snapshot:
        """Look the job up (in a thread) and send a changed queue position to its listeners."""
        snapshot = await anyio.to_thread.run_sync(self._look_up, job_id)
        self._apply(job_id, snapshot)
        return snapshot

    def _look_up(self, job_id: str) -> Snapshot:
        return look_up(self.lifecycle, job_id, self.settings.pending_step_s_default)

    def _apply(self, job_id: str, snapshot: Snapshot) -> None:
        group = self.listeners.get(job_id)
        if not group:
            return
        if snapshot.state is None:
            for listener in group:
                listener.put(GONE)
            return
        if self._positions.get(job_id) != snapshot.position:
            self._positions[job_id] = snapshot.position
            if snapshot.position is not None:
                queued = Event(job_id, None, "queue", snapshot.queue_event)
                for listener in group:
                    listener.put(queued)

    async def _refresh_positions(self) -> None:
        if self._refreshing:
            self._refresh_again = True
            return
        self._refreshing = True
        try:
            while True:
                self._refresh_again = False
                for job_id in [j for j, p in self._positions.items() if p is not None]:
                    await self.check(job_id)
                if not self._refresh_again:
                    return
        except RedisError as exc:
            log.warning("could not refresh queue positions: %s", exc)
        finally:
            self._refreshing = False

    async def _tick(self) -> None:
        while self._running:
            await asyncio.sleep(self.settings.events_keepalive_s)
            for job_id in list(self.listeners):
                try:
                    await self.check(job_id)
                except RedisError as exc:
                    log.warning("could not look up job %s: %s", job_id, exc)
                    break

    # -- one stream -----------------------------------------------------------------------------------------
    async def backlog(self, job_id: str, after: str | None) -> list[Event]:
        """The stored events of a job after the id ``after`` (all of them for None)."""
        entries = await self.aredis.xrange(events.stream_key(job_id), min=f"({after}" if after else "-", max="+")
        return [
            events.parse_entry(job_id, stream_id, fields) for stream_id, fields in entries or () if stream_id and fields
        ]

    async def stream(
        self, listener: Listener, last_event_id: str | None, first: Snapshot
    ) -> AsyncIterator[ServerSentEvent]:
        """The events of one listener, ending after ``done`` (or when the job is gone)."""
        last = last_event_id
        try:
            yield ServerSentEvent(comment=f"events of job {listener.job_id}", retry=RETRY)
            if first.position is not None:
                yield _sse(Event(listener.job_id, None, "queue", first.queue_event))
            for event in await self.backlog(listener.job_id, last):
                yield _sse(event)
                last = event.id
                if event.terminal:
                    return
            if first.state is not None and first.state.terminal:
                return  # its done event is stored and the client had it already
            while True:
                item = await listener.items.get()
                if item is GONE:
                    return
                if item is RESYNC:
                    for event in await self.backlog(listener.job_id, last):
                        yield _sse(event)
                        last = event.id
                        if event.terminal:
                            return
                    continue
                assert isinstance(item, Event)
                if item.id is None:
                    yield _sse(item)
                    continue
                if last is not None and events.stream_id_order(item.id) <= events.stream_id_order(last):
                    continue  # already sent from the backlog
                yield _sse(item)
                last = item.id
                if item.terminal:
                    return
        except RedisError as exc:
            # the response has started: no problem+json any more. End the stream; the client reconnects after
            # RETRY ms with Last-Event-ID and loses nothing (the events are in the job's stream)
            log.warning("event stream of job %s ended early: Redis unreachable (%s)", listener.job_id, exc)
        finally:
            self.remove(listener)


def _sse(event: Event) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(event.data, separators=(",", ":")), event=event.event, id=event.id)
