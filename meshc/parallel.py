"""Work on the second core: one function run in a forked child, its result pickled back.

It pays where the child's result is small next to its work: the graph checks of a large
mesh, half of them in a child, whose result is a list of diagnostics; the old side of a large
`meshc diff`, whose child sends a summary and only the objects that differ (meshc.diff_sides).
A forked child sees the parent's memory as it was without copying it, so only the result
crosses the pipe. (Sending a whole model back costs about as much as building it.) Every
caller can do the work itself instead; it does so when fork is unavailable, when no core is
idle, or when the child fails.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# Off inside a forked child (no grandchildren), and where a caller keeps every core busy.
enabled = (os.cpu_count() or 1) > 1 and "fork" in mp.get_all_start_methods()


def idle_core() -> bool:
    """Whether a second core is free now: on a busy machine a child would only take turns with
    this process, and the pickling would be pure loss. Linux: the idle time of all cores over
    50 ms (this process sleeps meanwhile, so it needs 1.5 idle cores of 2); elsewhere the load
    average, as `make --load-average` decides. Both cost nothing next to what a yes saves (the
    callers ask only for inputs that take seconds)."""
    if not enabled:
        return False
    cores = os.cpu_count() or 1
    try:
        first = _idle_jiffies()
        time.sleep(0.05)
        idle = (_idle_jiffies() - first) / (os.sysconf("SC_CLK_TCK") * 0.05)
    except (OSError, ValueError, IndexError):
        # This process counts as one running task: alone on two cores the average sits near 1.
        return os.getloadavg()[0] < cores - 0.5
    return idle >= cores - 0.5


def _idle_jiffies() -> int:
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()  # cpu user nice system idle iowait ...
    return int(fields[4]) + int(fields[5])


class ChildFailed(Exception):
    """The child raised (the exception, when it could be pickled, is the __cause__) or died."""


def _run(fn: Callable[[], Any], conn: Any) -> None:
    global enabled
    enabled = False
    gc.disable()  # the child allocates and exits: nothing to collect
    try:
        payload = pickle.dumps(("ok", fn()), protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as e:  # reported to the parent, which decides
        try:
            payload = pickle.dumps(("raised", e), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            payload = pickle.dumps(("raised", None))
    conn.send_bytes(payload)
    conn.close()


class Forked(Generic[T]):
    """`fn()` running in a forked child from construction; `result()` waits for it."""

    def __init__(self, fn: Callable[[], T]):
        ctx = mp.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        self._child = ctx.Process(target=_run, args=(fn, send), daemon=True)
        self._child.start()
        send.close()

    def result(self) -> T:
        """The child's return value; ChildFailed if it raised or died."""
        try:
            kind, value = pickle.loads(self._recv.recv_bytes())
        except EOFError:
            raise ChildFailed("the child process died") from None
        except Exception as e:  # a result or exception that does not unpickle
            raise ChildFailed("the child's result could not be read") from e
        finally:
            self.close()
        if kind != "ok":
            raise ChildFailed("the child process raised") from value
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the child if it still runs (the parent gave up on it)."""
        if self._child.is_alive():
            self._child.kill()
        self._child.join()
        self._recv.close()
