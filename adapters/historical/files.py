"""Opening the containers historical data comes in: Binance's zip (one CSV inside).

Gzip and plain files are read by the replay's own readers (adapters/recordings/replay.py),
which survive a truncated stream; a zip is read here, up to its damage likewise.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

_READ_CHUNK_BYTES = 1 << 20


class Damage(Protocol):
    """Where a reader notes why a file ended early (replay's `FileStats.damage`)."""

    damage: str | None


def zip_chunks(path: Path, stats: Damage) -> Iterator[bytes]:
    """The decompressed bytes of the one CSV inside a Binance zip, in chunks. A damaged
    archive yields what could be read and notes the damage in `stats.damage`."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        stats.damage = f"unreadable zip archive: {error}"
        return
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) != 1:
            stats.damage = (f"zip archive holds {len(members)} files, expected one CSV: "
                            f"{', '.join(info.filename for info in members[:5])}")
            return
        try:
            with archive.open(members[0]) as member:
                while chunk := member.read(_READ_CHUNK_BYTES):
                    yield chunk
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
            stats.damage = f"corrupt zip data: {error}"
