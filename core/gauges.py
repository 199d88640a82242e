"""The gauges an API computes from Redis when it is scraped: queue depth, jobs running, pending work (torch-free).

One read-only script per scrape (``SCRAPE``), never anything per job: the length of every queue list (each tenant's
three, ``core.tenants``), the kind and parameters of at most ``QUEUE_SCAN`` queued jobs from their heads, the kind, parameters and progress of every job that
a live worker holds and runs, and what each live worker published with its heartbeat (its measured seconds per
step, ``step_s``, by ``core.operations.cost_key``).

Pending work (the autoscaling signal) is, over every queued and running job, its remaining steps
(``core.operations.remaining_steps``) times its step weight (``step_weight``) times the seconds per weighted step
of its cost key, averaged over the live workers that measured it (else the last value this process saw, else
``PENDING_STEP_S_DEFAULT``). Beyond the ``QUEUE_SCAN`` jobs read, the rest of the queue counts at the mean of the
ones read. It is in seconds of one worker's compute: N workers clear it in about 1/N of that.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.lifecycle import Lifecycle
from core.operations import cost_key, remaining_steps, step_weight
from core.protocol import KEY_PREFIX, capabilities_key
from core.record import RECORD_PREFIX, run

#: the most queued jobs one scrape reads (from the head of the queue); the rest is extrapolated
QUEUE_SCAN = 10_000

# KEYS: live workers (sorted set), capabilities hash, then every queue list.
# ARGV: now (unix seconds), how many queued jobs to read, record prefix, held-list prefix.
# Returns {queue length, {kind, params, ...} of the queued jobs read, {kind, params, progress, ...} of the running
# jobs of live workers, {capabilities JSON of each live worker}}.
SCRAPE = """
local depth = 0
local queued = {}
local budget = tonumber(ARGV[2])
for i = 3, #KEYS do
  depth = depth + redis.call('LLEN', KEYS[i])
  if budget > 0 then
    local ids = redis.call('LRANGE', KEYS[i], 0, budget - 1)
    budget = budget - #ids
    for _, id in ipairs(ids) do
      local f = redis.call('HMGET', ARGV[3] .. id, 'kind', 'params')
      queued[#queued + 1] = f[1] or ''
      queued[#queued + 1] = f[2] or ''
    end
  end
end
local running = {}
local caps = {}
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
  caps[#caps + 1] = redis.call('HGET', KEYS[2], w) or ''
  for _, id in ipairs(redis.call('LRANGE', ARGV[4] .. w, 0, -1)) do
    local f = redis.call('HMGET', ARGV[3] .. id, 'state', 'kind', 'params', 'progress')
    if f[1] == 'running' then
      running[#running + 1] = f[2] or ''
      running[#running + 1] = f[3] or ''
      running[#running + 1] = f[4] or ''
    end
  end
end
return {depth, queued, running, caps}
"""


@dataclass
class Gauges:
    """What one scrape read (see the module docstring)."""

    queue_depth: int = 0
    running: int = 0
    workers: int = 0
    pending_work_s: float = 0.0
    queued_read: int = 0
    step_s: dict[str, float] = field(default_factory=dict)  # seconds per weighted step, by cost key


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _json(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def merge_step_times(published: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The workers' ``step_s`` maps averaged per key (workers that have not measured a key do not count)."""
    sums: dict[str, list[float]] = {}
    for info in published:
        for key, value in (info.get("step_s") or {}).items():
            if isinstance(value, int | float) and value > 0:
                sums.setdefault(str(key), []).append(float(value))
    return {key: sum(values) / len(values) for key, values in sums.items()}


class GaugeReader:
    """Reads ``Gauges`` for one queue (one script per call); remembers the step times it has seen, so that a
    key keeps its last measured value while no live worker publishes it."""

    def __init__(self, lifecycle: Lifecycle, *, default_step_s: float, scan: int = QUEUE_SCAN) -> None:
        self.lifecycle = lifecycle
        self.default_step_s = default_step_s
        self.scan = scan
        self.script = lifecycle.redis.register_script(SCRAPE)
        self.known: MutableMapping[str, float] = {}

    def read(self) -> Gauges:
        lc = self.lifecycle
        depth, queued, running, caps = run(
            self.script,
            [lc.workers_key, capabilities_key(), *lc.queue_keys()],
            [time.time(), self.scan, RECORD_PREFIX, f"{KEY_PREFIX}:held:"],
        )
        published = [info for raw in caps if isinstance(info := _json(_text(raw)), dict)]
        self.known.update(merge_step_times(published))
        out = Gauges(queue_depth=int(depth), workers=len(caps), step_s=dict(self.known))
        parsed: dict[str, Any] = {}

        def cost(kind: str, params_text: str, progress: Any) -> float:
            params = parsed.get(params_text)
            if params is None:
                params = parsed[params_text] = _json(params_text) or {}
            steps = remaining_steps(kind, params, progress)
            per_step = self.known.get(cost_key(kind, params), self.default_step_s)
            return steps * step_weight(kind, params) * per_step

        queued_s = 0.0
        for i in range(0, len(queued), 2):
            queued_s += cost(_text(queued[i]), _text(queued[i + 1]), None)
        out.queued_read = len(queued) // 2
        if out.queued_read and out.queue_depth > out.queued_read:
            queued_s *= out.queue_depth / out.queued_read  # the unread rest at the mean of the ones read
        running_s = 0.0
        for i in range(0, len(running), 3):
            progress = _json(_text(running[i + 2]))
            running_s += cost(
                _text(running[i]), _text(running[i + 1]), progress if isinstance(progress, dict) else None
            )
            out.running += 1
        out.pending_work_s = queued_s + running_s
        return out
