"""The result cache's key: what determines a job's bytes, hashed.

The same request with the same seed gives the same PNG (``STYLE.md``): a job's output is a function of its
operation, its parameters as validated (the seed filled in), the bytes of its uploads, the model weights it runs and
the code of its operation. The key is the SHA-256 of all of them::

    {"operation", "version" (Operation.version), "params" (model_dump, sorted keys), "seed",
     "uploads": {name: SHA-256 of the bytes}, "models": {registry name: digest}}

The model digests come from the live workers (each publishes a digest of every model it loaded, computed once at
load: ``workers.registry.model_digest``), read from their published capabilities at most a second old; when the
live workers that hold a model disagree on its digest (a rollout in progress), or none publishes one, there is no
key: the job runs and is not cached.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from core.operations import Operation, models_used


def model_digests(infos: Mapping[str, Mapping[str, Any]], names: tuple[str, ...]) -> dict[str, str] | None:
    """The digest of each model of ``names`` that every live worker holding it publishes; None when one is
    missing or the workers disagree."""
    out: dict[str, str] = {}
    for name in names:
        seen = {
            (info.get("models") or {}).get(name, {}).get("digest")
            for info in infos.values()
            if name in (info.get("models") or {})
        }
        if len(seen) != 1:
            return None
        digest = seen.pop()
        if not isinstance(digest, str) or not digest:
            return None
        out[name] = digest
    return out


def request_key(
    op: Operation, params: Mapping[str, Any], uploads: Mapping[str, bytes], digests: Mapping[str, str]
) -> str:
    """The SHA-256 (hex) of what determines the output of a job (see the module docstring)."""
    payload = {
        "operation": op.name,
        "version": op.version,
        "params": dict(params),
        "seed": params.get("seed"),
        "uploads": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(uploads.items())},
        "models": dict(sorted(digests.items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def cache_digest(
    op: Operation, params: Mapping[str, Any], uploads: Mapping[str, bytes], infos: Mapping[str, Mapping[str, Any]]
) -> str | None:
    """The request's key, or None when the live workers' model digests do not allow one."""
    digests = model_digests(infos, models_used(op.name, params))
    return None if digests is None else request_key(op, params, uploads, digests)
