"""Sweep wall time: the same grid with 1 and 2 local worker processes and on a local Dask
cluster (2 worker processes), in one run, each as a ratio to 1 worker.

Run: .venv/bin/python bench/bench_sweep.py [--grid NAME=V1,V2 ...] [--workers 1 2 4]

Each sweep is the whole command (`python main.py --mode sweep`, process start included),
in one fresh data directory whose event cache a 1-run sweep builds first (not timed), so
every timed sweep reads the cache as a user's second sweep does. The cluster is started
before its sweep and not timed (a user sends tasks to one already running). Prints
figures, never asserts on time; the rankings of all sweeps are checked equal.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RECORDING = SHARED / "binance_spot_btcusdt_20240808.gz"
GRID = ["min_edge_bps=0,0.5,3", "order_qty=0.001,0.002,0.003"]


def sweep(data_dir: Path, sweep_id: str, grid: list[str], *where: str) -> tuple[float, list]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    env.update(CRYPTOPIPE_DATA_DIR=str(data_dir), CRYPTOPIPE_METRICS__ENABLED="false",
               CRYPTOPIPE_LOGGING__LEVEL="warning")
    command = [sys.executable, str(REPO / "main.py"), "--strategy", "inventory-mm", "--mode",
               "sweep", "--run-id", sweep_id, "--format", "json", "--data", str(RECORDING),
               *(arg for text in grid for arg in ("--grid", text)), *where]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"sweep {sweep_id} failed:\n{done.stderr[-2000:]}")
    rows = orjson.loads(done.stdout)["rows"]
    return wall, [{k: v for k, v in row.items() if k not in ("run_id", "status")}
                  for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", action="append", default=None, help="as --mode sweep's")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if not RECORDING.is_file():
        print(f"skipped: shared recording not found ({RECORDING})")
        return
    grid = args.grid or GRID
    runs = 1
    for text in grid:
        runs *= len(text.partition("=")[2].split(","))
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        data_dir = Path(tmp) / "data"
        sweep(data_dir, "warm-up", [grid[0].split(",")[0]], "--workers", "1")  # the cache
        print(f"sweep of {runs} inventory-mm backtests over {RECORDING.name} "
              f"({os.cpu_count()} cores here)")
        results: list[tuple[str, float, list]] = []
        for workers in args.workers:
            wall, rows = sweep(data_dir, f"local-{workers}", grid, "--workers", str(workers))
            results.append((f"{workers} local worker(s)", wall, rows))
        try:
            from distributed import LocalCluster
        except ImportError:
            print("cluster: skipped (pip install 'cryptopipe[cluster]')")
        else:
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                              host="127.0.0.1", dashboard_address=None) as cluster:
                wall, rows = sweep(data_dir, "cluster", grid, "--cluster",
                                   cluster.scheduler_address)
            results.append(("local Dask cluster, 2 workers", wall, rows))
    baseline = results[0][1]
    for label, wall, _ in results:
        print(f"  {label:<32} {wall:7.2f} s  {runs / wall:5.2f} backtests/s  "
              f"x{baseline / wall:.2f} vs 1 worker")
    same = all(rows == results[0][2] for _, _, rows in results)
    print(f"rankings and figures identical across all: {same}")


if __name__ == "__main__":
    main()
