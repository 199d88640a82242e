"""Tenants' submission rates: the ``limits`` library's fixed window, counted in Redis so that every API process
shares the counts, and the IETF ``RateLimit`` headers that tell a client where it stands.

A tenant with ``rate = "600/minute"`` (``core.tenants``) may submit at most 600 jobs in a window of 60 s that starts
with its first submission (``limits``' fixed window: one counter per tenant that expires with its window, shared by
every API process; a burst can reach twice the rate across the end of one window and the start of the next). Past
the rate a submission is refused with 429 ``rate-limited`` and ``Retry-After`` (the seconds until the window ends).
Accepted or not, the answer carries the headers of draft-ietf-httpapi-ratelimit-headers (structured fields)::

    RateLimit-Policy: "submit";q=600;w=60
    RateLimit: "submit";r=599;t=60

``q`` is the quota, ``w`` the window in seconds, ``r`` what is left of it and ``t`` the seconds until it resets.

Why the fixed window: ``limits``' moving window is exact but walks its list to tell what is left (about one LINDEX
per earlier submission in the window: 18.7 commands a submission measured after 33 in the window, so up to hundreds
at "600/minute"), and its sliding window counter costs 13 commands; the fixed window costs 4 (a counter's INCRBY, and
EXPIRE on the first, in one script; then GET and TTL for the headers). A tenant without a rate costs nothing here.
"""

from __future__ import annotations

import math
import time

from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter

from app.problems import Problem
from core.tenants import Tenant, Tenants

POLICY = "submit"


class Quotas:
    """The rate limiter of one API process (None of it is built without a tenant that has a rate)."""

    def __init__(self, redis_url: str, tenants: Tenants, namespace: str) -> None:
        self.namespace = namespace  # the queue name: stacks sharing a Redis keep apart
        self.limiter: FixedWindowRateLimiter | None = None
        if any(t.rate is not None for t in tenants):
            self.limiter = FixedWindowRateLimiter(RedisStorage(redis_url))

    def take(self, tenant: Tenant) -> dict[str, str]:
        """One submission of ``tenant``: its RateLimit headers, or a 429 ``Problem`` (with them) past its rate."""
        if tenant.rate is None or self.limiter is None:
            return {}
        item = tenant.rate
        allowed = self.limiter.hit(item, self.namespace, tenant.name)
        stats = self.limiter.get_window_stats(item, self.namespace, tenant.name)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        window = item.get_expiry()
        headers = {
            "RateLimit-Policy": f'"{POLICY}";q={item.amount};w={window}',
            "RateLimit": f'"{POLICY}";r={max(stats.remaining, 0)};t={reset}',
        }
        if not allowed:
            raise Problem(
                429,
                "rate-limited",
                f"tenant {tenant.name} may submit {item.amount} jobs per {window} s ({tenant.rate_text}); "
                f"a place frees up in {max(reset, 1)} s",
                headers={**headers, "Retry-After": str(max(reset, 1))},
            )
        return headers
