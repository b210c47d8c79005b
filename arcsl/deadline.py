"""The run's deadline: how the time left is shared among the tasks still to do.

Every task not yet done is owed one search (round 0), costed at the mean round 0 seen so far. A task
may learn (rounds after round 0) while the time left covers its own search and one learning round plus
the searches owed to the tasks after it; otherwise it gets search only. Whatever it does, a task starts
no round that would end (by the length of its previous round) after the time owed to the tasks after
it, and a task whose search would end after the deadline is not started. With tasks in flight (K > 1)
the same rule is counted in rounds of K tasks.

The planner only answers questions; the run driver (`loop.run_tasks`) asks them and decides. It reads
`time.monotonic()`, so tests replace this module's `time` with a fake clock.

What is not covered: several workers sharing one deadline.
"""

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from arcsl.loop import RoundStats


class DeadlinePlanner:
    """Shares the time left before the run's deadline among the tasks still to do (see the module docstring).

    With `tasks_in_flight` K > 1, searches are costed in rounds of K: `search_s` is a task's share of a
    shared round, so a round of K searches costs K x search_s, and so does a round of fewer tasks (a decode
    step costs about the same for few rows as for many).
    """

    def __init__(self, deadline_s: float, margin_s: float, tasks_in_flight: int = 1):
        self.deadline = None if deadline_s == -1 else time.monotonic() + deadline_s - margin_s
        self.tasks_in_flight = tasks_in_flight
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
        """Searches' worth of time owed to `num_tasks` tasks not started: whole rounds of tasks_in_flight."""
        k = self.tasks_in_flight
        return -(-num_tasks // k) * k

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
