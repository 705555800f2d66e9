"""Waiting between attempts: exponential, jittered, with a ceiling, never a tight loop.

A loop that retries a dependency which refuses at once (a killed Spanner
answers UNAVAILABLE in microseconds) would otherwise take a core for as long
as the outage lasts, and every instance of a fleet would retry in step when
it ends. Each wait is drawn from the upper half of a ceiling that doubles per
failure up to `maximum` ("equal jitter"): never less than half the ceiling,
so a run of short draws cannot make a tight loop, and spread enough that
instances drift apart. A success starts the next streak from `initial` again.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# The jitter's own generator, not the module's shared one: whoever seeds that (a test
# framework seeds it per example) would make every instance seeded alike wait alike,
# and a draw from it in a background thread changes the state others rely on.
_JITTER = random.Random()


class Backoff:
    """The waits of one streak of failures: call `next()` after each, `reset()` after a success."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        multiplier: float = 2.0,
        draw: Callable[[], float] = _JITTER.random,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff wants 0 < initial <= maximum, not {initial}, {maximum}")
        self.initial = initial
        self.maximum = maximum
        self._multiplier = multiplier
        self._draw = draw
        self._ceiling = initial
        # Failures in this streak so far.
        self.failures = 0

    def next(self) -> float:
        """How long to wait before the next attempt (seconds), one failure more."""
        ceiling = self._ceiling
        self._ceiling = min(ceiling * self._multiplier, self.maximum)
        self.failures += 1
        return ceiling / 2 + self._draw() * ceiling / 2

    def reset(self) -> None:
        self._ceiling = self.initial
        self.failures = 0
