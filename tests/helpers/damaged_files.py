"""Recordings no replay can use, and one it can use in part, written into a test's tmp dir."""

from __future__ import annotations

import random
from pathlib import Path

from adapters.recordings.replay import SAMPLE_FILES


def unusable_recordings(directory: Path) -> dict[str, Path]:
    """Files that give not one quote or trade: random bytes, a text file, and a gzip
    recording cut before the end of its first line."""
    directory.mkdir(parents=True, exist_ok=True)
    noise = directory / "noise.gz.bin"
    noise.write_bytes(random.Random(13).randbytes(20_000))
    text = directory / "notes.txt"
    text.write_text("these are my notes\nnot a recording\n")
    cut = directory / "cut_at_once.gz"
    cut.write_bytes(SAMPLE_FILES[0].read_bytes()[:200])
    return {"random bytes": noise, "text file": text, "truncated gzip": cut}


def truncated_recording(directory: Path) -> Path:
    """The spot sample cut in its middle: usable up to the cut, then damaged."""
    directory.mkdir(parents=True, exist_ok=True)
    content = SAMPLE_FILES[0].read_bytes()
    path = directory / "cut_in_the_middle.gz"
    path.write_bytes(content[: len(content) // 2])
    return path
