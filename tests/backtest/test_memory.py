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
import platform

import numpy as np
import pytest

from daemon.backtest import cache

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc"
                           or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                           reason="reads glibc's malloc counters (mallinfo2, glibc >= 2.33)")

MB = 1 << 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mapped_bytes() -> int:
    """Bytes malloc holds in blocks mapped apart (each unmapped when freed)."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().hblkhd)


async def _load_events(tmp_path, shared_file) -> None:
    """What a backtest does first: its events from the cache (a small file suffices)."""
    from adapters.recordings.replay import ReplaySpec

    spec = ReplaySpec(shared_file("binance_usdm_btcusdt_20240718.gz"))
    data, _ = await cache.load([spec], tmp_path, depth=False)
    assert data is not None and len(data)


@glibc
async def test_a_chunk_sized_block_freed_goes_back_after_larger_ones(tmp_path, shared_file):
    await _load_events(tmp_path, shared_file)
    # A large block freed (a record batch, a depth batch): by default glibc now serves
    # every smaller block from the heap.
    large = np.ones(8 * MB // 8)
    del large
    before = _mapped_bytes()
    chunk = np.ones(2 * MB // 8)  # a chunk's buffer: mapped apart, so returned when freed
    assert _mapped_bytes() - before >= 2 * MB
    del chunk
    assert _mapped_bytes() - before < MB


@glibc
async def test_blocks_of_a_chunks_columns_stay_in_the_heap(tmp_path, shared_file):
    """The threshold is not so low that every chunk column (64k rows x 8 bytes) is mapped
    and faulted in anew (2.4x slower with 128 kB)."""
    await _load_events(tmp_path, shared_file)
    before = _mapped_bytes()
    column = np.ones(cache.CHUNK_ROWS)
    assert _mapped_bytes() - before < column.nbytes
    del column


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
