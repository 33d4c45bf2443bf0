"""Load for the fault tests: real HTTP requests to a running sluice, from threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from tests.factories import make_events


def post_one(url: str, event_id: str) -> tuple[int, float, str | None]:
    """POST one event on a connection of its own: (status, seconds, Retry-After)."""
    event = dict(make_events(1, seed=5)[0], eventId=event_id)
    began = time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/webhook", json=event)
    return response.status_code, time.monotonic() - began, response.headers.get("Retry-After")


class SteadyLoad:
    """Threads posting one fresh event per request until stopped; every id that got
    a 2xx is kept, the slowest answer, and when each status was answered (monotonic)."""

    def __init__(self, url: str, prefix: str, threads: int = 8) -> None:
        self.url, self.prefix = url, prefix
        self.accepted: set[str] = set()
        self.statuses: dict[int, int] = {}
        self.slowest = 0.0
        self.answered: dict[int, list[float]] = {}
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)
        ]

    def _run(self, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            event_id = f"{self.prefix}-{n}-{i}"
            i += 1
            try:
                status, took, _ = post_one(self.url, event_id)
            except httpx.TransportError:
                continue
            with self._lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
                self.answered.setdefault(status, []).append(time.monotonic())
                self.slowest = max(self.slowest, took)
                if status == 202:
                    self.accepted.add(event_id)

    def count(self, status: int) -> int:
        with self._lock:
            return self.statuses.get(status, 0)

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(30)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
