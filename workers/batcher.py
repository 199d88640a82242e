"""The batcher: one thread that drives the sampling requests of every job in flight (continuous batching).

Each job runs on a thread of the worker's job pool (``workers.loop``) and hands its request to ``Batcher.run``,
which blocks until the request has finished. The batcher thread owns one ``models.driver.StepDriver``: at each step it
admits the requests submitted since the last step, runs one forward per network for all of them (rows of
different operations, settings and timesteps together, at most ``max_rows`` rows a forward), and lets each
request apply its own rule, hook and callback (progress, cancellation). A request that finishes or fails
leaves at once and wakes its job thread; the others go on. A request's deadline (its job's time limit) is
enforced by the driver between steps. Each request carries its job's tenant and weight, with which the driver
chooses rows when a forward cannot take them all (``models.driver``: fair share).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch

from models.driver import Request, StepDriver
from workers.telemetry import ForwardMeter

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(eq=False)
class _Ticket:
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class Batcher:
    """Runs a step driver in a daemon thread; ``run(request)`` is the runner the job functions pass to models.

    Args:
        max_rows: the most rows of one forward (``MAX_BATCH_ROWS``).
        meter: sees every forward (the cost of each job in it, metrics, trace spans); None: nothing measured.
    """

    def __init__(self, *, max_rows: int | None, meter: ForwardMeter | None = None) -> None:
        self.meter = meter
        self._driver = StepDriver(
            max_rows=max_rows, on_finish=self._finished, on_forward=meter.on_forward if meter is not None else None
        )
        self._lock = threading.Condition()
        self._incoming: list[tuple[Request, float | None, Hashable, float]] = []
        self._calls: list[tuple[Callable[[], Any], _Ticket, list[Any]]] = []
        self._discarded: list[Request] = []
        self._tickets: dict[int, _Ticket] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self.steps = 0

    @property
    def max_rows(self) -> int | None:
        return self._driver.max_rows

    def start(self) -> Batcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(10)

    def run(
        self, request: Request, *, deadline: float | None = None, group: Hashable = None, weight: float = 1.0
    ) -> None:
        """Drive ``request`` to its end together with the other jobs' requests; re-raise its error
        (``models.driver.DeadlineExceeded`` past ``deadline``, a ``time.monotonic()`` value). ``group`` and
        ``weight``: its share of a full forward (the job's tenant and the tenant's weight).

        Blocks the calling job thread. If the wait itself is interrupted, the request is discarded.
        """
        ticket = _Ticket()
        if self.meter is not None:
            self.meter.register(request)  # its job, tenant and span, read on this (the job's) thread
        with self._lock:
            if self._stopping:
                raise RuntimeError("the batcher has stopped")
            self._tickets[id(request)] = ticket
            self._incoming.append((request, deadline, group, weight))
            self._lock.notify_all()
        try:
            ticket.done.wait()
        except BaseException:
            with self._lock:
                self._discarded.append(request)
                self._lock.notify_all()
            raise
        finally:
            if self.meter is not None:
                self.meter.unregister(request)
        if ticket.error is not None:
            raise ticket.error

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the batcher's thread, between steps, and return its result (re-raise its error).

        The worker loads and warms its models through this, so that one thread does all the heavy torch work
        of the process. Measured on the 2-core CPU with 2 torch threads: once a second thread had run torch
        work (the main thread, loading), the same MNIST forward took about twice as long (7.5 ms against
        3.4 ms; a plain 32-channel conv 0.42 ms against 0.19 ms), which made a lone batched job slower than
        one without batching (bench/load.py, 1 client: p50 0.109 s against 0.061 s). Likely libgomp, which
        gives every calling thread its own OpenMP team and throttles its spin-waits once it manages more
        threads than there are cores; with one torch thread there is no difference."""
        ticket, out = _Ticket(), list[Any]()
        with self._lock:
            if self._stopping:
                raise RuntimeError("the batcher has stopped")
            self._calls.append((fn, ticket, out))
            self._lock.notify_all()
        ticket.done.wait()
        if ticket.error is not None:
            raise ticket.error
        if not out:
            raise RuntimeError("the batcher stopped during the call")
        return cast(T, out[0])

    def _run_calls(self, calls: list[tuple[Callable[[], Any], _Ticket, list[Any]]]) -> None:
        for fn, ticket, out in calls:
            try:
                out.append(fn())
            except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
                ticket.error = exc
            finally:
                ticket.done.set()

    def _finished(self, request: Request, error: BaseException | None) -> None:
        with self._lock:
            ticket = self._tickets.pop(id(request), None)
        if ticket is not None:
            ticket.error = error
            ticket.done.set()

    def _admit(self) -> bool:
        """Move submissions and discards into the driver; False when it is time to stop."""
        with self._lock:
            while (
                not self._incoming
                and not self._discarded
                and not self._calls
                and not self._driver.active
                and not self._stopping
            ):
                self._lock.wait()
            if self._stopping:
                return False
            incoming, self._incoming = self._incoming, []
            discarded, self._discarded = self._discarded, []
            calls, self._calls = self._calls, []
        self._run_calls(calls)
        for request, deadline, group, weight in incoming:
            self._driver.submit(request, deadline=deadline, group=group, weight=weight)
        for request in discarded:
            self._driver.discard(request)
            with self._lock:
                self._tickets.pop(id(request), None)
        return True

    def _loop(self) -> None:
        while self._admit():
            try:
                with torch.inference_mode():
                    self._driver.step()
                self.steps += 1
            except Exception:
                log.exception("batcher step failed")
        with self._lock:  # wake anyone still waiting
            waiting = list(self._tickets.values()) + [ticket for _, ticket, _ in self._calls]
            self._tickets, self._calls = {}, []
        for ticket in waiting:
            ticket.error = RuntimeError("the worker is shutting down")
            ticket.done.set()
