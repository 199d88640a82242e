"""Tenants: who may call the service, with which weight and limits, and the queues their jobs wait in (torch-free).

``TENANTS_FILE`` is a TOML file read once at start by the API and by the workers (the workers need the weights)::

    [tenants.alice]
    keys = ["key-alice"]        # X-API-Key: <key>, or Authorization: Bearer <key>
    weight = 2                  # share of admissions and of the worker's rows when several tenants wait (default 1)
    max_queued = 100            # jobs waiting or running at once (default: no limit)
    rate = "600/minute"         # submissions (default: no limit); any `limits` string ("5/second", "100/hour")

It is validated when read (``load_tenants``): tenant names are ``[A-Za-z0-9][A-Za-z0-9_-]*`` (they name queues and
metric labels), every key is unique across the file, weights are positive, ``rate`` parses with ``limits.parse``,
and unknown fields are refused (a misspelled ``max_queud`` must not silently mean "no limit").

A key is found by its SHA-256 (``Tenants.identify``): the table is a dict keyed by digest, so no comparison of the
secret itself happens, let alone one whose time depends on how many characters matched; the keys themselves are not
kept after loading. Nothing here logs a key.

Without the file there is one tenant, ``default`` (``Tenants.single``), ``API_KEY`` works as before, and the queues
are those of before: ``QUEUE_NAME`` itself for normal priority (plus ``QUEUE_NAME:high`` and ``QUEUE_NAME:low``).
With the file each tenant has three RQ queues, ``<QUEUE_NAME>:<tenant>:high|normal|low`` (``queue_names``), so RQ's
own tools show them.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from limits import RateLimitItem, parse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_TENANT = "default"
PRIORITIES: tuple[str, ...] = ("high", "normal", "low")
Priority = Literal["low", "normal", "high"]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class TenantsFileError(ValueError):
    """TENANTS_FILE cannot be read or is not valid; the message says where (never a key)."""


class _TenantEntry(BaseModel):
    """One ``[tenants.<name>]`` table of the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[str] = Field(min_length=1)
    weight: float = Field(1.0, gt=0, le=1000)
    max_queued: int | None = Field(None, ge=1)
    rate: str | None = None


@dataclass(frozen=True)
class Tenant:
    """A tenant as the service uses it: its name, weight and limits (its keys only as digests, in ``Tenants``)."""

    name: str
    weight: float = 1.0
    max_queued: int | None = None
    rate: RateLimitItem | None = None
    rate_text: str | None = None


def key_digest(key: str) -> str:
    """SHA-256 of an API key (hex): what the tenant table is keyed by."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Tenants:
    """The tenant table. ``from_file`` is False for the single ``default`` tenant of a deployment without a file."""

    by_name: Mapping[str, Tenant]
    by_digest: Mapping[str, Tenant] = field(default_factory=dict)
    from_file: bool = False

    @classmethod
    def single(cls) -> Tenants:
        return cls({DEFAULT_TENANT: Tenant(DEFAULT_TENANT)})

    def identify(self, key: str | None) -> Tenant | None:
        """The tenant of an API key, or None (a dict lookup by the key's SHA-256)."""
        if not key:
            return None
        return self.by_digest.get(key_digest(key))

    def get(self, name: str) -> Tenant:
        """The tenant named ``name``; an unknown name (a job of a tenant since removed from the file) gets the
        defaults, weight 1 and no limit."""
        return self.by_name.get(name) or Tenant(name)

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)


def parse_tenants(data: Mapping[str, Any], *, source: str = "TENANTS_FILE") -> Tenants:
    """The tenant table from the parsed TOML (see the module docstring); ``TenantsFileError`` if it is not valid."""
    unknown = set(data) - {"tenants"}
    if unknown:
        raise TenantsFileError(f"{source}: unknown top-level entries {sorted(unknown)} (only [tenants.<name>] tables)")
    tables = data.get("tenants")
    if not isinstance(tables, dict) or not tables:
        raise TenantsFileError(f"{source}: no tenant; add at least one [tenants.<name>] table")
    by_name: dict[str, Tenant] = {}
    by_digest: dict[str, Tenant] = {}
    for name, table in tables.items():
        if not NAME_RE.fullmatch(name):
            raise TenantsFileError(
                f"{source}: tenant name {name!r} must be 1-64 letters, digits, '_' or '-' (it names queues and labels)"
            )
        try:
            entry = _TenantEntry.model_validate(table)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'table'}: {e['msg']}"
                for e in exc.errors(include_input=False, include_url=False)
            )
            raise TenantsFileError(f"{source}: tenant {name!r}: {problems}") from None
        rate = None
        if entry.rate is not None:
            try:
                rate = parse(entry.rate)
            except ValueError:
                raise TenantsFileError(
                    f"{source}: tenant {name!r}: rate {entry.rate!r} is not a rate such as '600/minute'"
                ) from None
        tenant = Tenant(name, entry.weight, entry.max_queued, rate, entry.rate)
        by_name[name] = tenant
        for i, key in enumerate(entry.keys):
            if not key.strip() or key != key.strip():
                raise TenantsFileError(f"{source}: tenant {name!r}: key {i + 1} is blank or has spaces at its ends")
            digest = key_digest(key)
            if digest in by_digest:
                other = by_digest[digest].name
                raise TenantsFileError(f"{source}: tenant {name!r}: key {i + 1} is also a key of tenant {other!r}")
            by_digest[digest] = tenant
    return Tenants(by_name, by_digest, from_file=True)


def load_tenants(path: Path | None) -> Tenants:
    """The tenant table of ``TENANTS_FILE`` (``path``), or the single ``default`` tenant without one."""
    if path is None:
        return Tenants.single()
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise TenantsFileError(f"TENANTS_FILE {path}: cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise TenantsFileError(f"TENANTS_FILE {path}: not valid TOML ({exc})") from None
    return parse_tenants(data, source=f"TENANTS_FILE {path}")


# ---- queues ------------------------------------------------------------------------------------------------------


def queue_name(base: str, tenant: str, priority: str, *, per_tenant: bool) -> str:
    """The RQ queue of a tenant's jobs of one priority: ``<base>:<tenant>:<priority>`` with a tenants file;
    without one, ``<base>`` for normal priority (the queue of before) and ``<base>:high`` / ``<base>:low``."""
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}")
    if per_tenant:
        return f"{base}:{tenant}:{priority}"
    return base if priority == "normal" else f"{base}:{priority}"


def queue_names(base: str, tenant: str, *, per_tenant: bool) -> tuple[str, str, str]:
    """The tenant's three queues, high first (the order a claim takes them in)."""
    high, normal, low = (queue_name(base, tenant, p, per_tenant=per_tenant) for p in PRIORITIES)
    return high, normal, low
