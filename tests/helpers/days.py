"""Multi-day inputs for tests: time-shifted copies of a recording, as consecutive days."""

from __future__ import annotations

import gzip
from pathlib import Path


def shifted_copies(source: Path, directory: Path, names: list[str],
                   shift_ns: int | None = None) -> list[Path]:
    """One copy of `source` per name in `directory`, copy k with every receive time
    shifted by k x `shift_ns` (None: the source's span plus a second, so copy k+1 starts
    after copy k ends); exchange times are left as recorded and lines without a receive
    time are copied as they are. Returns the paths, in copy order."""
    lines = gzip.decompress(source.read_bytes()).splitlines(keepends=True)
    if shift_ns is None:
        stamps = [int(line.split(b" ", 1)[0]) for line in lines if line[:1].isdigit()]
        shift_ns = max(stamps) - min(stamps) + 1_000_000_000
    span = shift_ns
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, name in enumerate(names):
        out = []
        for line in lines:
            stamp, sep, rest = line.partition(b" ")
            out.append(b"%d%s%s" % (int(stamp) + k * span, sep, rest) if stamp.isdigit()
                       else line)
        path = directory / name
        path.write_bytes(gzip.compress(b"".join(out), compresslevel=1))
        paths.append(path)
    return paths
