"""The decision log's bytes on disk: the same records give the same lines as the format's
golden files (written by the writer before its buffering changed), through every path
(synchronous, the writer task with its thread, small and large batches), and a queued record
holds its own bytes in memory, not the encoder's whole scratch allocation.

The golden files are the format other readers rely on (the post-mortem, DuckDB, the NATS
bridge that tails the file): regenerate them only for a deliberate format change.
"""

from __future__ import annotations

import asyncio
import decimal
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from daemon.core.model import (
    BalanceSnapshot,
    Decision,
    Fill,
    OrderAck,
    OrderIntent,
    OrderType,
    Side,
)
from daemon.core.vocabulary import OrderStatus
from daemon.postmortem import writer as writer_module
from daemon.postmortem.writer import DecisionLogWriter

GOLDEN = Path(__file__).parent / "golden"
RUN_ID = "golden-run"
T0 = 1_723_161_253_000_000_000  # 2024-08-08T23:54:13Z
NEXT_DAY = T0 + 600 * 10**9  # 2024-08-09T00:04:13Z
DAYS = ("2024-08-08", "2024-08-09")
SECRET = "s3cr3t-api-key-never-written"

ODD_FLOATS = [0.0, -0.0, 0.1 + 0.2, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, -1.5e-300,
              123456789.123456789, 60_000.05, 1 / 3, math.nan, math.inf, -math.inf, 2.0**53 + 1]
EDGE_INTS = [0, -1, 2**53 + 1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1]
TEXTS = ["plain", "é café", "日本語", "🚀 emoji", 'quote " and \\ backslash', "tab\tnew\nline",
         "\x00\x01\x1f control", "\u2028\u2029 separators", "", "a" * 300]


def intent(i: int, side: Side = Side.BUY, kind: OrderType = OrderType.LIMIT,
           price: float | None = 60_000.5) -> OrderIntent:
    return OrderIntent("binance_spot", "BTC/USDT", side, kind, 0.001 * i, price,
                       f"mm-{i:06d}", "inventory-mm", TEXTS[i % len(TEXTS)])


def varied_records() -> list[object]:
    """Every record kind the writer takes, with the values an encoder gets wrong."""
    first = intent(0)  # no time of its own and nothing before it: the writer's clock
    records: list[object] = [first]
    for i, value in enumerate(ODD_FLOATS):
        legs = [intent(i, Side.SELL, OrderType.POST_ONLY), intent(i + 1, price=None)]
        inputs = {"mid": value, "bid": value, "n": i, "text": TEXTS[i % len(TEXTS)],
                  "nested": {"list": [value, i, None, True], "tuple": (1, "two")},
                  "numpy": np.float64(value), "numpy_int": np.int64(i), "array": np.arange(3),
                  "decimal": decimal.Decimal("0.1"), "path": Path("/tmp/x"),
                  "int": EDGE_INTS[i % len(EDGE_INTS)], "side": Side.BUY}
        records.append(Decision("inventory-mm", T0 + i, "quote", TEXTS[i % len(TEXTS)],
                                inputs, value, legs, [f"mm-{i - 1:06d}"] if i else []))
        records.extend(legs)
        records.append(OrderAck(legs[0].client_order_id, "binance_spot", "BTC/USDT",
                                list(OrderStatus)[i % len(OrderStatus)], T0 + i + 1,
                                f"x{i}", TEXTS[(i + 3) % len(TEXTS)], value))
        records.append(Fill(legs[0].client_order_id, "binance_spot", "BTC/USDT", Side.SELL,
                            value, 0.001, value, "USDT", "maker", T0 + i + 2, "inventory-mm",
                            f"t{i}"))
    records.append(BalanceSnapshot("binance_spot", T0 + 50, {"BTC": 0.5, "USDT": 1e16,
                                                              "ÉTH": -0.0}, "inventory-mm",
                                   {"USDT": 12.5}))
    records.append(BalanceSnapshot("bybit", T0 + 51, {}, ""))
    # Integers beyond 64 bits: the whole record is written with them (and any other
    # integer outside int64) as text.
    records.append(Decision("internalize", T0 + 52, "warehouse", "big ints",
                            {"fill_ts_ns": 10**300, "u64": 2**63, "neg": -(2**70),
                             "list": [2**64, 1]}, 0.0, []))
    # A secret a strategy put in its inputs by mistake: written masked, never in clear.
    records.append(Decision("arbitrage", T0 + 53, "skip", "secret",
                            {"key": SecretStr(SECRET)}))
    # Past midnight: the next day's file, and a late ack stays there.
    records.append(Decision("arbitrage", NEXT_DAY, "skip", "no edge", {"edge": -1.25}))
    records.append(OrderAck("mm-000001", "bybit", "BTC/USDT", OrderStatus.CANCELED, T0 + 99))
    records.append(intent(99))
    return records


def write_sync(data_dir: Path, queue_size: int) -> None:
    with DecisionLogWriter(data_dir, RUN_ID, synchronous=True, queue_size=queue_size,
                           clock=lambda: T0 - 1) as writer:
        for record in varied_records():
            writer.record(record)  # type: ignore[arg-type]
        writer.end_run("stopped")


async def write_async(data_dir: Path, queue_size: int) -> None:
    async with DecisionLogWriter(data_dir, RUN_ID, queue_size=queue_size, flush_interval_ms=1,
                                 clock=lambda: T0 - 1) as writer:
        for index, record in enumerate(varied_records()):
            writer.record(record)  # type: ignore[arg-type]
            if index % 3 == 0:
                await asyncio.sleep(0.002)  # let the writer task seal and write mid-run
        writer.end_run("stopped")


def written(data_dir: Path) -> dict[str, bytes]:
    return {day: (data_dir / "decisions" / day / f"{RUN_ID}.jsonl").read_bytes()
            for day in DAYS}


def golden() -> dict[str, bytes]:
    return {day: (GOLDEN / f"{day}.jsonl").read_bytes() for day in DAYS}


@pytest.mark.parametrize("queue_size", [1, 7, 100_000])
def test_synchronous_log_is_byte_identical_to_the_golden_files(tmp_path: Path,
                                                               queue_size: int) -> None:
    write_sync(tmp_path, queue_size)
    assert written(tmp_path) == golden()


@pytest.mark.parametrize("queue_size", [5, 100_000])
async def test_writer_task_log_is_byte_identical_to_the_golden_files(tmp_path: Path,
                                                                     queue_size: int) -> None:
    await write_async(tmp_path, queue_size)
    assert written(tmp_path) == golden()


def test_golden_files_hold_every_kind_big_ints_as_text_and_no_secret() -> None:
    """What the golden files pin down (so a regenerated file cannot quietly lose it)."""
    both = b"".join(golden().values())
    for kind in (b'"type":"decision"', b'"type":"intent"', b'"type":"ack"', b'"type":"fill"',
                 b'"type":"balance"', b'"type":"run_end"'):
        assert kind in both
    assert f'"fill_ts_ns":"{10**300}"'.encode() in both
    assert SECRET.encode() not in both
    assert "日本語".encode() in both and b"NaN" not in both


def test_a_queued_record_holds_its_bytes_not_an_encoder_allocation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """orjson returns every line in a ~4 KB buffer it does not shrink: a log that kept those
    lines until its flush held ~4 KB per queued record (and paid a page fault for each)."""
    # Every record stays queued (a synchronous log writes its lines every 256 kB).
    monkeypatch.setattr(writer_module, "SYNCHRONOUS_WRITE_BYTES", 1 << 40)
    records = varied_records()[1:] * 20
    writer = DecisionLogWriter(tmp_path, RUN_ID, synchronous=True, queue_size=10**6)
    writer.record(records[0])  # type: ignore[arg-type]  # warm up: the writer's own state
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for record in records:
            writer.record(record)  # type: ignore[arg-type]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert writer.queued == len(records) + 1
    writer.close()
    line_bytes = sum(path.stat().st_size for path in (tmp_path / "decisions").rglob("*.jsonl"))
    assert held < 2 * line_bytes, f"{held / len(records):.0f} bytes held per queued record"
