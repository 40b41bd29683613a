"""`spawn`: a background task that dies is logged at once, reported, and never 'never retrieved'."""

from __future__ import annotations

import asyncio
import gc

from structlog.testing import capture_logs

from daemon.core.tasks import TaskWatch, install_loop_handler, spawn, watch_tasks
from daemon.market.view import ConsolidatedView
from daemon.ops.health import Health


async def _die() -> None:
    raise RuntimeError("flow encoder overflow")


async def test_a_dead_task_is_logged_with_its_stack_and_named_by_healthz() -> None:
    health = Health()
    watch_tasks(health.tasks)
    unhandled: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
    told: list[str] = []
    health.tasks.on_failure(lambda name, exc: told.append(name))
    with capture_logs() as logs:
        task = spawn(_die(), name="client-flow")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert task.done()
    failed = [e for e in logs if e["event"] == "task_failed"]
    assert len(failed) == 1 and failed[0]["task"] == "client-flow"
    assert isinstance(failed[0]["exc_info"], RuntimeError)  # rendered as the stack
    assert told == ["client-flow"]
    report = health.evaluate(ConsolidatedView())
    assert not report.healthy
    assert report.reasons == ["task client-flow died: RuntimeError: flow encoder overflow"]
    del task
    gc.collect()
    assert unhandled == []  # no "Task exception was never retrieved"


async def test_a_late_subscriber_hears_of_earlier_deaths_and_restartable_tasks_stay_healthy(
) -> None:
    watch = TaskWatch()
    watch_tasks(watch)
    with capture_logs():
        restarted = spawn(_die(), name="feed:bybit session", restartable=True)
        dead = spawn(_die(), name="ring-snapshots")
        await asyncio.gather(restarted, dead, return_exceptions=True)
    assert list(watch.failed) == ["ring-snapshots"] and watch.restarted == 1
    told: list[str] = []
    watch.on_failure(lambda name, exc: told.append(name))
    assert told == ["ring-snapshots"]


async def test_expected_exceptions_and_cancellation_are_not_failures() -> None:
    watch = TaskWatch()
    watch_tasks(watch)
    with capture_logs() as logs:
        closed = spawn(_die(), name="book-socket-1", expected=(RuntimeError,))
        sleeper = spawn(asyncio.sleep(10), name="sleeper")
        sleeper.cancel()
        await asyncio.gather(closed, sleeper, return_exceptions=True)
    assert watch.failed == {} and logs == []


async def test_the_loop_handler_reports_a_library_task_that_died_unawaited() -> None:
    watch = TaskWatch()
    install_loop_handler(asyncio.get_running_loop(), watch)
    with capture_logs() as logs:
        task = asyncio.get_running_loop().create_task(_die(), name="library-task")
        await asyncio.sleep(0)
        del task
        gc.collect()
    assert [e["event"] for e in logs] == ["unhandled_error"]
    assert list(watch.failed) == ["library-task"]


async def test_transport_noise_on_the_loop_is_logged_but_not_a_dead_task() -> None:
    watch = TaskWatch()
    loop = asyncio.get_running_loop()
    install_loop_handler(loop, watch)
    with capture_logs() as logs:
        loop.call_exception_handler({"message": "Fatal read error on socket transport",
                                     "exception": ConnectionResetError(104, "reset")})
    assert [e["event"] for e in logs] == ["unhandled_error"]
    assert watch.failed == {}
