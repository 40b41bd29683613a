"""`--mode archive`: the decision logs the strategy processes ship over NATS, written under
this process's `data_dir/decisions` in the layout `--mode post-mortem` reads.

    CRYPTOPIPE_DATA_DIR=/srv/archive python main.py --mode archive
    CRYPTOPIPE_DATA_DIR=/srv/archive python main.py --mode archive --feed nats://10.0.0.5:4222
    CRYPTOPIPE_DATA_DIR=/srv/archive python main.py --mode post-mortem

The server is `nats.url` (`CRYPTOPIPE_NATS__URL`), or the one `--feed nats://HOST:PORT`
names; credentials and TLS come from the `nats` settings. The durable consumer is
`nats.archive_consumer`: restarted under the same name, the archiver goes on where it
stopped. How records are placed, and why nothing is lost or written twice:
daemon/bridge/archive.py. Runs until Ctrl-C, SIGTERM or `--duration`, then prints what it
archived.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from config.settings import ConfigError
from daemon.core.logs import get_logger

if TYPE_CHECKING:
    from daemon.app import App

log = get_logger("archive")


async def run_archive(app: App) -> int:
    from daemon.bridge.archive import Archiver

    client = app.bridge.client
    if client is None:  # a bus mode always joins (daemon/bridge/process.py): say so anyway
        raise ConfigError("invalid setting nats.url: --mode archive needs a NATS server")
    # No market data here: /healthz must not wait for the configured venues' quotes.
    app.health.required_feeds = {}
    settings = app.settings
    archiver = Archiver(client, settings.nats, settings.data_dir)
    app.bridge.add_counters(archiver)
    try:
        await archiver.run()
    finally:
        await archiver.aclose()
        _print_summary(app, archiver)
    return 0


def _print_summary(app: App, archiver: object) -> None:
    stats = archiver.stats  # type: ignore[attr-defined]
    figures = {"archived_records": stats.archived_records, "duplicates": stats.duplicates,
               "out_of_order": stats.out_of_order, "malformed": stats.malformed,
               "runs": sorted(archiver.runs),  # type: ignore[attr-defined]
               "directory": str(archiver.root)}  # type: ignore[attr-defined]
    log.info("archive_stopped", **figures)
    if app.args.format == "json":
        print(orjson.dumps(figures).decode(), flush=True)
        return
    print(f"archived {stats.archived_records:,} records of {len(figures['runs'])} run(s) "
          f"into {figures['directory']} ({stats.duplicates:,} already there, "
          f"{stats.malformed:,} malformed)", flush=True)
