"""The `/book` data socket: the consolidated top-of-book view streamed to local consumers.

crypto-pipe.txt's "datasockets": a WebSocket endpoint (`ws://127.0.0.1:8767/book` by
default, off unless `book_socket.enabled`) that sends one text message per update, each the
consolidated view of one symbol in the seed's JSON shape (`ConsolidatedView.to_json`):

    {"event_time": 1723161599999,
     "binance_spot": {"symbol": "BTC/USDT", "top_bid": "61685.99", ...}, ...}

On connect a client first gets the current view of every symbol, then updates.

Each client has its own bus subscription without trades, so it is conflated on its own:
while a slow client's send is waiting on its socket, newer quotes overwrite older ones in
its subscription (counted as conflated), and when it is ready it gets the newest view of
each symbol that changed. The bus never waits for a client and a client never holds more
than one pending quote per (venue, symbol).

With `book_socket.token` set, a client must present it as `?token=...` or
`Authorization: Bearer ...`; otherwise the handshake is refused with 401. The token is
never logged (nor is the request path, which may carry it). Without a token any local
process can read the view: start-up warns about it.

At most `book_socket.max_clients` clients are served at once: one more gets HTTP 503
(counted as refused) before its handshake completes, so a runaway consumer cannot make the
daemon hold an unbounded number of subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from config.settings import BookSocketSettings, ConfigError
from daemon.core.logs import get_logger
from daemon.core.tasks import spawn
from daemon.market.bus import Bus, Subscription

log = get_logger("book_socket")

PATH = "/book"
#: How long shutdown waits for clients to take the closing handshake before dropping them.
CLOSE_TIMEOUT_S = 1.0


class BookSocketServer:
    """Serves the consolidated view to every WebSocket client on `/book`."""

    def __init__(self, bus: Bus, settings: BookSocketSettings) -> None:
        self._bus = bus
        self._settings = settings
        token = settings.token.get_secret_value() if settings.token is not None else ""
        self._token = token.encode()
        self._server: Server | None = None
        self._subscriptions: set[Subscription] = set()
        self._connections: set[ServerConnection] = set()
        self._client_ids = itertools.count(1)
        self._sent = 0
        self._refused = 0
        self._conflated_by_gone_clients = 0

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        if self._server is None:
            return self._settings.port
        return next(iter(self._server.sockets)).getsockname()[1]

    async def start(self) -> None:
        try:
            self._server = await serve(
                self._serve_client, self._settings.host, self._settings.port,
                process_request=self._check_request,
                # Clients only listen; a small inbound limit keeps a misbehaving one cheap.
                max_size=4096,
                close_timeout=CLOSE_TIMEOUT_S,
            )
        except OSError as exc:  # port taken, bad host: an operator's fix, not a crash
            raise ConfigError(f"invalid setting book_socket: cannot listen on "
                              f"{self._settings.host}:{self._settings.port}: {exc.strerror}"
                              ) from None
        log.info("book_socket_listening", url=f"ws://{self._settings.host}:{self.port}{PATH}",
                 token_required=bool(self._token), max_clients=self._settings.max_clients)
        if not self._token:
            log.warning("book_socket_without_token",
                        hint="any local process can read the view; set book_socket.token")

    async def close(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):  # wait_for can swallow a cancel
                await server.wait_closed()
        except TimeoutError:
            # A client that stopped reading blocks its closing frame forever (the write
            # never drains): drop its TCP connection so shutdown goes on.
            for connection in self._connections:
                connection.transport.abort()
            await server.wait_closed()

    def stats(self) -> dict[str, int]:
        """Clients now, views sent, quotes conflated for clients (gone ones included), and
        clients refused because `max_clients` were connected."""
        live = sum(s.conflated for s in self._subscriptions)
        return {"clients": len(self._subscriptions), "sent": self._sent,
                "conflated": self._conflated_by_gone_clients + live, "refused": self._refused}

    def client_stats(self) -> list[dict[str, int | str]]:
        """Per connected client: quotes taken, conflated and pending in its subscription."""
        return [{"client": s.name, "delivered": s.delivered, "conflated": s.conflated,
                 "pending": s.pending} for s in self._subscriptions]

    # -- handshake -------------------------------------------------------------------------

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found: the view is on /book\n")
        if self._token and not self._authorized(url.query, request.headers):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "a valid token is required\n")
        if self._full():
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                                      "too many clients, try again later\n")
        return None

    def _full(self) -> bool:
        """At `max_clients` already: count and log the refusal."""
        if len(self._connections) < self._settings.max_clients:
            return False
        self._refused += 1
        log.warning("book_client_refused", reason="max_clients",
                    max_clients=self._settings.max_clients, refused=self._refused)
        return True

    def _authorized(self, query: str, headers: Headers) -> bool:
        presented = parse_qs(query).get("token", [""])[0]
        authorization = headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            presented = authorization.removeprefix("Bearer ").strip()
        return hmac.compare_digest(presented.encode(), self._token)

    # -- one client --------------------------------------------------------------------------

    async def _serve_client(self, connection: ServerConnection) -> None:
        # Handshakes that passed `_check_request` together can overshoot the limit: the
        # last ones are closed here with "try again later" before they get a subscription.
        if self._full():
            await connection.close(CloseCode.TRY_AGAIN_LATER, "too many clients")
            return
        client = f"book-socket-{next(self._client_ids)}"
        subscription = self._bus.subscribe(client, trades=False)
        self._subscriptions.add(subscription)
        self._connections.add(connection)
        log.info("book_client_connected", client=client, peer=str(connection.remote_address))
        sender = spawn(self._send_views(connection, subscription), name=client,
                       expected=(ConnectionClosed,))
        closed = spawn(connection.wait_closed(), name=f"{client}-closed")
        try:
            # A quiet market must not keep a closed client's subscription alive: whichever
            # ends first (the client going away, or a send failing) ends this client.
            await asyncio.wait({sender, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, closed):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await task
            self._bus.unsubscribe(subscription)
            self._subscriptions.discard(subscription)
            self._connections.discard(connection)
            self._conflated_by_gone_clients += subscription.conflated
            log.info("book_client_disconnected", client=client,
                     conflated=subscription.conflated, delivered=subscription.delivered)

    async def _send_views(self, connection: ServerConnection, subscription: Subscription) -> None:
        view = self._bus.view
        for symbol in view.symbols():  # the current state first, so no one waits for a tick
            await self._send(connection, view.to_json(symbol))
        while True:
            await subscription.wait()
            # Symbols that changed, in update order; their views are read only now, so a
            # client that was slow gets the newest state, not the one it missed.
            changed = dict.fromkeys(event.symbol for event in subscription.drain())
            for symbol in changed:
                await self._send(connection, view.to_json(symbol))

    async def _send(self, connection: ServerConnection, message: bytes) -> None:
        # Awaits only when this client's socket buffer is full: the backpressure that makes
        # its subscription conflate. Sent as a text frame (it is UTF-8 JSON) without decoding.
        await connection.send(message, text=True)
        self._sent += 1
