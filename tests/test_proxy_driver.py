"""The native proxy's per-request control-flow runner (`meshc.runtime.http.Driver`): a finished
request must be freed by reference counting, not left to the cycle collector."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

from meshc.runtime.http import Driver


class FakeStream:
    def __init__(self) -> None:
        self.task: Driver | None = None
        self.outcome = ""

    def control_cancelled(self) -> None:
        self.outcome = "cancelled"

    def control_failed(self) -> None:
        self.outcome = "failed"


async def _wait_then(loop: asyncio.AbstractEventLoop, stream: FakeStream, fail: bool) -> None:
    fut = loop.create_future()
    loop.call_soon(fut.set_result, None)
    await fut
    if fail:
        raise RuntimeError("boom")


@pytest.mark.parametrize("how", ["done", "failed", "cancelled"])
def test_finished_request_is_freed_without_the_cycle_collector(how: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        s = FakeStream()
        if how == "cancelled":
            coro: Any = loop.create_future()  # never completes: only the cancel ends it
            s.task = Driver(_await(coro), loop, s)  # type: ignore[arg-type]
            s.task.cancel()
        else:
            s.task = Driver(_wait_then(loop, s, how == "failed"), loop, s)  # type: ignore[arg-type]
        loop.run_until_complete(asyncio.sleep(0.01))
        assert s.task.done() and s.outcome == ("" if how == "done" else how)
        ref = weakref.ref(s)
        gc.disable()
        try:
            del s
            assert ref() is None  # freed at once: no Stream <-> Driver cycle left
        finally:
            gc.enable()
    finally:
        loop.close()


async def _await(fut: Any) -> None:
    await fut
