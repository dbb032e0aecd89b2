"""Worker processes for a parallel offline screening (parallel.py), and how many to start.

Kept light (no FHIR models, no output code) so the command line can start the workers first,
and they load the rule sets while the command line itself starts up.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from datetime import date
from multiprocessing import resource_tracker
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from service.ndjson_files import MAX_LINE_BYTES, discover
from service.ruleset.engines import EngineName
from service.ruleset.overrides import Overrides
from service.screening import workers

if TYPE_CHECKING:
    from service.ruleset.loader import RuleSet

# Below this much input one process is quicker: starting a worker (imports, rule sets) costs
# about what one process reads in that time (measured: 1.1x at 700 MB, 1.6x at 7 GB on two
# cores). Only the default count follows it.
AUTO_MIN_BYTES = 256 << 20
# Past this much input one process no longer holds every patient in memory: it screens them
# bucket by bucket from spill files, as the workers do, so memory stays flat in population.
IN_MEMORY_MAX_BYTES = 1 << 30

T = TypeVar("T")


_open_pools = 0
_pools_lock = threading.Lock()


def _opened() -> None:
    global _open_pools
    with _pools_lock:
        _open_pools += 1


def _closed() -> None:
    """The last pool with processes closed: join multiprocessing's resource tracker.

    The spawn context starts that helper process for the pool's semaphores and never waits for
    it: it ends only once this process has exited, and lingers as a defunct process until
    someone reaps it. With no pool left open, this process needs it no more (another pool
    starts a new one); the semaphores are released first, so it has nothing to clean up."""
    global _open_pools
    with _pools_lock:
        _open_pools -= 1
        if _open_pools:
            return
        gc.collect()  # the executor's queues: their semaphores unregister as they are freed
        tracker = getattr(resource_tracker, "_resource_tracker", None)
        stop = getattr(tracker, "_stop", None)  # CPython's own, used by its tests
        if callable(stop):
            stop()


def source_bytes(source: Path) -> int:
    return sum(file.size for file in discover(source))


def needs_pool(total_bytes: int, count: int) -> bool:
    """Whether a run of ``count`` processes goes through a pool: always for several, and for
    one when the source is too large to hold in memory."""
    return count > 1 or total_bytes > IN_MEMORY_MAX_BYTES


def auto_workers(total_bytes: int) -> int:
    """The default: one process per core this process may use, one alone for a small source."""
    if total_bytes < AUTO_MIN_BYTES:
        return 1
    if hasattr(os, "sched_getaffinity"):  # the cores this process may run on (a container's)
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def rule_files(rulesets: Sequence[RuleSet]) -> list[tuple[Path, Path]]:
    """(rule file, mappings folder) of each rule set: what a worker loads them from."""
    return [(rs.path, rs.mapper.source_file.parent) for rs in rulesets]


def rule_overrides(rulesets: Sequence[RuleSet]) -> list[Overrides]:
    """The parameters set for the run (``--set``) of each rule set, which a worker applies to
    the rule set it loads."""
    return [rs.overrides for rs in rulesets]


class WorkerPool:
    """``count`` processes screening together: this one and ``count - 1`` worker processes,
    each with the rule sets loaded. A pool of one is this process alone, running the tasks in
    turn: a run too large to hold in memory is screened bucket by bucket that way.

    This process takes tasks too (its start-up is paid already; on a machine of two cores a
    third busy process would only slow the two others). Start the pool early (before loading
    the rule sets here, even) and the workers' start-up runs while this process starts up.
    """

    def __init__(
        self,
        count: int,
        rules: list[tuple[Path, Path]],
        engine: EngineName,
        as_of: date,
        overrides: Sequence[Overrides] = (),
        max_line: int = MAX_LINE_BYTES,
    ) -> None:
        if count < 1:
            raise ValueError("a pool has one process or more")
        context = multiprocessing.get_context("spawn")
        self.count = count
        self.rules = [(Path(path).resolve(), Path(maps).resolve()) for path, maps in rules]
        self.engine = engine
        self.as_of = as_of
        self.overrides = list(overrides) or [() for _ in rules]
        self.max_line = max_line
        self._processes = count - 1
        # Progress from the worker processes; a pool of one needs no queue between processes
        # (nor the helper process multiprocessing starts for one).
        self.messages: Any = context.Queue() if self._processes else queue.SimpleQueue()
        # Progress of the tasks this process runs itself (see ``run_all``).
        self.messages_here: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._executor: ProcessPoolExecutor | None = None
        if self._processes:
            self._executor = ProcessPoolExecutor(
                self._processes,
                mp_context=context,
                initializer=workers.start,
                initargs=(self.rules, engine, as_of, self.messages, self.overrides, max_line),
            )
            _opened()
            for _ in range(self._processes):  # one is spawned per task while none is idle
                self._executor.submit(workers.ready)

    def serves(
        self,
        rulesets: Sequence[RuleSet],
        engine: EngineName,
        as_of: date,
        max_line: int = MAX_LINE_BYTES,
    ) -> bool:
        rules = [(Path(p).resolve(), Path(m).resolve()) for p, m in rule_files(rulesets)]
        return (
            rules == self.rules
            and rule_overrides(rulesets) == self.overrides
            and engine == self.engine
            and as_of == self.as_of
            and max_line == self.max_line
        )

    def run_all(
        self,
        calls: Sequence[tuple[Callable[..., T], tuple[Any, ...]]],
        on_message: Callable[[tuple[Any, ...]], None],
    ) -> list[T]:
        """Run the calls, their results in the order of ``calls``: the worker processes take
        them from the front; this process, when it has adopted a worker (``workers.adopt``),
        takes its share from the back, in a thread, so that handing out tasks never waits for
        it. The largest calls should come first: everyone then finishes about together.

        Messages the tasks send (progress) go to ``on_message`` meanwhile, here. The first
        failure is raised (the workers' other tasks are cancelled when the pool closes).
        """
        executor = self._executor
        if executor is None:
            return self._run_here(calls, on_message)
        tasks = deque(enumerate(calls))
        results: dict[int, T] = {}
        running: dict[Future[T], int] = {}
        mine: Future[T] | None = None  # the task this process runs
        with ThreadPoolExecutor(1) as here:
            while tasks or running:
                while tasks and len(running) - (mine is not None) < self._processes:
                    index, (fn, args) = tasks.popleft()
                    running[executor.submit(fn, *args)] = index
                if tasks and mine is None and workers.adopted():
                    index, (fn, args) = tasks.pop()
                    mine = here.submit(fn, *args)
                    running[mine] = index
                done, _ = wait(running, timeout=0.1, return_when=FIRST_COMPLETED)
                for future in done:
                    mine = None if future is mine else mine
                    results[running.pop(future)] = future.result()  # a task's error is raised
                self._drain(on_message)
        return [results[index] for index in range(len(calls))]

    def _run_here(
        self,
        calls: Sequence[tuple[Callable[..., T], tuple[Any, ...]]],
        on_message: Callable[[tuple[Any, ...]], None],
    ) -> list[T]:
        """A pool of one: this process (which has adopted a worker) runs the calls in order."""
        if not workers.adopted():
            raise RuntimeError("a pool of one runs its tasks in the process that adopted a worker")
        results = []
        for fn, args in calls:
            results.append(fn(*args))
            self._drain(on_message)
        return results

    def _drain(self, on_message: Callable[[tuple[Any, ...]], None]) -> None:
        for messages in (self.messages, self.messages_here):
            while True:
                try:
                    on_message(messages.get_nowait())
                except queue.Empty:
                    break

    def close(self) -> None:
        """Stop the worker processes and wait for them, and for the helper process
        multiprocessing started with them: nothing of the pool outlives it."""
        if self._executor is None:
            return
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._executor = None
        self.messages.close()
        self.messages.join_thread()
        self.messages = queue.SimpleQueue()  # the old queue's semaphores are released now
        _closed()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
