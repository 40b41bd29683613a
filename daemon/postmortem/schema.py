"""The decision log's record schema, version 1, and its encoder.

One JSON object per line (JSON Lines, UTF-8, `\\n`-terminated). Every line carries an
envelope and then the fields of the model record it stands for:

    {"v": 1, "type": "<record type>", "run_id": "<run>", "ts_ns": <int>, ...fields}

`ts_ns` is the record's own time (nanoseconds since the epoch, the strategy's clock: wall
time live, event time in a backtest). An `intent` has no time of its own and takes the time
of the record before it (its Decision). No field ever holds the time of writing, so the
same inputs give a byte-identical log.

Record types and their fields (names as in `daemon.core.model`; floats are float64, NaN and
infinities are written as `null`):

- `decision`: strategy, action, reason, expected, inputs (object), intents (list of intent
  objects, without envelope), cancels (list of client order ids).
- `intent`: an order the runner sent to the executor after the risk gate: venue, symbol,
  side ("buy"/"sell"), order_type ("limit", "market", "ioc", "post_only"), qty, price
  (null for market), client_order_id, strategy, reason. The model's `OrderIntent.type` is
  written as `order_type` (here and inside decisions) because `type` is the envelope's.
  A record is encoded when it is recorded, so the runner names an id-less intent before
  recording its decision: the id is what links an order to its acks and fills.
- `ack`: client_order_id, venue, symbol, status ("new", "partially_filled", "filled",
  "canceled", "rejected", "expired", or "unknown": live, the submit's outcome could not be
  learnt within `execution.unknown_order_timeout_s`; not resent, a later ack resolves it),
  exchange_order_id, reason, filled_qty.
- `fill`: client_order_id, venue, symbol, side, price, qty, fee, fee_asset, liquidity
  ("maker"/"taker"), strategy, trade_id.
- `balance`: venue, strategy, balances (object asset -> amount), in_transit (object asset
  -> amount on its way to this venue: transfers sent and not yet landed, less their fee;
  `{}` when none; absent in logs written before it was added).
- `run_end`: status ("stopped", or "failed: <error type>"), written (how many records the
  run wrote before this one). The writer's last record, written only when the run stops
  cleanly (`DecisionLogWriter.end_run`): a log without it ended early (a crash, a kill,
  a disk that stopped taking writes), and the post-mortem says so.

Compatibility: readers skip lines whose `v` they do not know (counted, like torn lines).
Adding a field or a record type is compatible and keeps `v` (a reader ignores a type it
does not use: `run_end` was added so, in v1); renaming or re-typing a field bumps it.

## Conventions the report relies on

Agreed with the strategies in `strategies/` (their module docstrings list their verbs and
inputs); the report reads only what is listed here and shows every other verb as is.

`Decision.action`, what the strategy did or declined to do (`daemon.core.vocabulary.Action`):

- every strategy: "skip" (saw something and declined: edge too small, stale quote,
  cooldown...); recorded by the runner or the risk gate: "reject" (an intent or transfer
  refused) and "kill" (the kill switch fired); the report's timeline marks "kill",
  "flatten", "max_loss_exit", "unwind_failed", "rebalance", "portfolio_rebalance" and
  any verb that names a halt or an alert (performance.TIMELINE_EVENTS);
- arbitrage: "arbitrage" (an opportunity taken; its intents are the legs), "unwind" (a
  failed or partial leg hedged), "unwind_failed" (an alert: every unwind attempt failed,
  the strategy halts with inputs "residual" kept as position; a halt in the report),
  "resume" (the halt's cooldown is over), "transfer_sell", "rebalance" (a transfer
  between venues, no intents);
- inventory-mm: "quote" (quotes placed or replaced), "hold" (orders already at target),
  "max_loss_exit", "portfolio_rebalance";
- internalize: "hedge", "warehouse", "partial_hedge" (the answer to a client fill or a
  re-evaluation of the inventory).

`Decision.inputs` keys the report reads (all optional; absent means "not known"):

- "venue", "symbol": what the decision is about (else its first intent's);
  "hedge_venue" (internalize) stands for "venue" when that is absent;
- "mid": the mid price the strategy saw (quote currency); with fill prices, it marks
  open positions and is the reference for spread captured, market-order slippage and
  markouts (performance.py);
- "market_bid", "market_ask": the market's touch at that venue; without them "bid",
  "ask" are the touch (a strategy that logs its own quotes as "bid"/"ask", as
  inventory-mm does, logs the touch as "market_bid"/"market_ask" beside them);
  arbitrage's "buy_venue"/"buy_bid"/"buy_ask" and "sell_venue"/"sell_bid"/"sell_ask"
  give both venues' touch. The report charts them per market and marks fills with them;
- "expected_edge_bps": an evaluated opportunity's expected net edge, bps (arbitrage; a
  "skip" that carries it counts as an opportunity seen and not taken);
- "client_side", "client_qty", "client_price": a client fill the desk took the other side
  of (internalize; the client's side, base quantity, price): booked as the desk's fill;
- "hedge_cost": the quote-currency cost of offsetting that client fill at once
  (crossing, slippage and fee against the mid): the always-hedge baseline.
`Decision.expected` is the expected profit (positive) or cost (negative) of the action, in
quote currency.

Known gaps: transfer network fees move balances, not fills, so they appear in portfolio
value but not in P&L; a fee in an asset other than the symbol's base or quote is counted
(`fees_unvalued`) but not valued.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from daemon.core.model import BalanceSnapshot, Decision, Fill, OrderAck, OrderIntent

SCHEMA_VERSION = 1

DECISION = "decision"
INTENT = "intent"
ACK = "ack"
FILL = "fill"
BALANCE = "balance"
RUN_END = "run_end"
RECORD_TYPES = (DECISION, INTENT, ACK, FILL, BALANCE, RUN_END)

#: DuckDB type of an intent inside a decision.
INTENT_STRUCT = (
    "STRUCT(venue VARCHAR, symbol VARCHAR, side VARCHAR, order_type VARCHAR, qty DOUBLE, "
    "price DOUBLE, client_order_id VARCHAR, strategy VARCHAR, reason VARCHAR)"
)

#: Column types for reading every record type into one wide table (DuckDB types).
#: Intents are typed (cheap to unnest); `inputs` and `balances` stay JSON, whatever keys a
#: strategy puts in them, and the report extracts the keys it knows.
COLUMNS: dict[str, str] = {
    "v": "INTEGER",
    "type": "VARCHAR",
    "run_id": "VARCHAR",
    "ts_ns": "BIGINT",
    "strategy": "VARCHAR",
    "action": "VARCHAR",
    "reason": "VARCHAR",
    "expected": "DOUBLE",
    "inputs": "JSON",
    "intents": INTENT_STRUCT + "[]",
    "cancels": "VARCHAR[]",
    "venue": "VARCHAR",
    "symbol": "VARCHAR",
    "side": "VARCHAR",
    "order_type": "VARCHAR",
    "qty": "DOUBLE",
    "price": "DOUBLE",
    "client_order_id": "VARCHAR",
    "status": "VARCHAR",
    "exchange_order_id": "VARCHAR",
    "filled_qty": "DOUBLE",
    "fee": "DOUBLE",
    "fee_asset": "VARCHAR",
    "liquidity": "VARCHAR",
    "trade_id": "VARCHAR",
    "balances": "JSON",
    "in_transit": "JSON",
    "written": "BIGINT",
}


@dataclass(frozen=True, slots=True)
class RunEnd:
    """The decision log's own last record of a run that stopped cleanly (see the doc)."""

    ts_ns: int
    status: str
    written: int

_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY


def _fallback(value: Any) -> Any:
    """Anything orjson cannot write natively (Decimal, Path, ...) goes in as its text."""
    return str(value)


def intent_fields(intent: OrderIntent) -> dict[str, Any]:
    """An intent as it appears inside a decision (no envelope)."""
    return {
        "venue": intent.venue,
        "symbol": intent.symbol,
        "side": intent.side,
        "order_type": intent.type,
        "qty": intent.qty,
        "price": intent.price,
        "client_order_id": intent.client_order_id,
        "strategy": intent.strategy,
        "reason": intent.reason,
    }


# One literal dict per record type: the fastest way to a dict in CPython, and the schema
# reads top to bottom. The envelope keys come first in every line.

def _decision(r: Decision, run_id: str, ts_ns: int) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "type": DECISION, "run_id": run_id, "ts_ns": ts_ns,
            "strategy": r.strategy, "action": r.action, "reason": r.reason,
            "expected": r.expected, "inputs": r.inputs,
            "intents": [intent_fields(intent) for intent in r.intents], "cancels": r.cancels}


def _intent(r: OrderIntent, run_id: str, ts_ns: int) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "type": INTENT, "run_id": run_id, "ts_ns": ts_ns,
            "venue": r.venue, "symbol": r.symbol, "side": r.side, "order_type": r.type,
            "qty": r.qty, "price": r.price, "client_order_id": r.client_order_id,
            "strategy": r.strategy, "reason": r.reason}


def _ack(r: OrderAck, run_id: str, ts_ns: int) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "type": ACK, "run_id": run_id, "ts_ns": ts_ns,
            "client_order_id": r.client_order_id, "venue": r.venue, "symbol": r.symbol,
            "status": r.status, "exchange_order_id": r.exchange_order_id, "reason": r.reason,
            "filled_qty": r.filled_qty}


def _fill(r: Fill, run_id: str, ts_ns: int) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "type": FILL, "run_id": run_id, "ts_ns": ts_ns,
            "client_order_id": r.client_order_id, "venue": r.venue, "symbol": r.symbol,
            "side": r.side, "price": r.price, "qty": r.qty, "fee": r.fee,
            "fee_asset": r.fee_asset, "liquidity": r.liquidity, "strategy": r.strategy,
            "trade_id": r.trade_id}


def _balance(r: BalanceSnapshot, run_id: str, ts_ns: int) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "type": BALANCE, "run_id": run_id, "ts_ns": ts_ns,
            "venue": r.venue, "strategy": r.strategy, "balances": r.balances,
            "in_transit": r.in_transit}


def _run_end(r: RunEnd, run_id: str, ts_ns: int) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "type": RUN_END, "run_id": run_id, "ts_ns": ts_ns,
            "status": r.status, "written": r.written}


_ENCODERS: dict[type, Callable[[Any, str, int], dict[str, Any]]] = {
    Decision: _decision,
    OrderIntent: _intent,
    OrderAck: _ack,
    Fill: _fill,
    BalanceSnapshot: _balance,
    RunEnd: _run_end,
}
#: Record types with a time of their own (`ts_ns`); an intent takes its decision's.
_TIMED = frozenset({Decision, OrderAck, Fill, BalanceSnapshot, RunEnd})


def own_time_ns(record: object) -> int:
    """The record's own time, or 0 when it has none (an intent)."""
    # A type test, not getattr with a default: a missing slot raises inside getattr,
    # which costs more than encoding the record.
    return record.ts_ns if type(record) in _TIMED else 0  # type: ignore[attr-defined]


def encode_record(record: object, run_id: str, ts_ns: int) -> bytes:
    """One log line, newline included. Raises TypeError for anything not in the schema."""
    fields = _ENCODERS.get(type(record))
    if fields is None:
        raise TypeError(f"not a decision-log record: {type(record).__name__}")
    line = fields(record, run_id, ts_ns)
    try:
        return orjson.dumps(line, default=_fallback, option=_OPTIONS)
    except orjson.JSONEncodeError:
        # An integer beyond 64 bits (a client's absurd time that got past the edge): the
        # record is still written, the number as text, rather than losing the record and
        # the task that was recording it.
        return orjson.dumps(_wide_ints_as_text(line), default=_fallback, option=_OPTIONS)


_INT64 = range(-(2**63), 2**63)


def _wide_ints_as_text(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        return str(value)
    if isinstance(value, dict):
        return {key: _wide_ints_as_text(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_wide_ints_as_text(item) for item in value]
    return value


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")


def log_file_name(run_id: str) -> str:
    """`<run_id>.jsonl`; a run id is a file name, so no path separators or dot-dot."""
    if not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise ValueError(f"run id {run_id!r} cannot name a log file "
                         "(letters, digits and . _ : + - only)")
    return f"{run_id}.jsonl"
