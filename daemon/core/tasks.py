"""Background tasks that cannot die unseen: `spawn` instead of `asyncio.create_task`.

A task nobody awaits that ends with an exception is, in plain asyncio, silent until the
garbage collector prints "Task exception was never retrieved" — long after the flow
source, the writer or a feed stopped. Every task of the daemon is started by `spawn`,
whose done-callback, the moment the task ends with an exception:

- retrieves the exception (so asyncio never prints that line) and logs it with its stack;
- tells the `TaskWatch` of the process, which the app turns into a `/healthz` reason and,
  in a strategy mode, a kill-switch trip (daemon/app.py, daemon/modes/action.py).

A task that is safely restarted by its owner (e.g. one connection of a feed that the
supervisor reconnects) is spawned with `restartable=True`: its failure is logged and
counted, but it does not make the daemon unhealthy. Exceptions a task's owner expects
(`expected=`, e.g. a closed client connection) are retrieved and ignored.

The watch is found through a context variable set once by the process (`watch_tasks`):
tasks copy the context they are created in, so every task below the mode sees it, and
code without one (a unit test) still gets the log line and no "never retrieved".
`install_loop_handler` routes what still reaches the loop's exception handler (a task
created by a library) to the same log and watch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from daemon.core.logs import get_logger

log = get_logger("tasks")

T = TypeVar("T")

#: (task name, exception) of a task that died and is not restarted.
FailureHandler = Callable[[str, BaseException], None]


@dataclass
class TaskWatch:
    """The process's record of tasks that died, and who to tell."""

    #: task name -> what it died of, for tasks that are not restarted (the first death).
    failed: dict[str, BaseException] = field(default_factory=dict)
    #: Failures of restartable tasks (their owner starts them again).
    restarted: int = 0
    _handlers: list[FailureHandler] = field(default_factory=list)

    def on_failure(self, handler: FailureHandler) -> None:
        """Run `handler(name, exc)` for every task that dies from now on, and at once for
        each one that already has."""
        self._handlers.append(handler)
        for name, exc in list(self.failed.items()):
            self._run(handler, name, exc)

    def report(self, name: str, exc: BaseException, *, restartable: bool = False) -> None:
        if restartable:
            self.restarted += 1
            return
        if name in self.failed:  # a second task of the same name: its stack is logged
            return
        self.failed[name] = exc
        for handler in list(self._handlers):
            self._run(handler, name, exc)

    def reasons(self) -> list[str]:
        """One line per dead task, for /healthz."""
        return [f"task {name} died: {type(exc).__name__}: {exc}"
                for name, exc in self.failed.items()]

    @staticmethod
    def _run(handler: FailureHandler, name: str, exc: BaseException) -> None:
        try:
            handler(name, exc)
        except Exception:  # one failing handler must not keep the others from running
            log.exception("task_failure_handler_failed", task=name)


_watch: ContextVar[TaskWatch | None] = ContextVar("cryptopipe_task_watch", default=None)


def watch_tasks(watch: TaskWatch) -> None:
    """Make `watch` the one every task spawned from this context (and its children) reports
    to."""
    _watch.set(watch)


def spawn(coroutine: Coroutine[Any, Any, T], *, name: str, restartable: bool = False,
          expected: tuple[type[BaseException], ...] = ()) -> asyncio.Task[T]:
    """`asyncio.create_task` whose failure is logged at once and reported (module doc)."""
    task = asyncio.create_task(coroutine, name=name)
    watch = _watch.get()

    def done(finished: asyncio.Task[T]) -> None:
        if finished.cancelled():
            return
        exc = finished.exception()  # retrieved: asyncio will not complain about it later
        if exc is None or isinstance(exc, expected):
            return
        log.error("task_failed", task=name, restartable=restartable, error=repr(exc),
                  exc_info=exc)
        if watch is not None:
            watch.report(name, exc, restartable=restartable)

    task.add_done_callback(done)
    return task


def install_loop_handler(loop: asyncio.AbstractEventLoop, watch: TaskWatch) -> None:
    """Route the loop's unhandled errors to the log, with their stack; a task that died
    unawaited (a library's) is also reported to `watch`. Transport noise (a peer resetting
    a connection to /metrics) is only logged: it must not stop trading."""

    def handle(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        task = context.get("task") or context.get("future")
        name = task.get_name() if isinstance(task, asyncio.Task) else "event loop"
        log.error("unhandled_error", task=name, message=context.get("message"),
                  error=repr(exc) if exc is not None else None, exc_info=exc)
        if isinstance(task, asyncio.Task) and isinstance(exc, Exception):
            watch.report(name, exc)

    loop.set_exception_handler(handle)
