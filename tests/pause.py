"""Pause a server process the test started (SIGSTOP by PID) and know that it is paused.

`os.kill(pid, SIGSTOP)` returns as soon as the signal is queued: each thread of the
target stops only when it next runs kernel code, so for a moment after the call a
multi-threaded server (nats-server's Go runtime) can still read a request and answer it.
A test that asserts "a paused server does not answer" must wait until every thread is
stopped first.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

STOPPED = frozenset("TtZX")  # stopped (by a signal or a tracer), or a thread on its way out


def thread_states(pid: int) -> str:
    """The state letter of every thread of `pid` (from /proc, Linux)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # that thread exited meanwhile
            continue
        states.append(stat[stat.rindex(")") + 2])  # the comm field may hold spaces
    return "".join(states)


def pause(pid: int, timeout: float = 10.0) -> None:
    """SIGSTOP `pid` and return once every one of its threads is stopped."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not set(states := thread_states(pid)) <= STOPPED:
        assert time.monotonic() < deadline, f"pid {pid} not stopped: thread states {states!r}"
        time.sleep(0.001)
