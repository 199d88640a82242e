"""The step driver: the one loop that advances every sampling request, alone or batched across requests.

A *request* is a resumable sampling state (a DeepFloyd denoising run, an MNIST ODE solve): its sample, its
place in its own time grid, its guidance rule, its hook and its generator. At each step it names the
*network* it needs and the network *inputs* for its next evaluation (a dict of tensors with the same number
of rows: every branch of its guidance, every view, conditional and unconditional). A driver step is:

1. per network, take the active requests in the order they last advanced (longest waiting first) while
   their rows fit in ``max_rows`` (a request larger than ``max_rows`` alone still runs, in chunks); when the
   requests belong to several *groups* and do not all fit, choose them by weighted fair share instead (below);
2. concatenate their inputs row-wise and run **one** forward (chunks of at most ``max_rows`` rows; a chunk
   that runs out of memory is split in halves and retried before anyone fails);
3. split the output rows back and let each request apply its own rule, step, hook and callback.

Requests with different operations and settings share a forward as long as they use the same network; a
request submitted between steps joins at the next step, a finished one leaves at once. An exception raised
by one request (its inputs, its step, its callback: a cancellation) ends that request only. A forward that
fails for a reason other than memory is retried one request at a time, so that only the request whose rows
cause the failure fails.

A request may carry a *deadline* (``time.monotonic()`` seconds): before each step the driver ends every request
whose deadline has passed with ``DeadlineExceeded``, so a job's time limit is enforced between two steps, by the
loop itself (no timer, no exception raised into another thread).

**Fair share.** A request may carry a *group* (an opaque key: the worker passes its job's tenant) and a *weight*.
When one forward cannot take every waiting row of a network and the waiting requests belong to more than one
group, the rows are chosen by deficit round robin (Shreedhar and Varghese, 1996) over the groups, each group's
requests FIFO (longest waiting first): on its turn a group's deficit grows by ``weight * quantum`` rows (the
quantum is the largest request's rows, so a group of weight >= 1 sends at least one request per turn) and it
sends requests while their rows fit in its deficit. A turn cut short by a full forward goes on at the next step
(the round-robin position and the deficits persist per network), so over many steps each backlogged group gets
rows in proportion to its weight; a group with nothing left to send loses its deficit. Rows the round leaves
free are then filled with any request that fits, charged to its group's deficit (work-conserving; the group pays
it back on later turns). A request larger than ``max_rows`` still runs, alone, when its group's turn comes.

``drive(request)`` runs one request alone on a fresh driver: the single-request path is this same loop.
No threads here; ``workers.batcher`` runs a driver in a thread for the worker's jobs in flight.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

import torch
from torch import Tensor

__all__ = ["DeadlineExceeded", "Network", "Request", "Runner", "StepDriver", "drive", "drive_all", "network_key"]

logger = logging.getLogger(__name__)

Inputs = dict[str, Tensor]
"""Network inputs of some rows: every tensor (n, ...) with the same n."""


@runtime_checkable
class Network(Protocol):
    """``network(**inputs)`` -> a tensor (N, ...) or a tuple of tensors (N, ...), one row per input row.

    Rows must be independent: row i of the output depends only on row i of the inputs (no batch statistics).
    Networks are grouped by ``network_key``: an object may name the module it runs with a ``key`` attribute.
    """

    def __call__(self, **inputs: Tensor) -> Any: ...


class Request(Protocol):
    """A resumable sampling state (see the module docstring)."""

    @property
    def network(self) -> Any:
        """The network its rows go to (a ``Network``)."""
        ...

    def inputs(self) -> Inputs:
        """The network inputs of the next evaluation (n rows)."""
        ...

    def advance(self, output: Any) -> bool:
        """Consume the output rows of that evaluation; True when the request has finished."""
        ...


Runner = Callable[[Request], None]
"""Runs a request to its end (raising its error): ``drive`` alone, or a worker's batcher shared by many jobs."""


class DeadlineExceeded(TimeoutError):
    """A request was still running when its deadline passed; the driver ended it before its next step."""


def network_key(network: Any) -> Any:
    """What requests must share to share a forward: ``network.key`` if it has one, else the object itself."""
    return getattr(network, "key", network)


def _rows(inputs: Inputs) -> int:
    sizes = {int(t.shape[0]) for t in inputs.values()}
    if len(sizes) != 1:
        raise ValueError(f"every network input needs the same number of rows, got {sorted(sizes)}")
    return sizes.pop()


def _cat(parts: Sequence[Inputs]) -> Inputs:
    if len(parts) == 1:
        return parts[0]
    keys = parts[0].keys()
    for p in parts[1:]:
        if p.keys() != keys:
            raise ValueError(f"requests of one network pass different inputs: {sorted(keys)} vs {sorted(p.keys())}")
    return {k: torch.cat([p[k] for p in parts]) for k in keys}


def _slice(output: Any, start: int, stop: int) -> Any:
    if isinstance(output, Tensor):
        return output[start:stop]
    if isinstance(output, tuple):
        parts: list[Any] = [None if o is None else o[start:stop] for o in output]
        return cast(Any, type(output))(*parts) if hasattr(output, "_fields") else tuple(parts)
    raise TypeError(f"a network must return a tensor or a tuple of tensors, got {type(output).__name__}")


def _join(outputs: Sequence[Any]) -> Any:
    if len(outputs) == 1:
        return outputs[0]
    first = outputs[0]
    if isinstance(first, Tensor):
        return torch.cat(list(outputs))
    parts: list[Any] = [None if first[i] is None else torch.cat([o[i] for o in outputs]) for i in range(len(first))]
    return cast(Any, type(first))(*parts) if hasattr(first, "_fields") else tuple(parts)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _forward(network: Network, inputs: Inputs, max_rows: int | None) -> Any:
    """One forward over all rows: chunks of at most ``max_rows``; a chunk that runs out of memory is split in
    halves and retried (down to one row, which then raises)."""
    n = _rows(inputs)
    if max_rows is not None and n > max_rows:
        bounds = [*range(0, n, max_rows), n]
        return _join(
            [_forward(network, {k: v[a:b] for k, v in inputs.items()}, max_rows) for a, b in itertools.pairwise(bounds)]
        )
    try:
        return network(**inputs)
    except Exception as exc:
        if not _is_oom(exc) or n == 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = n // 2
        logger.warning("out of memory on a forward of %d rows; retrying as %d + %d", n, half, n - half)
        return _join(
            [
                _forward(network, {k: v[:half] for k, v in inputs.items()}, max_rows),
                _forward(network, {k: v[half:] for k, v in inputs.items()}, max_rows),
            ]
        )


@dataclass(eq=False)
class _Entry:
    request: Request
    order: int  # when it last advanced (or was submitted): smaller = has waited longer
    deadline: float | None = None  # time.monotonic() past which it is ended
    error: BaseException | None = None
    done: bool = False
    group: Hashable = None  # fair share: whose request it is (opaque)
    weight: float = 1.0


_Chosen = tuple[_Entry, Inputs, int]


@dataclass
class FairShare:
    """Deficit round robin over the groups of one network's requests (see the module docstring), kept across
    steps: the round-robin ring, whose turn it is (and whether that turn already got its quantum), the deficits."""

    ring: list[Hashable] = field(default_factory=list)
    deficit: dict[Hashable, float] = field(default_factory=dict)
    turn: Hashable = None
    started: bool = False  # the group of ``turn`` already got its quantum for this turn

    def pick(self, items: Sequence[_Chosen], budget: int) -> list[_Chosen]:
        """The requests of one forward of at most ``budget`` rows, from ``items`` (longest waiting first)."""
        queues: dict[Hashable, deque[_Chosen]] = {}
        weights: dict[Hashable, float] = {}
        for item in items:
            queues.setdefault(item[0].group, deque()).append(item)
            weights.setdefault(item[0].group, item[0].weight)
        self._follow(queues)
        quantum = max(n for _, _, n in items)
        left, chosen = budget, set()
        picked: list[_Chosen] = []
        i = self.ring.index(self.turn)
        for _ in range(100_000):  # bound: every round adds weight * quantum > 0 rows of deficit
            if not queues or left <= 0:
                self.turn, self.started = self.ring[i], False
                break
            group = self.ring[i]
            queue = queues.get(group)
            if queue:
                if not self.started:
                    self.deficit[group] = self.deficit.get(group, 0.0) + weights[group] * quantum
                    self.started = True
                full = False
                while queue and queue[0][2] <= self.deficit[group]:
                    n = queue[0][2]
                    if n > left and (picked or left < budget):
                        full = True  # the forward is full: this turn goes on at the next step
                        break
                    item = queue.popleft()
                    picked.append(item)
                    chosen.add(id(item[0]))
                    self.deficit[group] -= n
                    left -= n
                if full:
                    self.turn = group
                    break
                if not queue:  # all of its requests go: nothing left waiting, so no deficit kept
                    self.deficit[group] = 0.0
                    del queues[group]
            i = (i + 1) % len(self.ring)
            self.started = False
        for item in items:  # rows left free: anyone who fits, charged to its group
            if left <= 0:
                break
            if id(item[0]) not in chosen and item[2] <= left:
                picked.append(item)
                chosen.add(id(item[0]))
                self.deficit[item[0].group] = self.deficit.get(item[0].group, 0.0) - item[2]
                left -= item[2]
        order = {id(item[0]): k for k, item in enumerate(items)}
        return sorted(picked, key=lambda item: order[id(item[0])])

    def _follow(self, queues: Mapping[Hashable, Any]) -> None:
        """The ring of the groups waiting now (new ones at its end); the turn passes on from a group that left."""
        if self.turn not in queues:
            after = self.ring[self.ring.index(self.turn) + 1 :] + self.ring if self.turn in self.ring else []
            self.turn = next((g for g in after if g in queues), None)
            self.started = False
        for group in list(self.deficit):
            if group not in queues:
                del self.deficit[group]
        self.ring = [g for g in self.ring if g in queues] + [g for g in queues if g not in self.ring]
        if self.turn is None:
            self.turn = self.ring[0]


@dataclass
class StepDriver:
    """Advances many requests one network evaluation at a time (see the module docstring).

    Attributes:
        max_rows: the most rows of one forward (None = no limit).
        on_finish: called with (request, error or None) when a request leaves the driver.
        on_forward: called after each batched forward and the steps it fed with (network, [(request, its rows)],
            start, end) (``time.perf_counter()`` seconds), for metrics; an error it raises is logged, not raised.
    """

    max_rows: int | None = None
    on_finish: Callable[[Request, BaseException | None], None] | None = None
    on_forward: Callable[[Any, list[tuple[Request, int]], float, float], None] | None = None
    _entries: list[_Entry] = field(default_factory=list)
    _clock: itertools.count[int] = field(default_factory=itertools.count)
    _shares: dict[Any, FairShare] = field(default_factory=dict)  # per network key
    forwards: int = 0  # forwards run so far (for tests and benchmarks)
    rows: int = 0  # rows they held

    def __post_init__(self) -> None:
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")

    def submit(
        self, request: Request, *, deadline: float | None = None, group: Hashable = None, weight: float = 1.0
    ) -> Request:
        """Add a request; it joins at the next step. Past ``deadline`` (``time.monotonic()``) it is ended with
        ``DeadlineExceeded`` before the next step. ``group`` and ``weight``: its share when the rows of several
        groups do not fit in one forward (see the module docstring)."""
        if weight <= 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        self._entries.append(_Entry(request, next(self._clock), deadline, group=group, weight=weight))
        return request

    def discard(self, request: Request) -> bool:
        """Remove a request without finishing it (its owner gave up on it); True if it was active."""
        for entry in self._entries:
            if entry.request is request:
                self._entries.remove(entry)
                return True
        return False

    @property
    def active(self) -> int:
        return len(self._entries)

    def run(self) -> None:
        """Step until every request has left."""
        while self._entries:
            self.step()

    def step(self) -> None:
        """One evaluation for the requests that fit: per network, one forward (see the module docstring)."""
        now = time.monotonic()
        for entry in self._entries:
            if entry.deadline is not None and now >= entry.deadline:
                self._fail(entry, DeadlineExceeded("the request ran past its deadline"))
        groups: dict[Any, list[_Entry]] = {}
        for entry in sorted((e for e in self._entries if not e.done), key=lambda e: e.order):
            groups.setdefault(network_key(entry.request.network), []).append(entry)
        for key, entries in groups.items():
            self._step_group(key, entries)
        for key in [k for k in self._shares if k not in groups]:
            del self._shares[key]
        for entry in [e for e in self._entries if e.done]:
            self._entries.remove(entry)
            if self.on_finish is not None:
                self.on_finish(entry.request, entry.error)

    def _choose(self, key: Any, items: list[_Chosen]) -> list[_Chosen]:
        """The requests of this step's forward of one network (``items``: longest waiting first)."""
        total = sum(n for _, _, n in items)
        if self.max_rows is None or total <= self.max_rows:
            return items
        if len({entry.group for entry, _, _ in items}) > 1:
            return self._shares.setdefault(key, FairShare()).pick(items, self.max_rows)
        chosen: list[_Chosen] = []
        total = 0
        for item in items:
            if chosen and total + item[2] > self.max_rows:
                continue  # waits for room; it goes first next time
            chosen.append(item)
            total += item[2]
        return chosen

    def _step_group(self, key: Any, entries: list[_Entry]) -> None:
        items: list[_Chosen] = []
        for entry in entries:
            try:
                inputs = entry.request.inputs()
                n = _rows(inputs)
            except Exception as exc:  # noqa: BLE001 - the request's own failure ends it alone
                self._fail(entry, exc)
                continue
            items.append((entry, inputs, n))
        if not items:
            return
        chosen = self._choose(key, items)
        total = sum(n for _, _, n in chosen)
        network = chosen[0][0].request.network
        hook = self.on_forward
        began = time.perf_counter() if hook is not None else 0.0
        try:
            output = _forward(network, _cat([inputs for _, inputs, _ in chosen]), self.max_rows)
        except Exception as exc:  # noqa: BLE001 - isolate the request whose rows fail
            if len(chosen) == 1:
                self._fail(chosen[0][0], exc)
                return
            logger.warning("a batched forward of %d requests failed (%s); running them one by one", len(chosen), exc)
            for entry, inputs, _ in chosen:
                try:
                    output = _forward(network, inputs, self.max_rows)
                except Exception as one:  # noqa: BLE001
                    self._fail(entry, one)
                    continue
                self._advance(entry, output)
            return
        self.forwards += 1
        self.rows += total
        start = 0
        for entry, _, n in chosen:
            self._advance(entry, _slice(output, start, start + n))
            start += n
        if hook is not None:
            try:
                hook(network, [(entry.request, n) for entry, _, n in chosen], began, time.perf_counter())
            except Exception:
                logger.warning("the on_forward hook failed", exc_info=True)

    def _advance(self, entry: _Entry, output: Any) -> None:
        try:
            entry.done = bool(entry.request.advance(output))
        except Exception as exc:  # noqa: BLE001 - a cancellation or a failed step ends this request only
            self._fail(entry, exc)
            return
        entry.order = next(self._clock)

    def _fail(self, entry: _Entry, exc: BaseException) -> None:
        entry.error, entry.done = exc, True


def drive(
    request: Request,
    *,
    max_rows: int | None = None,
    deadline: float | None = None,
    on_forward: Callable[[Any, list[tuple[Request, int]], float, float], None] | None = None,
) -> None:
    """Run one request alone to its end on a fresh driver (the single-request path); re-raise its error
    (``DeadlineExceeded`` past ``deadline``). ``on_forward``: as ``StepDriver``'s."""
    errors: list[BaseException] = []
    driver = StepDriver(
        max_rows=max_rows, on_finish=lambda _, error: errors.extend([error] if error else []), on_forward=on_forward
    )
    driver.submit(request, deadline=deadline)
    driver.run()
    if errors:
        raise errors[0]


def drive_all(requests: Iterable[Request], *, max_rows: int | None = None) -> dict[int, BaseException]:
    """Run requests together to their end; returns {index: error} for the ones that failed."""
    items = list(requests)
    index = {id(r): i for i, r in enumerate(items)}
    errors: dict[int, BaseException] = {}

    def finished(request: Request, error: BaseException | None) -> None:
        if error is not None:
            errors[index[id(request)]] = error

    driver = StepDriver(max_rows=max_rows, on_finish=finished)
    for request in items:
        driver.submit(request)
    driver.run()
    return errors
