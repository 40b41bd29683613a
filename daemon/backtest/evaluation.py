"""Does learning help? The rl-internalize agent and its baselines on the same data and clients.

    python main.py --strategy rl-internalize --mode evaluate --model PATH --data FILE... --seeds 30

For each flow seed `strategies.internalize.seed + i` (i = 0 .. N-1) every policy of
`POLICIES` runs as a backtest of its own on the same files, with the quoted client flow
(adapters/quoted_flow.py) of the same settings: the same candidate clients at the same
times with the same sizes and acceptance draws (common random numbers), so the runs of one
seed differ only by the policy. The fixed-markup baselines quote
`strategies.rl_internalize.base_markup_bps` (the agent's unshaded markup) on both sides;
internalize's always-hedge twin is off (each baseline is a run of its own). Each run writes
its decision log under `<run>-<policy>-seed<seed>` (`run_id_for`).

Per run (`RunMetrics`, measured by `measure` from the run's own decision log and desk
portfolio; money in the quote currency, USDT):

- **P&L**: the desk portfolio's `pnl_trading` at its last mid (what the flow and the hedging
  made, the initial holding's market move excluded), and in bps of the client notional.
  Split so that the parts add up to it exactly (`PnlSplit`):
  - *markup*: sum over client fills of desk side x qty x (mid at the fill - client price):
    what clients paid over the mid;
  - *hedge fees*: minus the venue fees of the hedge fills;
  - *crossing*: minus sum over hedge fills of side x qty x (fill price - mid when the hedge
    was sent, the deciding record's mid): the spread and slippage paid;
  - *inventory mark-to-market*: the rest, P&L - the three above; by construction it is
    sum of side x qty x (last mid - reference mid) over client and hedge fills: the price
    moves on the inventory held (`inventory_mtm_by_hand` computes it that way, for tests).
- **inventory**: time-weighted mean and the max of |inventory| (base) over the data's span,
  and the share of that time within 0.1 % of `max_inventory` (at the limit).
- **hedge ratio**: base hedged on the venue / base the clients traded.
- **acceptance**: clients who took the quote / clients shown one (`FlowTally`); declined
  and no-market counts beside it.
- **markouts** at 1, 10, 60 s: sum of desk side x qty x (venue mid at t + h - client price)
  over the client fills, in bps of their notional (the markup included: at h = 0 it is the
  markup). Fills whose t + h is past the data are left out.
- **Sharpe per day**: the P&L curve (balances after each fill, valued at the venue mid)
  sampled as the post-mortem does (daemon/postmortem/performance.py: the longest of 1 d,
  1 h, 1 min, 1 s giving >= 10 intervals), mean / std of its changes x sqrt(intervals per
  day). Per run, then averaged over seeds like every metric.

Across seeds: every metric's mean per policy (`summarise`), and the paired difference of
the agent's P&L (USDT and bps) minus each baseline's, seed by seed, with a bootstrap 95 %
interval of its mean (`paired_difference`: 2,000 seeded resamples of the seeds).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from adapters.quoted_flow import flow_tally
from adapters.recordings.replay import ReplaySpec
from config.settings import Settings
from daemon.backtest.engine import Backtest, BacktestResult, existing_logs
from daemon.postmortem.performance import NS, sample_curve, sharpe_interval_s, sharpe_per_day

BPS = 1e-4
MARKOUT_HORIZONS_S = (1, 10, 60)
#: Within this share of max_inventory counts as at the limit (lot rounding stays inside).
AT_LIMIT_TOLERANCE = 1e-3
BOOTSTRAP_RESAMPLES = 2_000
BOOTSTRAP_SEED = 0
AGENT = "agent"


@dataclass(frozen=True, slots=True)
class EvalPolicy:
    """One policy of the evaluation: which strategy runs it and with which setting."""

    name: str
    strategy: str
    #: `strategies.rl_internalize.policy` (rl-internalize) or `internalize.policy`.
    policy: str
    description: str


POLICIES: tuple[EvalPolicy, ...] = (
    EvalPolicy(AGENT, "rl-internalize", "model", "the trained agent (--model)"),
    EvalPolicy("optimal", "internalize", "optimal", "closed-form internalize"),
    EvalPolicy("always-hedge", "internalize", "always_hedge", "offset every client fill"),
    EvalPolicy("never-hedge", "rl-internalize", "never-hedge",
               "never hedge (only back to max_inventory)"),
    EvalPolicy("a-s", "rl-internalize", "a-s", "Avellaneda-Stoikov client quote"),
)
POLICY_NAMES = tuple(policy.name for policy in POLICIES)


def policy_named(name: str) -> EvalPolicy:
    for policy in POLICIES:
        if policy.name == name:
            return policy
    raise ValueError(f"unknown evaluation policy {name!r} (known: {', '.join(POLICY_NAMES)})")


def flow_seeds(settings: Settings, count: int) -> list[int]:
    """The flow seeds: `strategies.internalize.seed` and the next `count` - 1."""
    first = settings.strategies.internalize.seed
    return list(range(first, first + count))


def run_id_for(run_id: str, policy: str, seed: int) -> str:
    return f"{run_id}-{policy}-seed{seed}"


def policy_settings(settings: Settings, policy: EvalPolicy, seed: int) -> Settings:
    """The settings of one run: quoted flow of `seed`, no twin, the fixed markup = the
    agent's unshaded markup, and the policy's own setting."""
    strategies = settings.strategies
    rl = strategies.rl_internalize
    internalize: dict[str, Any] = {
        "source": "quoted", "seed": seed, "always_hedge_baseline": False,
        "synthetic_markup_bps": rl.base_markup_bps}
    if policy.strategy == "internalize":
        internalize["policy"] = policy.policy
    else:
        rl = rl.model_copy(update={"policy": policy.policy})
    chosen = strategies.model_copy(update={
        "internalize": strategies.internalize.model_copy(update=internalize),
        "rl_internalize": rl})
    return settings.model_copy(update={"strategies": chosen})


# -- one run ----------------------------------------------------------------------------


@dataclass(slots=True)
class PnlSplit:
    """A run's P&L (quote currency) and its parts; markup + hedge_fees + crossing +
    inventory_mtm == pnl (the last is the rest)."""

    pnl: float
    markup: float
    hedge_fees: float
    crossing: float
    inventory_mtm: float


@dataclass(slots=True)
class RunMetrics:
    """What one policy did on one seed (see the module notes for each figure)."""

    policy: str
    seed: int
    run_id: str
    pnl: float = math.nan
    pnl_bps: float = math.nan
    markup: float = math.nan
    hedge_fees: float = math.nan
    crossing: float = math.nan
    inventory_mtm: float = math.nan
    client_fills: int = 0
    client_base: float = 0.0
    client_notional: float = 0.0
    hedge_base: float = 0.0
    hedge_ratio: float = math.nan
    shown: int = 0
    accepted: int = 0
    declined: int = 0
    no_market: int = 0
    acceptance: float = math.nan
    mean_abs_inventory: float = math.nan
    max_abs_inventory: float = math.nan
    time_at_limit: float = math.nan
    markout_1s_bps: float = math.nan
    markout_10s_bps: float = math.nan
    markout_60s_bps: float = math.nan
    sharpe_per_day: float = math.nan
    #: Hedge orders rejected (risk gate, paper balance) and the first one's reason.
    hedges_rejected: int = 0
    events: int = 0
    wall_seconds: float = 0.0
    rejection: str = ""

    def row(self) -> dict[str, Any]:
        return asdict(self)


#: The numeric figures of a run, in CSV order (what `summarise` averages).
METRICS: tuple[str, ...] = tuple(
    f.name for f in fields(RunMetrics) if f.name not in ("policy", "seed", "run_id",
                                                         "rejection"))


@dataclass(frozen=True, slots=True)
class RunJob:
    """One backtest of the evaluation: picklable, for a worker process."""

    settings: Settings
    specs: tuple[ReplaySpec, ...]
    policy: str
    seed: int
    run_id: str


def read_records(log_files: Iterable[Path]) -> list[dict[str, Any]]:
    """Every record of a run's decision log files, in order."""
    return [orjson.loads(line) for path in log_files for line in path.read_bytes().splitlines()]


def read_log(log_files: Iterable[Path], strategy: str) -> list[dict[str, Any]]:
    """The records of `strategy` in a run's decision log files, in order."""
    return [record for record in read_records(log_files) if record.get("strategy") == strategy]


def rejected_hedges(records: Sequence[Mapping[str, Any]],
                    own: Sequence[Mapping[str, Any]]) -> tuple[int, str]:
    """(how many, the first reason) of the hedge orders of `own` (a strategy's records)
    that the risk gate or the paper venue rejected, from every record of the run (acks
    carry no strategy name): e.g. a paper account too small for the hedges."""
    sent = {intent["client_order_id"] for record in own if record.get("type") == "decision"
            for intent in record.get("intents") or ()}
    rejected = [record for record in records if record.get("type") == "ack"
                and record.get("status") == "rejected"
                and record.get("client_order_id") in sent | {""}]
    return len(rejected), str(rejected[0].get("reason", "")) if rejected else ""


def _finite(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _desk_sign(client_side: str) -> float:
    """+1 when the desk bought (the client sold)."""
    return 1.0 if client_side == "sell" else -1.0


def _hedge_sign(side: str) -> float:
    return 1.0 if side == "buy" else -1.0


def client_fills(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The client fills the desk booked: their decisions' inputs (a refused fill's
    "reject" record names its size `refused_qty`, not `client_qty`: not booked)."""
    return [record["inputs"] for record in records
            if record.get("type") == "decision"
            and record.get("inputs", {}).get("trigger") == "client_fill"
            and "client_qty" in record["inputs"]]


def hedge_fills(records: Sequence[Mapping[str, Any]]) -> list[tuple[dict[str, Any], float]]:
    """Each venue fill with the mid of the decision that sent its order (NaN: unknown)."""
    sent_mid: dict[str, float] = {}
    for record in records:
        if record.get("type") == "decision":
            for intent in record.get("intents") or ():
                sent_mid[intent["client_order_id"]] = _finite(
                    record.get("inputs", {}).get("mid"))
    return [(record, sent_mid.get(record["client_order_id"], math.nan))
            for record in records if record.get("type") == "fill"]


def pnl_split(records: Sequence[Mapping[str, Any]], pnl: float) -> PnlSplit:
    """Split `pnl` (the portfolio's) into markup, fees, crossing and the rest."""
    markup = 0.0
    for fill in client_fills(records):
        edge = _finite(fill.get("mid")) - fill["client_price"]
        if math.isfinite(edge):  # no mid to measure it: it stays in the rest
            markup += _desk_sign(fill["client_side"]) * fill["client_qty"] * edge
    fees = crossing = 0.0
    for fill, mid in hedge_fills(records):
        fees -= fee_in_quote(fill)
        if math.isfinite(mid):
            crossing -= _hedge_sign(fill["side"]) * fill["qty"] * (fill["price"] - mid)
    return PnlSplit(pnl, markup, fees, crossing, pnl - markup - fees - crossing)


def fee_in_quote(fill: Mapping[str, Any]) -> float:
    """A venue fill's fee in the symbol's quote currency: a base-asset fee at the fill's
    price; a third asset's (BNB) 0, as the desk's P&L leaves that asset out."""
    fee = fill.get("fee") or 0.0
    base, _, rest = str(fill.get("symbol", "")).partition("/")
    quote = rest.partition(":")[0]
    asset = fill.get("fee_asset")
    if not fee or asset == quote:
        return fee
    return fee * fill["price"] if asset == base else 0.0


def inventory_mtm_by_hand(records: Sequence[Mapping[str, Any]], last_mid: float) -> float:
    """Sum of side x qty x (last mid - reference mid) over client and hedge fills: what
    `PnlSplit.inventory_mtm` is, computed directly (the tests compare the two)."""
    total = 0.0
    for fill in client_fills(records):
        total += _desk_sign(fill["client_side"]) * fill["client_qty"] * (last_mid - fill["mid"])
    for fill, mid in hedge_fills(records):
        total += _hedge_sign(fill["side"]) * fill["qty"] * (last_mid - mid)
    return total


def inventory_stats(ts_ns: np.ndarray, inventory: np.ndarray, start_ns: int, end_ns: int,
                    limit: float) -> tuple[float, float, float]:
    """(time-weighted mean |q|, max |q|, share of time within 0.1 % of `limit`) of the
    step function `inventory` (0 before its first time) over [start_ns, end_ns]."""
    span = end_ns - start_ns
    if span <= 0:
        return math.nan, math.nan, math.nan
    times = np.concatenate(([start_ns], np.clip(ts_ns, start_ns, end_ns)))
    held = np.abs(np.concatenate(([0.0], inventory)))
    durations = np.diff(np.append(times, end_ns)).astype(np.float64)
    at_limit = held >= limit * (1.0 - AT_LIMIT_TOLERANCE)
    return (float(np.dot(durations, held) / span), float(held.max()),
            float(durations[at_limit].sum() / span))


def markout_bps(fills: Sequence[Mapping[str, Any]], mid_ts: np.ndarray, mids: np.ndarray,
                horizon_s: float) -> float:
    """Client fills' markout at `horizon_s`, bps of their notional (module notes)."""
    if not len(mid_ts):
        return math.nan
    total = notional = 0.0
    last = mid_ts[-1]
    for fill in fills:
        at = fill["fill_ts_ns"] + int(horizon_s * NS)
        if at > last:
            continue
        mid = float(mids[np.searchsorted(mid_ts, at, side="right") - 1])
        total += _desk_sign(fill["client_side"]) * fill["client_qty"] * (
            mid - fill["client_price"])
        notional += fill["client_qty"] * fill["client_price"]
    return total / notional / BPS if notional > 0.0 else math.nan


def pnl_sharpe(rows_ts: np.ndarray, cash: np.ndarray, inventory: np.ndarray,
               mid_ts: np.ndarray, mids: np.ndarray, start_ns: int, end_ns: int) -> float:
    """Sharpe per day of the P&L curve (cash change + inventory x venue mid), sampled as
    the post-mortem samples it."""
    interval_s = sharpe_interval_s(end_ns - start_ns)
    if not interval_s or not len(mid_ts):
        return math.nan
    edges = np.arange(start_ns, end_ns + 1, interval_s * NS, dtype=np.int64)
    held_cash = sample_curve(rows_ts, cash, start_ns, end_ns, interval_s)
    held = sample_curve(rows_ts, inventory, start_ns, end_ns, interval_s)
    at = np.searchsorted(mid_ts, edges, side="right") - 1
    mid = np.where(at >= 0, mids[np.maximum(at, 0)], np.nan)
    curve = held_cash + held * mid
    curve = curve[np.isfinite(curve)]
    return sharpe_per_day(np.diff(curve), interval_s)


def measure(backtest: Backtest, result: BacktestResult, policy: str, seed: int
            ) -> RunMetrics:
    """A finished run's figures, from its decision log, its desk portfolio and the venue
    mids it saw."""
    strategy: Any = backtest.strategy
    desk = strategy.portfolio
    pnl = desk.pnl_trading(desk.last_mid)
    every = read_records(result.log_files)
    records = [record for record in every if record.get("strategy") == strategy.name]
    split = pnl_split(records, pnl)
    fills = client_fills(records)
    metrics = RunMetrics(policy, seed, backtest.run_id, pnl=pnl, markup=split.markup,
                         hedge_fees=split.hedge_fees, crossing=split.crossing,
                         inventory_mtm=split.inventory_mtm, events=result.events,
                         wall_seconds=result.wall_seconds)
    metrics.client_fills = len(fills)
    metrics.client_base = sum(fill["client_qty"] for fill in fills)
    metrics.client_notional = sum(fill["client_qty"] * fill["client_price"] for fill in fills)
    metrics.hedge_base = sum(fill["qty"] for fill, _ in hedge_fills(records))
    metrics.hedges_rejected, metrics.rejection = rejected_hedges(every, records)
    if metrics.client_notional > 0.0:
        metrics.pnl_bps = pnl / metrics.client_notional / BPS
    if metrics.client_base > 0.0:
        metrics.hedge_ratio = metrics.hedge_base / metrics.client_base
    tally = flow_tally(backtest.flow)
    if tally is not None:
        metrics.shown, metrics.accepted = tally.shown, tally.accepted
        metrics.declined, metrics.no_market = tally.declined, tally.no_mid
        metrics.acceptance = tally.acceptance_rate
    rows = desk.rows
    rows_ts = np.fromiter((row.ts_ns for row in rows), np.int64, len(rows))
    inventory = np.fromiter((row.inventory for row in rows), np.float64, len(rows))
    cash = np.fromiter((row.quote_balance for row in rows), np.float64, len(rows)) \
        - desk.initial_quote
    start, end = result.first_ts_ns, result.last_ts_ns
    (metrics.mean_abs_inventory, metrics.max_abs_inventory,
     metrics.time_at_limit) = inventory_stats(rows_ts, inventory, start, end,
                                              strategy.max_inventory)
    mid_ts, mids = venue_mids(backtest)
    for horizon in MARKOUT_HORIZONS_S:
        setattr(metrics, f"markout_{horizon}s_bps", markout_bps(fills, mid_ts, mids, horizon))
    metrics.sharpe_per_day = pnl_sharpe(rows_ts, cash, inventory, mid_ts, mids, start, end)
    return metrics


def venue_mids(backtest: Backtest) -> tuple[np.ndarray, np.ndarray]:
    """(receive times, mids) of the hedge venue's quotes the run published (its ring)."""
    own = backtest.settings.strategies.internalize
    ring = backtest.rings.quotes(own.venue, own.symbol)
    if ring is None:
        return np.empty(0, np.int64), np.empty(0)
    window = ring.since(0)
    return np.array(window.local_ts_ns, np.int64), np.array(window.mid, np.float64)


async def run_policy(job: RunJob) -> RunMetrics:
    """One backtest of the evaluation and its figures."""
    policy = policy_named(job.policy)
    backtest = Backtest(job.settings, policy.strategy, list(job.specs), job.run_id)
    result = await backtest.run()
    return measure(backtest, result, job.policy, job.seed)


def run_job(job: RunJob) -> RunMetrics:
    """A worker process's entry: one run on an event loop of its own."""
    return asyncio.run(run_policy(job))


def quiet_worker() -> None:
    """Worker processes log warnings only (each run would log its rings and cache hit)."""
    from daemon.core.logs import configure_logging

    configure_logging("evaluate-worker", "warning")


# -- many runs --------------------------------------------------------------------------


def jobs_for(settings: Settings, specs: Sequence[ReplaySpec], run_id: str, seeds: int
             ) -> list[RunJob]:
    """Every (seed, policy) run, seed by seed."""
    return [RunJob(policy_settings(settings, policy, seed), tuple(specs), policy.name, seed,
                   run_id_for(run_id, policy.name, seed))
            for seed in flow_seeds(settings, seeds) for policy in POLICIES]


def free_cores() -> float:
    """Cores this process may use minus the load of the last minute."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return cores - load


def choose_workers(jobs: int, free: float | None = None) -> int:
    """2 worker processes when more than one core is free and there is more than one run,
    else 1 (in this process)."""
    free = free_cores() if free is None else free
    return 2 if jobs > 1 and free > 1.0 else 1


@dataclass(slots=True)
class Evaluation:
    """Every run of an evaluation and what they add up to."""

    run_id: str
    seeds: list[int]
    runs: list[RunMetrics]
    workers: int
    wall_seconds: float
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    differences: list[PairedDifference] = field(default_factory=list)

    def runs_of(self, policy: str) -> list[RunMetrics]:
        return sorted((run for run in self.runs if run.policy == policy),
                      key=lambda run: run.seed)


async def evaluate(settings: Settings, specs: Sequence[ReplaySpec], run_id: str, seeds: int,
                   workers: int | None = None,
                   progress: Callable[[RunMetrics, int, int], None] | None = None
                   ) -> Evaluation:
    """Every policy on every seed (in `workers` processes; 1: in this one), then the
    summary and the paired differences. `progress(run, done, total)` after each run."""
    jobs = jobs_for(settings, specs, run_id, seeds)
    workers = choose_workers(len(jobs)) if workers is None else workers
    started = time.perf_counter()
    runs: list[RunMetrics] = []

    def finished(run: RunMetrics) -> None:
        runs.append(run)
        if progress is not None:
            progress(run, len(runs), len(jobs))

    if workers <= 1:
        for job in jobs:
            finished(await run_policy(job))
    else:
        await _in_workers(jobs, workers, finished)
    evaluation = Evaluation(run_id, flow_seeds(settings, seeds), runs, workers,
                            time.perf_counter() - started)
    evaluation.summary = summarise(runs)
    evaluation.differences = differences(evaluation)
    return evaluation


async def _in_workers(jobs: Sequence[RunJob], workers: int,
                      finished: Callable[[RunMetrics], None]) -> None:
    import multiprocessing

    loop = asyncio.get_running_loop()
    # spawn, not fork: this process runs an event loop and logging threads.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=quiet_worker) as pool:
        pending = [loop.run_in_executor(pool, run_job, job) for job in jobs]
        try:
            for next_done in asyncio.as_completed(pending):
                finished(await next_done)
        except BaseException:  # one failure (or Ctrl-C) ends the evaluation: not the rest
            for future in pending:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def existing_run_logs(settings: Settings, run_id: str, seeds: int) -> list[Path]:
    """Decision logs already under the run ids an evaluation would write."""
    return [path for seed in flow_seeds(settings, seeds) for policy in POLICY_NAMES
            for path in existing_logs(settings.data_dir, run_id_for(run_id, policy, seed))]


# -- across seeds -----------------------------------------------------------------------


def summarise(runs: Sequence[RunMetrics]) -> dict[str, dict[str, float]]:
    """Per policy (in `POLICIES` order), the mean over its seeds of every metric (NaN-
    skipping: a seed without a figure does not count), and `pnl_std` across seeds."""
    summary: dict[str, dict[str, float]] = {}
    for name in POLICY_NAMES:
        own = [run for run in runs if run.policy == name]
        if not own:
            continue
        means: dict[str, float] = {}
        for metric in METRICS:
            values = np.array([getattr(run, metric) for run in own], np.float64)
            values = values[np.isfinite(values)]
            means[metric] = float(values.mean()) if len(values) else math.nan
        pnls = np.array([run.pnl for run in own])
        means["pnl_std"] = float(pnls.std(ddof=1)) if len(pnls) > 1 else math.nan
        means["seeds"] = float(len(own))
        summary[name] = means
    return summary


@dataclass(frozen=True, slots=True)
class PairedDifference:
    """Mean over seeds of `policy` - `baseline` for one metric, and its bootstrap 95 %
    interval; `better`: share of seeds where the policy's figure is higher."""

    policy: str
    baseline: str
    metric: str
    seeds: int
    mean: float
    low: float
    high: float
    better: float

    def row(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_interval(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: `resamples` draws of len(values) values
    with replacement from a seeded generator."""
    if not len(values):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[draws].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_difference(policy: Sequence[float], baseline: Sequence[float], *,
                      policy_name: str = "", baseline_name: str = "", metric: str = "",
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
                      ) -> PairedDifference:
    """Seed by seed differences (same seeds, same order) and their mean's interval."""
    a, b = np.asarray(policy, np.float64), np.asarray(baseline, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same seeds: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    diff = a[keep] - b[keep]
    if not len(diff):
        return PairedDifference(policy_name, baseline_name, metric, 0, math.nan, math.nan,
                                math.nan, math.nan)
    low, high = bootstrap_interval(diff, resamples, seed)
    return PairedDifference(policy_name, baseline_name, metric, len(diff),
                            float(diff.mean()), low, high, float((diff > 0).mean()))


def differences(evaluation: Evaluation, metrics: Sequence[str] = ("pnl", "pnl_bps"),
                policy: str = AGENT) -> list[PairedDifference]:
    """`policy` minus each other policy, for each metric, over the seeds both ran."""
    own = {run.seed: run for run in evaluation.runs_of(policy)}
    result = []
    for baseline in POLICY_NAMES:
        if baseline == policy:
            continue
        theirs = {run.seed: run for run in evaluation.runs_of(baseline)}
        seeds = sorted(own.keys() & theirs.keys())
        for metric in metrics:
            result.append(paired_difference(
                [getattr(own[s], metric) for s in seeds],
                [getattr(theirs[s], metric) for s in seeds],
                policy_name=policy, baseline_name=baseline, metric=metric))
    return result
