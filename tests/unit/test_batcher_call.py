"""Batcher.call runs a function on the batcher's own thread (the worker loads and warms its models there)."""

from __future__ import annotations

import threading

import pytest

from workers.batcher import Batcher


def test_call_runs_on_the_batcher_thread_and_returns_or_raises() -> None:
    batcher = Batcher(max_rows=None).start()
    try:
        assert batcher.call(lambda: threading.current_thread().name) == "batcher"
        assert batcher.call(lambda: 41 + 1) == 42

        def boom() -> None:
            raise ValueError("no such checkpoint")

        with pytest.raises(ValueError, match="no such checkpoint"):
            batcher.call(boom)
        assert batcher.call(lambda: "still serving") == "still serving"
    finally:
        batcher.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.call(lambda: None)
