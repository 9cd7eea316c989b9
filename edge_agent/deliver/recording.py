"""Sinks whose verdicts are also kept, with the time it took to publish each.

Why: the demo compares the verdicts with labels the agent never saw, and the benchmarks report what publishing
costs the loop (spool write included), without a second code path through the agent.
"""

from __future__ import annotations

import time
from typing import Any

from edge_agent.deliver.sink import FanOut, Sink


class RecordingSink(FanOut):
    """A `FanOut` to ``sinks`` that keeps each verdict (``keep=False`` for long runs) and its publish time."""

    def __init__(self, *sinks: Sink, keep: bool = True) -> None:
        super().__init__(sinks)
        self.keep = keep
        self.verdicts: list[dict[str, Any]] = []
        self.publish_ms: list[float] = []

    def publish_verdict(self, verdict: dict[str, Any]) -> int:
        t0 = time.perf_counter()
        seq = super().publish_verdict(verdict)
        self.publish_ms.append((time.perf_counter() - t0) * 1e3)
        if self.keep:
            self.verdicts.append(dict(verdict))
        return seq
