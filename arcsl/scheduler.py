"""What runs next and until when: the run's queue of tasks and the deadline, owned by the parent process.

`Scheduler` hands out tasks in the run's order to whichever worker asks (one queue, so one long task never
idles the others), says by when a worker's next round must end, and takes back the tasks of a worker that
died (once per task: a task that brings down two workers is not handed out again). Workers ask through
`loop.TaskSource`; with one worker in the parent process it is the Scheduler itself.

`DeadlinePlanner` shares the time left before the deadline among the tasks still to do. Every task not
yet started is owed one search (round 0), costed at the mean round 0 seen so far; N workers with K tasks in
flight each do N x K searches at a time, so n tasks are owed ceil(n / (N K)) rounds of K searches. A task
may learn (rounds after round 0) while the time left covers its own search and one learning round plus
the searches owed to the tasks after it; otherwise it gets search only. Whatever it does, a task starts
no round that would end (by the length of its previous round) after the time owed to the tasks not yet
started, and no task starts whose search would end after the deadline.

Both only answer questions; the run driver (`loop.run_tasks`, in each worker) asks them and decides.
They read `time.monotonic()` of the parent, so tests replace this module's `time` with a fake clock.

What is not covered: costing tasks by size (every search is costed at the mean), workers of unequal speed.
"""

import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from arcsl.grids import Task

if TYPE_CHECKING:
    from arcsl.loop import RoundStats


class DeadlinePlanner:
    """Shares the time left before the run's deadline among the tasks still to do (see the module docstring).

    With `tasks_in_flight` K > 1, searches are costed in rounds of K: `search_s` is a task's share of a
    shared round, so a round of K searches costs K x search_s, and so does a round of fewer tasks (a decode
    step costs about the same for few rows as for many). `num_workers` such rounds run side by side.
    """

    def __init__(self, deadline_s: float, margin_s: float, tasks_in_flight: int = 1, num_workers: int = 1,
                 started: float | None = None):
        # the clock starts at `started` (time.monotonic(); the process's start, for the CLI), else now
        start = time.monotonic() if started is None else started
        self.deadline = None if deadline_s == -1 else start + deadline_s - margin_s
        self.tasks_in_flight, self.num_workers = tasks_in_flight, num_workers
        self.search_seconds: list[float] = []  # wall time of each round 0 (a search) seen so far

    def observe(self, stats: "RoundStats") -> None:
        """Learn from a finished round (only round 0, a pure search, tells the cost of a search)."""
        if stats.round == 0:
            self.search_seconds.append(sum(stats.seconds.values()))

    @property
    def search_s(self) -> float:
        """Estimated seconds of one search; 0 until one has been seen."""
        return sum(self.search_seconds) / len(self.search_seconds) if self.search_seconds else 0.0

    def _owed_searches(self, num_tasks: int) -> int:
        """Searches' worth of time owed to `num_tasks` tasks not started: whole rounds of tasks_in_flight, the
        workers doing theirs side by side."""
        k = self.tasks_in_flight
        return -(-num_tasks // (k * self.num_workers)) * k

    def may_learn(self, num_remaining: int) -> bool:
        """Whether the next task (of `num_remaining`, itself included) gets learning rounds."""
        if self.deadline is None:
            return True
        # its search and a learning round (about two searches' rounds), plus the searches of the later tasks
        searches = 2 * self.tasks_in_flight + self._owed_searches(num_remaining - 1)
        return self.deadline - time.monotonic() >= self.search_s * searches

    def task_deadline(self, num_remaining: int) -> float | None:
        """When the next task's rounds must have ended: the deadline less the searches of the later tasks."""
        if self.deadline is None:
            return None
        return self.deadline - self.search_s * self._owed_searches(num_remaining - 1)

    def may_start(self) -> bool:
        """Whether a task's search (a round of tasks_in_flight searches) would still end before the deadline."""
        return self.deadline is None or time.monotonic() + self.search_s * self.tasks_in_flight < self.deadline


class Scheduler:
    """The tasks not yet handed out, in the run's order, and the deadline's answers to the workers.

    Args:
        tasks: every task to run, in order.
        planner: the run's deadline planner (it hears every round through `observe`).
        max_rounds: the run's learning rounds per task; a task handed out near the deadline gets 0.
    """

    def __init__(self, tasks: Sequence[Task], planner: DeadlinePlanner, max_rounds: int):
        self.queue, self.planner, self.max_rounds = deque(tasks), planner, max_rounds
        self.not_started: list[Task] = []  # tasks the deadline left no time for
        self.num_put_back: Counter[str] = Counter()

    def next_task(self) -> tuple[Task, int] | None:
        """The next task and its learning rounds, or None: none left, or no time to search one more."""
        if not self.queue:
            return None
        if not self.planner.may_start():
            self.not_started += self.queue
            self.queue.clear()
            return None
        task = self.queue.popleft()
        return task, self.max_rounds if self.planner.may_learn(len(self.queue) + 1) else 0

    def round_deadline(self) -> float | None:
        """time.monotonic() (this process's) by which a task's next round must end, or None."""
        return self.planner.task_deadline(len(self.queue) + 1)

    def observe(self, stats: "RoundStats") -> None:
        """A round ended in some worker (what a search costs, for the deadline)."""
        self.planner.observe(stats)

    def put_back(self, task: Task) -> bool:
        """A worker died with `task` in flight: it goes to the front of the queue again, the first time only.
        Returns whether it did (False: it had already been put back once, and fails)."""
        self.num_put_back[task.id] += 1
        if self.num_put_back[task.id] > 1:
            return False
        self.queue.appendleft(task)
        return True
