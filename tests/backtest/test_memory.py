"""Memory over many days (issue 18, item 2): what a backtest frees goes back to the system.

A backtest reads its events a chunk at a time (daemon/backtest/cache.py): each chunk's
buffers (the record batch read, a depth batch's levels, the columns the engine derives)
are a few hundred kB to a few MB, allocated and freed once per chunk. glibc's malloc maps
such a block apart only while it is above its mmap threshold, and by default it raises
that threshold to the size of each mapped block freed: after the first chunk, the next
chunks' buffers come from the heap, between long-lived small blocks, and the holes they
leave stay resident, more of them the more days are read (16 copies of the spot day: a
heap of 84 MB, 52 MB of it free). These tests check that, once a backtest has loaded its
events, a chunk-sized block freed is given back at once, however large the blocks freed
before it. They read glibc's own counters (`mallinfo2`), so they run only on glibc.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.backtest import cache

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc"
                           or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                           reason="reads glibc's malloc counters (mallinfo2, glibc >= 2.33)")

MB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


#: Run in a process of its own: malloc's state is the process's, and an earlier test's
#: freed blocks would serve these from the heap whatever the threshold.
_PROBE = """
import asyncio, ctypes, json, sys
from pathlib import Path
import numpy as np
from adapters.recordings.replay import ReplaySpec
from daemon.backtest import cache

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

def mapped():  # bytes malloc holds in blocks mapped apart (each unmapped when freed)
    return int(libc.mallinfo2().hblkhd)

# What a backtest does first: its events from the cache (a small file suffices).
data, _ = asyncio.run(cache.load([ReplaySpec(Path(sys.argv[1]))], Path(sys.argv[2]),
                                 depth=False))
assert data is not None and len(data)
large = np.ones(8 << 17)  # 8 MB freed (a record batch, a depth batch's levels)
del large
before = mapped()
chunk = np.ones(2 << 17)  # 2 MB, as a chunk's buffer
chunk_mapped = mapped() - before
del chunk
after_free = mapped() - before
column = np.ones(cache.CHUNK_ROWS)  # one of a chunk's columns, 512 kB
column_mapped = mapped() - before
print(json.dumps({"chunk_mapped": chunk_mapped, "after_free": after_free,
                  "column_mapped": column_mapped, "column": column.nbytes}))
"""


def _probe(tmp_path: Path, source: Path) -> dict[str, int]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MALLOC_")}  # glibc's own tunables would decide instead
    done = subprocess.run([sys.executable, "-c", _PROBE, str(source), str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
def test_a_chunk_sized_block_freed_goes_back_after_larger_ones(tmp_path, shared_file):
    """By default glibc serves every block below the largest mapped block freed from the
    heap: the 2 MB block would stay there, resident once freed."""
    found = _probe(tmp_path, shared_file("binance_usdm_btcusdt_20240718.gz"))
    assert found["chunk_mapped"] >= 2 * MB
    assert found["after_free"] < MB
    # Not so low that every chunk column (64k rows x 8 bytes) is mapped and faulted in
    # anew (2.4x slower at 128 kB): those are reused from the heap.
    assert found["column_mapped"] < found["column"]


@glibc
def test_the_allocator_is_tuned_once(monkeypatch):
    calls = []
    monkeypatch.setattr(cache, "_allocator_tuned", False)
    monkeypatch.setattr(cache, "_mallopt", lambda param, value: calls.append((param, value)) or 1)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    cache.tune_allocator()
    cache.tune_allocator()
    assert calls == [(cache.M_MMAP_THRESHOLD, cache.MMAP_THRESHOLD_BYTES)]


def test_a_threshold_set_in_the_environment_is_left_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(cache, "_allocator_tuned", False)
    monkeypatch.setattr(cache, "_mallopt", lambda param, value: calls.append((param, value)) or 1)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    cache.tune_allocator()
    assert calls == []


_HUGEPAGE_PROBE = """
import numpy as np
from daemon.backtest import cache
cache.tune_allocator()
print(np._core.multiarray._get_madvise_hugepage())
"""


@pytest.mark.parametrize(("env", "advised"), [(None, "False"), ("1", "True")])
def test_a_backtest_asks_for_no_huge_pages_unless_told_to(env: str | None,
                                                          advised: str) -> None:
    """numpy advises transparent huge pages for its large arrays by default; where the
    kernel then compacts memory to fault one in (THP defrag `madvise`), a growing ring's
    new columns stalled on it (790-840 k events/s without, 640-670 k with). A backtest
    turns the advice off, unless NUMPY_MADVISE_HUGEPAGE says otherwise."""
    pytest.importorskip("numpy._core.multiarray")
    environment = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if env is not None:
        environment["NUMPY_MADVISE_HUGEPAGE"] = env
    done = subprocess.run([sys.executable, "-c", _HUGEPAGE_PROBE], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == advised
