"""`arcsl solve`: search and learn over a dataset, with a results store, deadlines, resume and reports.

For every task (largest first if asked): the rounds of `loop.run_round`, its attempts and phase
timings written to the results store round by round, then `submission.json` rewritten, so that killing the
run at any moment loses at most the round in flight and always leaves a valid submission. Tasks
already finished in the store are skipped with `--resume`; an unfinished one starts over.

Progress: a bar over tasks with its ETA, and beside it the current task's round, phase (sampling,
execution, relabelling, finetuning, reset) and best train score so far, updated as each phase starts
(with tasks in flight, those of each task in flight).

Deadline (`--deadline-s`, e.g. 12 h on Kaggle, less `--deadline-margin-s` kept for the final exports):
every task not yet done is owed one search (round 0), costed at the mean round 0 seen so far. A task
may learn (rounds after round 0) while the time left covers its own search and one learning round
plus the searches owed to the tasks after it; otherwise it gets search only. Whatever it does, a
task starts no round that would end (by the length of its previous round) after the time owed to
the tasks after it; a task whose search would end after the deadline is not started, and the tasks
never reached get the fallback answers of `selection.py` in `submission.json`.

Tasks in flight (`--tasks-in-flight K`, K > 1): K tasks are searched together in lockstep rounds
(`loop.run_round`), each learning in its own LoRA adapter of the engine (loaded with K adapters), so
that each round's sampling for all of them is one engine call. A task that stops (solved, out of
rounds or time) is finished at once and its adapter (slot) takes the next task, which starts at round
0 beside the others' later rounds: the batch stays full rather than waiting for the slowest task of a
fixed group. Each task's attempts, rounds, timings and answers are stored as with K = 1. The deadline
rule is the same, counted in rounds of K tasks: the searches owed to the tasks not yet started are
ceil(n / K) rounds of K searches (each task's share of a shared round being a search's cost), a
learning round must fit beside them, and a new task starts only while a full round of K searches
would still end before the deadline.

A task that fails (an exception from the engine or the sandbox) is finished with the answers its
stored attempts give, and the run goes on; one that failed before storing any attempt stays
unfinished: it has the fallback answers, and `--resume` tries it again. With K > 1 an exception in
a round fails every task of that round (they share its sampling call and its sandbox batch).

What is not covered: multi-GPU sharding (one process, one engine), the algorithm itself (`loop.py`).
"""

import json
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from arcsl.config import DataConfig, ModelConfig, SolveConfig
from arcsl.grids import Task, load_dataset
from arcsl.loop import (LoopSettings, PhaseEvent, RoundStats, TaskResult, TaskRun, conclude, finish_run,
                        run_round, start_run)
from arcsl.prompting import PROMPT_FORMATS
from arcsl.scoring import Attempt, metrics_rows
from arcsl.store import Store, export_attempts_jsonl, export_metrics_csv, open_store
from arcsl.submission import build_submission, write_submission

SUBMISSION = "submission.json"
STORE = "results.sqlite"


@dataclass(frozen=True, slots=True)
class RunSummary:
    output_dir: str
    num_tasks: int
    num_finished: int              # tasks finished in this run (a failed task is not counted)
    num_skipped: int               # already finished before a --resume
    mean_scores: dict              # the MEAN row of metrics.csv
    seconds: float


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

    def observe(self, stats: RoundStats) -> None:
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


def progress_text(event: PhaseEvent) -> str:
    """What the progress bar shows of the task in progress."""
    return f"{event.task_id} round {event.round} {event.phase} best train {event.best_train_score:.2f}"


def _write_outputs(out: Path, tasks: list[Task], store: Store) -> None:
    write_submission(out / SUBMISSION, build_submission(tasks, store.predictions()))


@dataclass(slots=True)
class _Run:
    """What every task of one `solve` run uses."""
    out: Path
    tasks: list[Task]
    engine: object       # an arcsl.engine.Engine (its module, which imports torch, is imported lazily)
    pool: object         # an arcsl.sandbox.SandboxPool
    settings: LoopSettings
    store: Store
    planner: DeadlinePlanner
    progress: object     # a tqdm bar, disabled without --progress
    wandb_run: object    # None without --wandb


def engine_config(cfg: SolveConfig) -> ModelConfig:
    """The model settings to load for `cfg`: at least one LoRA adapter per task in flight."""
    return replace(cfg.model, num_adapters=max(cfg.model.num_adapters, cfg.loop.tasks_in_flight))


def solve(cfg: SolveConfig, engine=None) -> RunSummary:
    """Run search and learn on every selected task; see the module docstring.

    Args:
        engine: an `Engine` to use instead of loading `cfg.model` (tests, other engine implementations);
            with tasks_in_flight > 1 it must hold that many adapters.
    """
    from arcsl.engine import load_engine
    from arcsl.sandbox import SandboxPool
    from arcsl.report import print_summary, write_report

    started = time.monotonic()
    in_flight = cfg.loop.tasks_in_flight
    if engine is not None and in_flight > 1 and engine.num_adapters < in_flight:
        raise ValueError(f"--tasks-in-flight {in_flight} needs an engine with one LoRA adapter per task in flight, "
                         f"num_adapters >= {in_flight}; the engine given has num_adapters={engine.num_adapters}")
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = _load_tasks(cfg.data)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    print(f"arcsl solve: {len(tasks)} tasks -> {out}\nconfig: {json.dumps(asdict(cfg))}", file=sys.stderr)

    planner = DeadlinePlanner(cfg.run.deadline_s, cfg.run.deadline_margin_s, in_flight)
    wandb_run = _start_wandb(cfg, out) if cfg.run.wandb else None
    with open_store(out / STORE, resume=cfg.run.resume, config=asdict(cfg)) as store:
        done = store.finished_task_ids() & {t.id for t in tasks}
        _write_outputs(out, tasks, store)  # a valid submission exists from the first second
        engine = engine or load_engine(engine_config(cfg))
        settings = LoopSettings(cfg.loop, cfg.relabel, cfg.sampling, cfg.finetune, model_id=cfg.model.model)
        todo = [t for t in tasks if t.id not in done]
        with SandboxPool(cfg.sandbox, dsl_path=PROMPT_FORMATS[cfg.loop.prompt_format].dsl_path) as pool:
            run = _Run(out, tasks, engine, pool, settings, store, planner, _progress(len(todo), cfg.run.progress),
                       wandb_run)
            num_finished = _solve_in_flight(run, todo)
            run.progress.close()
        export_metrics_csv(store, out / "metrics.csv")
        export_attempts_jsonl(store, out / "attempts.jsonl")
        task_ids = {t.id for t in tasks}
        scores = [s for s in store.task_scores() if s.task_id in task_ids]
        write_report(out, tasks, store)
        print_summary(scores, store.phase_timings())
        mean = metrics_rows(scores)[-1] if scores else {}
    if wandb_run is not None:
        wandb_run.summary.update({f"mean/{k}": v for k, v in mean.items() if isinstance(v, (int, float))})
        wandb_run.finish()
    return RunSummary(str(out), len(tasks), num_finished, len(done), mean, time.monotonic() - started)


def _solve_in_flight(run: _Run, todo: list[Task]) -> int:
    """The tasks of `todo`, tasks_in_flight at a time in lockstep rounds (one at a time by default); a task
    that stops hands its slot (adapter) to the next one at once. Returns the number finished."""
    num_slots = run.settings.loop.tasks_in_flight
    queue = deque(enumerate(todo))
    runs: list[TaskRun] = []
    index: dict[str, int] = {}  # task id -> its place in todo (for wandb)
    shown: dict[str, str] = {}  # task id -> its progress text, for every task in flight
    num_finished = 0
    while True:
        while queue and len(runs) < num_slots:  # fill the free slots
            if not run.planner.may_start():
                _print_not_started(len(queue))
                queue.clear()
                break
            i, task = queue.popleft()
            index[task.id] = i
            slot = min(set(range(num_slots)) - {r.slot for r in runs})
            run.store.start_task(task.id)
            runs.append(start_run(task, _task_settings(run, len(queue) + 1), slot,
                                  on_round=_store_round(task.id, run), on_phase=_show_phase(run.progress, shown)))
        if not runs:
            return num_finished
        try:
            run_round(runs, run.engine, run.pool, deadline=lambda: run.planner.task_deadline(len(queue) + 1))
        except Exception as e:  # the round's tasks share its sampling call and sandbox batch: all of them fail
            failed, runs = runs, []
            for r in failed:
                shown.pop(r.task.id)
                _fail_task(r.task, run.store, e)
                _task_done(run)
        for r in [r for r in runs if r.reason is not None]:
            shown.pop(r.task.id)
            try:
                result = finish_run(r)
                run.store.finish_task(r.task.id, result.scores, result.predictions)
            except Exception as e:  # one broken task must not cost the others; its attempts stay stored
                _fail_task(r.task, run.store, e)
            else:
                num_finished += 1
                _log_result(run, index[r.task.id], result)
            _task_done(run)
        runs = [r for r in runs if r.reason is None]


def _task_settings(run: _Run, num_remaining: int) -> LoopSettings:
    """The loop settings of the next task (of `num_remaining`): search only once the deadline is near."""
    if run.planner.may_learn(num_remaining):
        return run.settings
    return replace(run.settings, loop=replace(run.settings.loop, max_rounds=0))


def _print_not_started(num_tasks: int) -> None:
    print(f"deadline: {num_tasks} tasks not started get fallback answers", file=sys.stderr)


def _fail_task(task: Task, store: Store, error: Exception) -> None:
    print(f"task {task.id} failed: {type(error).__name__}: {error}; it gets the answers of its stored "
          "attempts, if any", file=sys.stderr)
    _finish_from_store(task, store)


def _log_result(run: _Run, index: int, result: TaskResult) -> None:
    if run.wandb_run is not None:
        run.wandb_run.log({"task": index, **asdict(result.scores), "seconds": result.seconds,
                           **{f"time/{k}": sum(r.seconds[k] for r in result.rounds) for k in result.rounds[0].seconds}})


def _task_done(run: _Run) -> None:
    """After a task finished or failed: the submission rewritten, the bar moved on."""
    _write_outputs(run.out, run.tasks, run.store)
    run.progress.update(1)


def _start_wandb(cfg: SolveConfig, out: Path):
    try:
        import wandb
    except ImportError:
        raise ValueError("--wandb needs the wandb package: pip install 'arcsl[wandb]'") from None
    return wandb.init(project="arcsl", config=asdict(cfg), dir=str(out))


def _load_tasks(cfg: DataConfig) -> list[Task]:
    result = load_dataset(cfg)
    for error in result.skipped:
        print(f"skipped invalid task: {error}", file=sys.stderr)
    return result.tasks


def _store_round(task_id: str, run: _Run):
    """A task's on_round: its attempts and timings stored, its round 0 taught to the planner."""
    def on_round(new: list[Attempt], stats: RoundStats) -> None:
        run.store.add_attempts(new)
        run.store.add_phase_timings(task_id, stats.round, stats.seconds)
        run.planner.observe(stats)

    return on_round


def _show_phase(progress, shown: dict[str, str]):
    """An on_phase that shows, beside the bar, every task in `shown` (the tasks in flight)."""
    def on_phase(event: PhaseEvent) -> None:
        shown[event.task_id] = progress_text(event)
        progress.set_postfix_str(" | ".join(shown.values()))

    return on_phase


def _finish_from_store(task: Task, store: Store) -> None:
    """Finish a failed task with the answers its stored attempts give; one without any stays unfinished
    (it has the fallback in the submission, and a --resume tries it again)."""
    attempts = store.attempts(task.id)
    if not attempts or store.task_status(task.id) != "running":
        return
    predictions, scores = conclude(task, attempts)
    store.finish_task(task.id, scores, predictions)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="task", disable=not enabled, dynamic_ncols=True)
