"""Failed operator logins slow down: per client address and for the whole process.

A sliding window of recent failures decides. Past ``per_client`` failures from one address,
or ``overall`` failures from everyone, within ``window`` seconds, every login attempt (right
or wrong) is answered 429 with ``Retry-After`` until the oldest failure leaves the window, so
guessing the password costs time whatever the number of addresses used. A success clears
its address's failures. The state lives in the web process's memory: each process counts
its own (limits multiply by ``WEB_CONCURRENCY`` times dynos, which still caps guessing at a
few thousand a day against a long random ``ADMIN_PASSWORD``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

#: at most this many addresses are tracked; past it the overall limit still holds
MAX_TRACKED_CLIENTS = 10_000


@dataclass
class LoginThrottle:
    """Counts failed logins; ``retry_after`` says whether (and how long) to refuse the next one.

    ``clock`` returns seconds (monotonic); tests inject their own.
    """

    per_client: int = 5
    overall: int = 50
    window: float = 900.0
    clock: Callable[[], float] = time.monotonic
    _clients: dict[str, deque[float]] = field(default_factory=dict, init=False)
    _all: deque[float] = field(default_factory=deque, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def retry_after(self, client: str) -> int | None:
        """Whole seconds ``client`` must wait before another attempt, or None if it may try."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            waits = []
            mine = self._clients.get(client)
            if mine is not None and len(mine) >= self.per_client:
                waits.append(mine[-self.per_client] + self.window - now)
            if len(self._all) >= self.overall:
                waits.append(self._all[-self.overall] + self.window - now)
            if not waits:
                return None
            return max(1, math.ceil(max(waits)))

    def failed(self, client: str) -> None:
        """Record one failed attempt from ``client``."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            self._all.append(now)
            mine = self._clients.get(client)
            if mine is None:
                if len(self._clients) >= MAX_TRACKED_CLIENTS:
                    return
                mine = self._clients[client] = deque()
            mine.append(now)

    def succeeded(self, client: str) -> None:
        """A correct password: ``client``'s own failures are forgotten."""
        with self._lock:
            self._clients.pop(client, None)

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        while self._all and self._all[0] <= horizon:
            self._all.popleft()
        for key in [k for k, q in self._clients.items() if not q or q[-1] <= horizon]:
            del self._clients[key]
        for q in self._clients.values():
            while q and q[0] <= horizon:
                q.popleft()
