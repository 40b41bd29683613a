"""Live transfers: withdrawals through ccxt, only to whitelisted addresses.

Refused unless the destination address is in `ExecutionSettings.withdrawal_whitelist`
(exact match, compared before any call to the venue). A venue-to-venue transfer asks the
destination venue for its deposit address and then applies the same rule, so
whitelisting is always by address, never by venue name: a compromised or misconfigured
venue answer cannot redirect funds elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.ccxt.exchange import wrap_error
from config.settings import ExecutionSettings
from daemon.core.logs import get_logger
from daemon.trading.errors import Redactor, TransferRefused

log = get_logger("transfers")


class LiveTransfers:
    """Withdrawals via ccxt, only to whitelisted addresses."""

    def __init__(self, exchanges: Mapping[str, Any], execution: ExecutionSettings,
                 redact: Redactor | None = None) -> None:
        self._exchanges = exchanges
        self._whitelist = frozenset(a.strip() for a in execution.withdrawal_whitelist)
        self._redact = redact or Redactor()

    def check_destination(self, address: str) -> None:
        if address.strip() not in self._whitelist:
            raise TransferRefused(
                f"withdrawal to {address} refused: not in execution.withdrawal_whitelist")

    async def withdraw(self, venue: str, asset: str, amount: float, address: str,
                       tag: str | None = None, network: str | None = None) -> dict[str, Any]:
        """Withdraw to a whitelisted address; returns ccxt's transaction structure."""
        self.check_destination(address)
        exchange = self._exchange(venue)
        params = {"network": network} if network else {}
        log.warning("withdrawal", venue=venue, asset=asset, amount=amount, address=address,
                    network=network)
        try:
            result: dict[str, Any] = await exchange.withdraw(asset, amount, address, tag, params)
        except Exception as error:
            raise wrap_error(error, self._redact) from None
        return result

    async def transfer(self, asset: str, amount: float, from_venue: str, to_venue: str,
                       network: str | None = None) -> dict[str, Any]:
        """Withdraw from one venue to the other's deposit address (if whitelisted)."""
        destination = self._exchange(to_venue)
        params = {"network": network} if network else {}
        try:
            deposit = await destination.fetch_deposit_address(asset, params)
        except Exception as error:
            raise wrap_error(error, self._redact) from None
        return await self.withdraw(from_venue, asset, amount, deposit["address"],
                                   deposit.get("tag"), network)

    def _exchange(self, venue: str) -> Any:
        exchange = self._exchanges.get(venue)
        if exchange is None:
            raise TransferRefused(f"transfer refused: no live connection to {venue}")
        return exchange
