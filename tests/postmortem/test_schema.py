"""The decision-log encoder writes every record it is given, whatever its numbers."""

from __future__ import annotations

import math

import orjson

from daemon.core.model import Decision
from daemon.core.vocabulary import Action
from daemon.postmortem.schema import encode_record


def test_an_integer_beyond_64_bits_is_written_as_text_not_raised() -> None:
    """Issue 13 item 3: a client fill's `time: 1e300` killed the flow task in the encoder."""
    decision = Decision("internalize", 5, Action.WAREHOUSE, "why",
                        {"fill_ts_ns": 10**300, "qty": 1.0, "nested": [2**64, {"t": -(2**70)}],
                         "mid": math.nan}, 0.0, [])
    line = orjson.loads(encode_record(decision, "run", 5))
    assert line["inputs"]["fill_ts_ns"] == str(10**300)
    assert line["inputs"]["nested"] == [str(2**64), {"t": str(-(2**70))}]
    assert line["inputs"]["qty"] == 1.0 and line["ts_ns"] == 5
