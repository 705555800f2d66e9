"""`recordline replay`'s status line on a terminal: what it did so far, and what it
waits for (the command itself is the service's: app/commands/replay.py, which runs
in a cell's ops job as well as here)."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from app.commands.replay import Waiting, summary
from recordline_dev.progress import Rate, StatusLine

if TYPE_CHECKING:
    from rich.console import RenderableType


class _Shown:
    """The status line's state: the counts, the rate, what the replay waits for."""

    def __init__(self, counts: Counter[str]) -> None:
        self.counts = counts
        self.waiting = ""
        self._rate = Rate()

    def render(self) -> RenderableType:
        from rich.text import Text

        done = sum(self.counts.values())
        text = f"replayed {done:,} · {self._rate(done):,.0f}/s · {summary(self.counts)}"
        if self.waiting:
            text += f" · {self.waiting}"
        return Text(text, no_wrap=True, overflow="ellipsis")


@contextlib.contextmanager
def status_line(counts: Counter[str]) -> Iterator[Waiting]:
    """A replay's status line on stderr, while it runs (on a terminal only)."""
    shown = _Shown(counts)
    with StatusLine(shown.render):
        yield shown
