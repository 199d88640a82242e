"""The batcher: one thread that drives the sampling requests of every job in flight (continuous batching).

Each job runs in its own thread (``workers.worker``) and hands its request to ``Batcher.run``, which blocks
until the request has finished. The batcher thread owns one ``models.driver.StepDriver``: at each step it
admits the requests submitted since the last step, runs one forward per network for all of them (rows of
different operations, settings and timesteps together, at most ``max_rows`` rows a forward), and lets each
request apply its own rule, hook and callback (progress, cancellation). A request that finishes or fails
leaves at once and wakes its job thread; the others go on.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import torch

from models.driver import Request, StepDriver

log = logging.getLogger(__name__)

WAKE_S = 0.2  # a waiting job thread wakes this often, so that a job timeout (an async exception) can land


@dataclass(eq=False)
class _Ticket:
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class Batcher:
    """Runs a step driver in a daemon thread; ``run(request)`` is the runner the job functions pass to models.

    Args:
        max_rows: the most rows of one forward (``MAX_BATCH_ROWS``).
    """

    def __init__(self, *, max_rows: int | None) -> None:
        self._driver = StepDriver(max_rows=max_rows, on_finish=self._finished)
        self._lock = threading.Condition()
        self._incoming: list[Request] = []
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

    def run(self, request: Request) -> None:
        """Drive ``request`` to its end together with the other jobs' requests; re-raise its error.

        Blocks the calling job thread. If the wait is interrupted (a job timeout), the request is discarded.
        """
        ticket = _Ticket()
        with self._lock:
            if self._stopping:
                raise RuntimeError("the batcher has stopped")
            self._tickets[id(request)] = ticket
            self._incoming.append(request)
            self._lock.notify_all()
        try:
            while not ticket.done.wait(WAKE_S):
                pass
        except BaseException:
            with self._lock:
                self._discarded.append(request)
                self._lock.notify_all()
            raise
        if ticket.error is not None:
            raise ticket.error

    def _finished(self, request: Request, error: BaseException | None) -> None:
        with self._lock:
            ticket = self._tickets.pop(id(request), None)
        if ticket is not None:
            ticket.error = error
            ticket.done.set()

    def _admit(self) -> bool:
        """Move submissions and discards into the driver; False when it is time to stop."""
        with self._lock:
            while not self._incoming and not self._discarded and not self._driver.active and not self._stopping:
                self._lock.wait()
            if self._stopping:
                return False
            incoming, self._incoming = self._incoming, []
            discarded, self._discarded = self._discarded, []
        for request in incoming:
            self._driver.submit(request)
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
            tickets, self._tickets = self._tickets, {}
        for ticket in tickets.values():
            ticket.error = RuntimeError("the worker is shutting down")
            ticket.done.set()
