"""Webhooks on the API side: the target check at submission, the deliverer, and redelivery.

The deliveries themselves are queued in Redis by the job's transitions (``core.webhooks``); this module sends them.

- **Submission** (``checked_webhook``): a job's ``webhook`` must be an http(s) URL whose host resolves only to
  addresses that ``WEBHOOK_ALLOW`` allows (by default every public address, and no loopback, private, link-local,
  multicast, reserved or metadata one); otherwise 422 problem+json naming the field. Without ``WEBHOOK_SECRET``
  a webhook is refused with 503 (nothing could be signed).
- **Delivery** (``Deliverer``, a background task of every API process, started by the lifespan): it claims due
  deliveries (``CLAIM``: a lease, so that two processes never send the same attempt), resolves the target again
  and checks every address (DNS rebinding), connects to the checked address (``Host`` and TLS SNI stay the URL's
  host), signs the body with ``standardwebhooks`` and POSTs it with short timeouts and no redirects. The outcome
  of a ``completed`` delivery goes into the job record (``SETTLE``): ``webhook_state`` pending, retrying,
  delivered or failed, attempts, the last status and error, when it was delivered. The job's own state never
  depends on a delivery.
- **Redelivery** (``redeliver``): queues the ``completed`` delivery of an ended job again, now, with the same body
  and the same ``webhook-id`` (it is the same message: a receiver that already has it may drop it by its id).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import random
import socket
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
from redis import Redis
from redis import asyncio as aioredis
from redis.exceptions import RedisError
from standardwebhooks.webhooks import Webhook

from app.problems import Problem
from core import webhooks
from core.operations import Operation, OperationParams
from core.protocol import JobState
from core.record import RECORD_PREFIX, VIEW_FIELDS, JobRecord, dumps, iso, record_key
from core.settings import Settings
from core.webhooks import AllowList, Delivery, IPAddress, Target, TargetRefused, parse_target

log = logging.getLogger(__name__)

DNS_TIMEOUT_S = 3.0
POLL_S = 0.5  # how often a deliverer looks for due deliveries (as often as progress may be delivered)
LEASE_MARGIN_S = 15.0  # a claimed delivery is another process's to try again this long after its attempt's limit
CONCURRENCY = 16  # deliveries one API process sends at once
USER_AGENT = "diffusion-service-webhooks/0.1"
CLAIM_FIELDS = (*VIEW_FIELDS, *webhooks.DELIVERY_FIELDS)  # "state" first, as CLAIM wants
_resolver = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook-dns")


# ---- the target check ---------------------------------------------------------------------------------------------


def _addresses(infos: list[Any]) -> list[IPAddress]:
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def resolve(target: Target, timeout_s: float = DNS_TIMEOUT_S) -> list[IPAddress]:
    """Every address of the target's host (blocking, bounded); TargetRefused when it does not resolve in time."""
    if target.literal is not None:
        return [target.literal]
    future = _resolver.submit(socket.getaddrinfo, target.host, target.port, type=socket.SOCK_STREAM)
    try:
        return _addresses(future.result(timeout=timeout_s))
    except concurrent.futures.TimeoutError:
        raise TargetRefused(f"{target.host} did not resolve within {timeout_s:g} s") from None
    except (OSError, UnicodeError) as exc:
        raise TargetRefused(f"{target.host} does not resolve") from exc


def check_target(url: str, allow: AllowList) -> tuple[Target, list[IPAddress]]:
    """The target and its addresses when ``allow`` allows every one of them; TargetRefused (why) otherwise."""
    target = parse_target(url)
    if target.host in webhooks.METADATA_HOSTS:  # refused before any lookup
        raise TargetRefused(f"{target.host} is a cloud metadata service")
    addresses = resolve(target)
    reason = allow.refusal(target, addresses)
    if reason is not None:
        raise TargetRefused(reason)
    return target, addresses


def checked_webhook(settings: Settings, op: Operation, params: OperationParams) -> tuple[str, tuple[str, ...]] | None:
    """(URL, events) of a submission's webhook once checked, or None without one. Blocking (DNS): the caller runs
    in the thread pool."""
    if params.webhook is None:
        return None
    where = "query" if op.transport == "query" else "body"
    if settings.webhook_secret is None:
        raise Problem(
            503,
            "webhooks-unavailable",
            "this service has no WEBHOOK_SECRET, so it cannot sign webhooks; submit without one",
            errors=[{"name": "webhook", "in": where, "reason": "webhooks are not configured"}],
        )
    try:
        check_target(params.webhook, AllowList.parse(settings.webhook_allow))
    except TargetRefused as exc:
        raise Problem(
            422,
            "webhook-refused",
            f"webhook: {exc}",
            errors=[{"name": "webhook", "in": where, "reason": str(exc)}],
        ) from None
    return params.webhook, params.wanted_events


# ---- redelivery ---------------------------------------------------------------------------------------------------


def redeliver(redis: Redis, record: JobRecord) -> bool:
    """Queue the ``completed`` delivery of an ended job again (see the module docstring); False when the record is
    gone. The caller has checked that the job has a webhook and has ended. The body is the one its end stored (the
    job body now, for a job whose webhook did not want ``completed``)."""
    script = redis.register_script(webhooks.REDELIVER)
    body = dumps(JobRecord(**{**record.__dict__, "webhook_state": "pending"}).body())
    done = script(
        keys=[webhooks.SCHEDULE_KEY, record_key(record.id)],
        args=[webhooks.member(record.id, "completed"), time.time(), body],
    )
    return bool(done)


# ---- delivery -----------------------------------------------------------------------------------------------------


class Outcome:
    """What one attempt came to."""

    def __init__(
        self, *, ok: bool, retryable: bool = False, status: int | None = None, error: str | None = None
    ) -> None:
        self.ok, self.retryable, self.status, self.error = ok, retryable, status, error


class Deliverer:
    """Sends the due webhook deliveries of every job (see the module docstring); one per API process."""

    def __init__(self, settings: Settings, *, poll_s: float = POLL_S) -> None:
        self.settings = settings
        self.poll_s = poll_s
        self.allow = AllowList.parse(settings.webhook_allow)
        secret = settings.webhook_secret
        self.signer = Webhook(secret.get_secret_value()) if secret is not None else None
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=10)
        self.claim_script = self.redis.register_script(webhooks.CLAIM)
        self.settle_script = self.redis.register_script(webhooks.SETTLE)
        self.timeout_s = settings.webhook_timeout_s
        self.lease_s = self.timeout_s + DNS_TIMEOUT_S + LEASE_MARGIN_S
        self.client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the connection goes to the address checked here
            timeout=httpx.Timeout(self.timeout_s, connect=min(5.0, self.timeout_s)),
            headers={"user-agent": USER_AGENT},
            limits=httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=0),
        )
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self.rng = random.Random()

    # -- life cycle -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.signer is None:
            log.info("webhooks are off: WEBHOOK_SECRET is not set")
            return
        self._loop_task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.client.aclose()
        await self.redis.aclose()

    # -- the loop ---------------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self.poll_s
        while True:
            free = CONCURRENCY - len(self._tasks)
            claimed: list[Delivery] = []
            if free > 0:
                try:
                    claimed = await self._claim(free)
                    delay = self.poll_s
                except (RedisError, OSError) as exc:
                    log.warning("webhooks: Redis unreachable (%s); retrying in %.1f s", exc, delay)
                    delay = min(delay * 2, 5.0)
            for delivery in claimed:
                task = asyncio.ensure_future(self._deliver(delivery))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if len(claimed) < free or free <= 0:
                await asyncio.sleep(delay)

    async def _claim(self, most: int) -> list[Delivery]:
        now = time.time()
        lease = now + self.lease_s
        entries = await self.claim_script(
            keys=[webhooks.SCHEDULE_KEY], args=[now, lease, most, RECORD_PREFIX, *CLAIM_FIELDS]
        )
        return [Delivery.from_claim(entry, CLAIM_FIELDS, lease) for entry in entries or ()]

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            body = self._body(delivery)
            if body is None:
                await self._settle(delivery, "done")
                return
            outcome = await self._send(delivery, body)
            await self._record(delivery, outcome)
        except (RedisError, OSError) as exc:
            # its lease runs out and it is tried again (by this process or another)
            log.warning("webhook %s of job %s: could not settle (%s)", delivery.event, delivery.job_id, exc)
        except Exception:
            log.exception("webhook %s of job %s: unexpected error", delivery.event, delivery.job_id)

    def _body(self, delivery: Delivery) -> str | None:
        """The payload: for ``completed`` the body of the ``done`` event (stored by the job's end); for
        ``progress`` the job body as it is now; for ``start`` the job as ``START`` left it (running, no progress
        yet, nothing of its end: a short job may have ended before its start is sent). None: nothing to send (no
        webhook on the record, a progress delivery that came after the job stopped running)."""
        record = JobRecord.from_hash(delivery.job_id, delivery.record)
        if record is None or not record.webhook:
            return None
        if delivery.event == "completed":
            return delivery.record.get("webhook_body") or dumps(record.body())
        if delivery.event == "progress" and record.state is not JobState.running:
            return None
        if delivery.event == "start":
            record = replace(
                record,
                state=JobState.running,
                progress=None,
                finished=None,
                files=[],
                main=None,
                error=None,
                error_code=None,
                webhook_state=None,
                webhook_attempts=0,
                webhook_status=None,
                webhook_delivered_at=None,
                webhook_error=None,
            )
        return dumps(record.body())

    async def _send(self, delivery: Delivery, body: str) -> Outcome:
        assert self.signer is not None
        try:
            target = parse_target(delivery.url)
            addresses = await self._resolve(target)
            reason = self.allow.refusal(target, addresses)
            if reason is not None:
                raise TargetRefused(reason)
        except TargetRefused as exc:
            return Outcome(ok=False, error=f"target refused at delivery: {exc}")
        now = datetime.now(UTC)
        payload = body.encode()
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.signer.sign(delivery.msg_id, now, payload),
            "webhook-event": delivery.event,  # informational (unsigned); the signed webhook-id names it too
        }
        url = httpx.URL(delivery.url)
        headers["host"] = url.netloc.decode("ascii")
        extensions = {"sni_hostname": target.host} if target.scheme == "https" and target.literal is None else {}
        pinned = url.copy_with(host=str(addresses[0]))  # connect to the address just checked, not a new lookup
        try:
            async with asyncio.timeout(self.timeout_s):
                request = self.client.build_request("POST", pinned, content=payload, headers=headers)
                request.extensions.update(extensions)
                response = await self.client.send(request, stream=True)
                await response.aclose()  # the body is not read: a receiver cannot make this process hold it
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(ok=False, retryable=True, error=f"no answer within {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return Outcome(ok=False, retryable=True, error=f"network error: {type(exc).__name__}: {exc}"[:300])
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(ok=True, status=status)
        if 300 <= status < 400:
            where = response.headers.get("location", "")[:200]
            return Outcome(
                ok=False,
                status=status,
                error=f"redirect {status} to {where or '(no Location)'}: not followed (webhooks never follow "
                "redirects; give the final URL)",
            )
        if status == 429 or status >= 500:
            return Outcome(ok=False, retryable=True, status=status, error=f"HTTP {status}")
        return Outcome(ok=False, status=status, error=f"HTTP {status} (a 4xx other than 429 is final)")

    async def _resolve(self, target: Target) -> list[IPAddress]:
        if target.literal is not None:
            return [target.literal]
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(DNS_TIMEOUT_S):
                infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise TargetRefused(f"{target.host} did not resolve within {DNS_TIMEOUT_S:g} s") from None
        except (OSError, UnicodeError):
            raise TargetRefused(f"{target.host} does not resolve") from None
        return _addresses(list(infos))

    async def _record(self, delivery: Delivery, outcome: Outcome) -> None:
        attempts = delivery.attempts + 1
        if delivery.event != "completed":  # start and progress: once, not retried, not recorded
            if not outcome.ok:
                log.info("webhook %s of job %s failed: %s", delivery.event, delivery.job_id, outcome.error)
            await self._settle(delivery, "done")
            return
        status = "" if outcome.status is None else str(outcome.status)
        n = str(attempts)
        if outcome.ok:
            fields = {
                "webhook_state": "delivered",
                "webhook_delivered_at": iso(datetime.now(UTC)),
                "webhook_error": "",
            }
            await self._settle(delivery, "done", fields={**fields, "webhook_status": status, "webhook_attempts": n})
            log.info("webhook of job %s delivered (attempt %d, HTTP %s)", delivery.job_id, attempts, status)
            return
        now = time.time()
        wait = webhooks.retry_wait(attempts, self.settings.webhook_retry_initial_s, self.rng)
        error = outcome.error or "failed"
        if outcome.retryable and now + wait <= delivery.first + self.settings.webhook_retry_for_s:
            fields = {
                "webhook_state": "retrying",
                "webhook_status": status,
                "webhook_error": error,
                "webhook_attempts": n,
            }
            await self._settle(delivery, "retry", next_at=now + wait, fields=fields)
            log.info(
                "webhook of job %s: attempt %d failed (%s); next in %.1f s", delivery.job_id, attempts, error, wait
            )
            return
        if outcome.retryable:
            error = f"gave up after {attempts} attempts in {now - delivery.first:.0f} s; the last: {error}"
        fields = {"webhook_state": "failed", "webhook_status": status, "webhook_error": error, "webhook_attempts": n}
        await self._settle(delivery, "done", fields=fields)
        log.warning("webhook of job %s failed: %s", delivery.job_id, error)

    async def _settle(
        self, delivery: Delivery, how: str, *, next_at: float = 0.0, fields: dict[str, str] | None = None
    ) -> None:
        """``done`` (out of the schedule) or ``retry`` at ``next_at``, and ``fields`` into the record, unless the
        delivery was queued anew or claimed again meanwhile."""
        pairs = [x for name, value in (fields or {}).items() for x in (name, value)]
        await self.settle_script(
            keys=[webhooks.SCHEDULE_KEY, record_key(delivery.job_id)],
            args=[delivery.member, delivery.lease, how, next_at, *pairs],
        )
