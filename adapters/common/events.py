"""What a venue's feed hands out besides market data: its events and its raw frames."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """Something that happened to a venue's feed (not market data)."""

    kind: str  # connect | disconnect | silence | stale | fresh | resync | rejected
    venue: str
    ts_ns: int
    details: dict[str, Any] = field(default_factory=dict)


FeedListener = Callable[[FeedEvent], None]

#: Receives every raw frame of a venue with its local receive time (the recorder).
FrameTap = Callable[[bytes, int], None]
