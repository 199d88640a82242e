"""Webhook deliveries in Redis: their keys and scripts, the retry schedule, and the target policy (no I/O here).

A job submitted with a ``webhook`` keeps its URL and events in its record (``core.record``), and its deliveries
live there too: the only other key is the schedule. The transitions queue the deliveries themselves, in the same
script that moves the record, so a crash can neither lose a delivery nor queue one twice for one event:
``START`` queues ``start``; ``EVENT`` queues ``progress`` at most every ``PROGRESS_INTERVAL_S`` (a pending one is
replaced by the newer); ``FINISH`` queues ``completed`` and stores the body of its ``done`` event in the record
(``webhook_body``) as the delivery's payload. A job without a webhook pays no Redis command for any of this: the
scripts read the webhook fields with reads they already make.

| key | type | what |
| --- | --- | --- |
| ``svc:webhooks`` | sorted set | ``<job>:<event>`` (``start``, ``progress``, ``completed``) -> unix time of its next attempt, or the end of its lease while a process sends it |

The API processes send them (``app.webhooks``): each claims the due deliveries with ``CLAIM`` (which moves their
score to the end of a lease, so no two processes send the same attempt, and a process that dies while sending
leaves them to be tried again when the lease ends), renders ``start`` and ``progress`` from the record as it is
then, and settles each with ``SETTLE`` (only while its lease is still the score), which also writes the outcome of
a ``completed`` delivery into the record. A delivery whose record has expired is dropped.

``completed`` is retried on network errors, 429 and 5xx with exponential backoff and jitter (``retry_wait``) for
up to ``WEBHOOK_RETRY_FOR_S``; every retry of a delivery has the same ``webhook-id``. ``start`` is sent once and
``progress`` at most every ``PROGRESS_INTERVAL_S``, neither retried. A redirect is a failure (never followed),
another 4xx a final one.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from core.protocol import KEY_PREFIX

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEDULE_KEY = f"{KEY_PREFIX}:webhooks"
PROGRESS_INTERVAL_S = 0.5  # the most often a job's progress is delivered
RETRY_WAIT_MAX_S = 900.0  # the longest wait between two attempts of a delivery


def member(job_id: str, event: str) -> str:
    """A delivery's member in ``SCHEDULE_KEY``: ``<job>:<event>``."""
    return f"{job_id}:{event}"


def message_id(job_id: str, event: str) -> str:
    """The ``webhook-id`` of a job's ``completed`` delivery: the same for every retry and for a redelivery."""
    return f"{job_id}-{event}"


def retry_wait(attempts: int, initial_s: float, rng: random.Random | None = None) -> float:
    """Seconds until the next attempt after ``attempts`` failed ones: ``initial_s * 2**(attempts - 1)`` plus a
    jitter of up to ``initial_s``, at most ``RETRY_WAIT_MAX_S``. The formula is stamina's (the retry library the
    worker uses); the loop is not, because a delivery waits in Redis, not in a process that may die meanwhile."""
    jitter = (rng or random).uniform(0, initial_s)
    return float(min(RETRY_WAIT_MAX_S, initial_s * 2 ** max(attempts - 1, 0) + jitter))


def check_secret(secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret (Standard Webhooks); ValueError for anything else."""
    if not secret.startswith("whsec_"):
        raise ValueError("WEBHOOK_SECRET must look like whsec_<base64>, as Standard Webhooks secrets do")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("WEBHOOK_SECRET: the part after whsec_ is not base64") from exc
    if len(key) < 24:
        raise ValueError("WEBHOOK_SECRET: use at least 24 random bytes (python -c 'import secrets, base64; ...')")
    return key


# ---- the target policy ------------------------------------------------------------------------------------------

#: Cloud metadata services: never a webhook target, whatever WEBHOOK_ALLOW says.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata.azure.internal"})
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
_HOST_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)


class TargetRefused(ValueError):
    """A webhook URL the policy refuses; the message says why (no secret in it)."""


@dataclass(frozen=True)
class Target:
    """A webhook URL taken apart: ``host`` in lower case (an IPv6 literal without brackets)."""

    url: str
    scheme: str
    host: str
    port: int

    @property
    def literal(self) -> IPAddress | None:
        """The host as an IP address, when the URL names one."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


def parse_target(url: str) -> Target:
    """Split a webhook URL; TargetRefused for anything but an absolute http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise TargetRefused("only http and https URLs are allowed")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise TargetRefused("the URL has no host")
    if any(c.isspace() for c in url):
        raise TargetRefused("the URL contains white space")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_RE.fullmatch(host):
            raise TargetRefused(f"{host!r} is not a valid host name") from None
    return Target(url, scheme, host, port or (443 if scheme == "https" else 80))


def _unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped, 6to4 or Teredo IPv6 address (they reach it), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if inner is not None:
            return inner
    return address


def special_kind(address: IPAddress) -> str | None:
    """What makes ``address`` internal (``loopback``, ``private``, ...), or None for a public unicast address."""
    address = _unwrap(address)
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    for kind, flag in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if flag:
            return kind
    return None if address.is_global else "non-public"


@dataclass(frozen=True)
class AllowList:
    """``WEBHOOK_ALLOW``: host names, addresses and CIDRs, and ``public`` (every public unicast address)."""

    public: bool
    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, text: str) -> AllowList:
        public, hosts, networks = False, set(), []
        for raw in text.split(","):
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            if entry == "public":
                public = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if not _HOST_RE.fullmatch(entry):
                raise ValueError(f"WEBHOOK_ALLOW: {raw.strip()!r} is no host name, address or CIDR")
            hosts.add(entry)
        return cls(public, frozenset(hosts), tuple(networks))

    def refusal(self, target: Target, addresses: Iterable[IPAddress]) -> str | None:
        """Why ``target`` (resolved to ``addresses``) may not be sent to, or None when it may. Every address
        must pass: a host listed by name passes as it resolves; metadata services never do."""
        found = list(addresses)
        if target.host in METADATA_HOSTS or any(_unwrap(a) in METADATA_ADDRESSES for a in found):
            return f"{target.host} is a cloud metadata service"
        if not found:
            return f"{target.host} does not resolve"
        if target.host in self.hosts:
            return None
        for address in found:
            inner = _unwrap(address)
            if any(inner in net or address in net for net in self.networks):
                continue
            kind = special_kind(address)
            if kind is None and self.public:
                continue
            where = "" if str(address) == target.host else f" resolves to {address}, which"
            return f"{target.host}{where} is a {kind or 'public'} address that WEBHOOK_ALLOW does not allow"
        return None


# ---- the scripts --------------------------------------------------------------------------------------------------

#: Lua shared by the record's transitions (``core.record``): whether a record's webhook wants an event.
QUEUE_LUA = """
local function wants(url, events, name)
  if not url or url == '' then return false end
  return string.find(',' .. (events or 'completed') .. ',', ',' .. name .. ',', 1, true) ~= nil
end
"""

#: The record's fields a delivery needs besides what ``GET /jobs/{id}`` shows (``core.record.VIEW_FIELDS``).
DELIVERY_FIELDS = ("webhook_body", "webhook_first", "webhook_progress_id")

# KEYS: schedule. ARGV: now, lease end, most to take, record prefix, then the record fields to read ('state' first).
# Returns {member, the record's values} for each due delivery, now leased to the caller until the lease end (its
# score); a delivery whose record is gone is dropped.
CLAIM = """
local out = {}
local names = {}
for i = 5, #ARGV do names[#names + 1] = ARGV[i] end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do
  local job = string.match(m, '^(.*):[^:]+$')
  local rec = redis.call('HMGET', ARGV[4] .. job, unpack(names))
  if not rec[1] then
    redis.call('ZREM', KEYS[1], m)
  else
    redis.call('ZADD', KEYS[1], ARGV[2], m)
    out[#out + 1] = {m, rec}
  end
end
return out
"""

# KEYS: schedule, record. ARGV: member, lease end (as claimed), 'retry' or 'done', next attempt time, then record
# field/value pairs (written only while the record exists).
# Returns 1, or 0 when the caller no longer holds the lease (queued anew meanwhile, or claimed again): then nothing
# is written.
SETTLE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == 'retry' then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
if #ARGV > 4 and redis.call('EXISTS', KEYS[2]) == 1 then
  local fields = {}
  for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[2], unpack(fields))
end
return 1
"""

# KEYS: schedule, record. ARGV: member, now, the body to send if the record keeps none.
# Queues a job's ``completed`` delivery again, now, with a new retry window and the body its end stored. Returns 1,
# or 0 when the record is gone.
REDELIVER = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSETNX', KEYS[2], 'webhook_body', ARGV[3])
redis.call('HSET', KEYS[2], 'webhook_state', 'pending', 'webhook_error', '', 'webhook_first', ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Delivery:
    """One claimed delivery (``CLAIM``): the job, the event, and the job record's fields as they were claimed."""

    member: str
    job_id: str
    event: str
    record: dict[str, str]
    lease: float

    @classmethod
    def from_claim(cls, entry: Sequence[Any], fields: Sequence[str], lease: float) -> Delivery:
        def text(value: Any) -> str:
            return value.decode() if isinstance(value, bytes) else str(value)

        name = text(entry[0])
        job_id, _, event = name.rpartition(":")
        record = {f: text(v) for f, v in zip(fields, entry[1] or (), strict=False) if v is not None}
        return cls(member=name, job_id=job_id, event=event, record=record, lease=lease)

    @property
    def url(self) -> str:
        return self.record.get("webhook", "")

    @property
    def msg_id(self) -> str:
        """The ``webhook-id``: ``<job>-completed`` for every attempt of the completed delivery (and a redelivery),
        ``<job>-start-<attempt>``, ``<job>-progress-<stream id of the progress event>``."""
        if self.event == "start":
            return f"{self.job_id}-start-{self.record.get('attempt', '1')}"
        if self.event == "progress":
            return f"{self.job_id}-progress-{self.record.get('webhook_progress_id', '')}"
        return message_id(self.job_id, self.event)

    @property
    def first(self) -> float:
        """Unix time the delivery was queued (or redelivered): the start of its retry window."""
        try:
            return float(self.record.get("webhook_first") or 0)
        except ValueError:
            return 0.0

    @property
    def attempts(self) -> int:
        value = self.record.get("webhook_attempts") or "0"
        return int(value) if value.isdigit() else 0
