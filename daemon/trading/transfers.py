"""Moving assets between venues: simulated on paper, whitelisted live.

Paper (`PaperTransfers`): the amount is debited from the source venue at once; the
destination is credited with amount - fee when the feed clock passes send time + the
asset's delay (`ExecutionSettings.transfer_delay_s`, e.g. BTC 6 min, and
`transfer_fee`, e.g. 0.0001 BTC). The arrival is an event on the paper executor's clock,
so it lands in order with fills, the same in a backtest and next to a live feed. An
asset with no configured delay cannot be moved (we would be guessing how long it takes).

Live: withdrawals through ccxt (adapters/ccxt/transfers.py), only to whitelisted
addresses; `BackgroundTransfers` runs them as tasks for the synchronous runner.

Funds in transit are in no venue's balance, so both say what is on its way to a venue
(`in_transit(venue, now_ns)`, per asset, net of the fee) for the balance snapshots, and
the portfolio's value does not drop by the amount in flight. Paper knows the arrival;
live counts a withdrawal the venue accepted as in transit for the asset's
`transfer_delay_s` (an estimate: the deposit is not polled; an asset with no delay
configured is not counted).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from config.settings import ExecutionSettings
from daemon.core.clock import NS_PER_SECOND
from daemon.core.logs import get_logger
from daemon.core.model import Decision, TransferIntent
from daemon.core.records import RecordSink
from daemon.core.tasks import spawn
from daemon.core.vocabulary import Action
from daemon.trading.errors import TransferRefused
from daemon.trading.paper import PaperExecutor

log = get_logger("transfers")



@dataclass(slots=True)
class Transfer:
    transfer_id: str
    asset: str
    amount: float  # debited at the source
    fee: float
    from_venue: str
    to_venue: str
    sent_ns: int
    arrives_ns: int
    status: str = "in_flight"  # "in_flight" | "arrived"

    @property
    def credited(self) -> float:
        """What the destination receives."""
        return self.amount - self.fee


class PaperTransfers:
    """Inter-venue transfers of the paper executor's balances, on its feed clock."""

    def __init__(
        self,
        paper: PaperExecutor,
        execution: ExecutionSettings,
        on_arrival: Callable[[Transfer], None] | None = None,
    ) -> None:
        self._paper = paper
        self._delays = dict(execution.transfer_delay_s)
        self._fees = dict(execution.transfer_fee)
        self._on_arrival = on_arrival
        self._ids = itertools.count(1)
        self._in_flight: dict[str, Transfer] = {}

    def transfer(self, asset: str, amount: float, from_venue: str, to_venue: str,
                 now_ns: int) -> Transfer:
        """Send `amount` of `asset`; raises `TransferRefused` with the reason if it cannot."""
        delay_s = self._delays.get(asset)
        if delay_s is None:
            raise TransferRefused(f"transfer of {asset} refused: no transfer_delay_s configured")
        fee = self._fees.get(asset, 0.0)
        if from_venue == to_venue:
            raise TransferRefused(f"transfer refused: source and destination are {from_venue}")
        if not amount > fee:
            raise TransferRefused(f"transfer of {amount:g} {asset} refused: not more than the "
                                  f"fee {fee:g}")
        free = self._paper.free_balance(from_venue, asset)
        if amount > free + 1e-12:
            raise TransferRefused(f"transfer of {amount:g} {asset} refused: {from_venue} has "
                                  f"{free:g} free")
        sent_ns = max(now_ns, self._paper.now_ns)
        transfer = Transfer(
            transfer_id=f"paper-transfer-{next(self._ids)}", asset=asset, amount=amount,
            fee=fee, from_venue=from_venue, to_venue=to_venue, sent_ns=sent_ns,
            arrives_ns=sent_ns + int(delay_s * NS_PER_SECOND),
        )
        self._paper.credit(from_venue, asset, -amount)
        self._in_flight[transfer.transfer_id] = transfer
        self._paper.call_at(transfer.arrives_ns, lambda _now: self._arrive(transfer))
        log.info("transfer sent", transfer_id=transfer.transfer_id, asset=asset, amount=amount,
                 fee=fee, source=from_venue, destination=to_venue, delay_s=delay_s)
        return transfer

    def in_flight(self) -> list[Transfer]:
        return list(self._in_flight.values())

    def in_transit(self, venue: str, now_ns: int = 0) -> dict[str, float]:
        """Per asset, what transfers in flight will credit `venue` (net of fees)."""
        return _credits_to(venue, self._in_flight.values())

    def in_flight_amount(self, asset: str, to_venue: str | None = None) -> float:
        """What is on its way (net of fees), e.g. to count it in an inventory."""
        return sum(t.credited for t in self._in_flight.values()
                   if t.asset == asset and (to_venue is None or t.to_venue == to_venue))

    def _arrive(self, transfer: Transfer) -> None:
        self._paper.credit(transfer.to_venue, transfer.asset, transfer.credited)
        transfer.status = "arrived"
        del self._in_flight[transfer.transfer_id]
        log.info("transfer arrived", transfer_id=transfer.transfer_id, asset=transfer.asset,
                 credited=transfer.credited, destination=transfer.to_venue)
        if self._on_arrival is not None:
            self._on_arrival(transfer)


class BackgroundTransfers:
    """Runs live transfers as tasks (the runner is synchronous); a failure is recorded.
    An accepted withdrawal counts as in transit for the asset's configured delay."""

    def __init__(self, transfers: Any, sink: RecordSink,
                 execution: ExecutionSettings | None = None) -> None:
        self._transfers = transfers
        self._sink = sink
        self._tasks: set[asyncio.Task[Any]] = set()
        self._delays = dict(execution.transfer_delay_s) if execution is not None else {}
        self._fees = dict(execution.transfer_fee) if execution is not None else {}
        self._ids = itertools.count(1)
        self._in_flight: dict[str, Transfer] = {}

    def in_transit(self, venue: str, now_ns: int) -> dict[str, float]:
        """Per asset, what accepted withdrawals should credit `venue` and, by the configured
        delay, have not yet: an estimate (see the module doc)."""
        for key in [k for k, t in self._in_flight.items() if t.arrives_ns <= now_ns]:
            del self._in_flight[key]
        return _credits_to(venue, self._in_flight.values())

    def transfer(self, asset: str, amount: float, from_venue: str, to_venue: str,
                 now_ns: int) -> None:
        task = spawn(self._send(asset, amount, from_venue, to_venue, now_ns),
                     name=f"transfer:{asset}:{from_venue}->{to_venue}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, asset: str, amount: float, from_venue: str, to_venue: str,
                    now_ns: int) -> None:
        try:
            await self._transfers.transfer(asset, amount, from_venue, to_venue)
        except Exception as exc:  # refused or failed: the log says why, trading goes on
            log.error("transfer_failed", asset=asset, amount=amount, source=from_venue,
                      destination=to_venue, error=str(exc))
            inputs = TransferIntent(asset, from_venue, to_venue, amount).as_inputs()
            self._sink.record(Decision("transfers", now_ns, Action.REJECT, str(exc),
                                       inputs=inputs))
            return
        delay_s = self._delays.get(asset)
        if delay_s is None:
            return  # no idea when it lands: not guessed
        transfer_id = f"live-transfer-{next(self._ids)}"
        self._in_flight[transfer_id] = Transfer(
            transfer_id, asset, amount, self._fees.get(asset, 0.0), from_venue, to_venue,
            now_ns, now_ns + int(delay_s * NS_PER_SECOND))


def _credits_to(venue: str, transfers: Iterable[Transfer]) -> dict[str, float]:
    credits: dict[str, float] = {}
    for transfer in transfers:
        if transfer.to_venue == venue:
            credits[transfer.asset] = credits.get(transfer.asset, 0.0) + transfer.credited
    return credits
