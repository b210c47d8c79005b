"""`arcsl solve`: search and learn over a dataset, with a results store, deadlines, resume and reports.

For every task (largest first if asked): `loop.search_and_learn`, its attempts and phase timings
written to the results store round by round, then `submission.json` rewritten, so that killing the
run at any moment loses at most the round in flight and always leaves a valid submission. Tasks
already finished in the store are skipped with `--resume`; an unfinished one starts over.

Progress: a bar over tasks with its ETA, and beside it the current task's round, phase (sampling,
execution, relabelling, finetuning, reset) and best train score so far, updated as each phase starts.

Deadline (`--deadline-s`, e.g. 12 h on Kaggle, less `--deadline-margin-s` kept for the final exports):
every task not yet done is owed one search (round 0), costed at the mean round 0 seen so far. A task
may learn (rounds after round 0) while the time left covers its own search and one learning round
plus the searches owed to the tasks after it; otherwise it gets search only. Whatever it does, a
task starts no round that would end (by the length of its previous round) after the time owed to
the tasks after it; a task whose search would end after the deadline is not started, and the tasks
never reached get the fallback answers of `selection.py` in `submission.json`.

A task that fails (an exception from the engine or the sandbox) is finished with the answers its
stored attempts give, and the run goes on; one that failed before storing any attempt stays
unfinished: it has the fallback answers, and `--resume` tries it again.

What is not covered: multi-GPU sharding (one process, one engine), the algorithm itself (`loop.py`).
"""

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from arcsl.config import DataConfig, SolveConfig
from arcsl.grids import Task, load_dataset
from arcsl.loop import LoopSettings, PhaseEvent, RoundStats, TaskResult, conclude, search_and_learn
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
    """Shares the time left before the run's deadline among the tasks still to do (see the module docstring)."""

    def __init__(self, deadline_s: float, margin_s: float):
        self.deadline = None if deadline_s == -1 else time.monotonic() + deadline_s - margin_s
        self.search_seconds: list[float] = []  # wall time of each round 0 (a search) seen so far

    def observe(self, stats: RoundStats) -> None:
        """Learn from a finished round (only round 0, a pure search, tells the cost of a search)."""
        if stats.round == 0:
            self.search_seconds.append(sum(stats.seconds.values()))

    @property
    def search_s(self) -> float:
        """Estimated seconds of one search; 0 until one has been seen."""
        return sum(self.search_seconds) / len(self.search_seconds) if self.search_seconds else 0.0

    def may_learn(self, num_remaining: int) -> bool:
        """Whether the next task (of `num_remaining`, itself included) gets learning rounds."""
        if self.deadline is None:
            return True
        # its search and a learning round (about two searches), plus one search for each later task
        return self.deadline - time.monotonic() >= self.search_s * (num_remaining + 1)

    def task_deadline(self, num_remaining: int) -> float | None:
        """When the next task's rounds must have ended: the deadline less one search per later task."""
        if self.deadline is None:
            return None
        return self.deadline - self.search_s * (num_remaining - 1)

    def may_start(self) -> bool:
        """Whether a task's search would still end before the deadline."""
        return self.deadline is None or time.monotonic() + self.search_s < self.deadline


def progress_text(event: PhaseEvent) -> str:
    """What the progress bar shows of the task in progress."""
    return f"{event.task_id} round {event.round} {event.phase} best train {event.best_train_score:.2f}"


def _write_outputs(out: Path, tasks: list[Task], store: Store) -> None:
    write_submission(out / SUBMISSION, build_submission(tasks, store.predictions()))


def solve(cfg: SolveConfig, engine=None) -> RunSummary:
    """Run search and learn on every selected task; see the module docstring.

    Args:
        engine: an `Engine` to use instead of loading `cfg.model` (tests, other engine implementations).
    """
    from arcsl.engine import load_engine
    from arcsl.sandbox import SandboxPool
    from arcsl.report import print_summary, write_report

    started = time.monotonic()
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = _load_tasks(cfg.data)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    print(f"arcsl solve: {len(tasks)} tasks -> {out}\nconfig: {json.dumps(asdict(cfg))}", file=sys.stderr)

    planner = DeadlinePlanner(cfg.run.deadline_s, cfg.run.deadline_margin_s)
    wandb_run = _start_wandb(cfg, out) if cfg.run.wandb else None
    with open_store(out / STORE, resume=cfg.run.resume, config=asdict(cfg)) as store:
        done = store.finished_task_ids() & {t.id for t in tasks}
        _write_outputs(out, tasks, store)  # a valid submission exists from the first second
        engine = engine or load_engine(cfg.model)
        settings = LoopSettings(cfg.loop, cfg.relabel, cfg.sampling, cfg.finetune, model_id=cfg.model.model)
        todo = [t for t in tasks if t.id not in done]
        num_finished = 0
        with SandboxPool(cfg.sandbox, dsl_path=PROMPT_FORMATS[cfg.loop.prompt_format].dsl_path) as pool:
            progress = _progress(len(todo), cfg.run.progress)
            for i, task in enumerate(todo):
                num_remaining = len(todo) - i
                if not planner.may_start():
                    print(f"deadline: {num_remaining} tasks not started get fallback answers", file=sys.stderr)
                    break
                task_settings = (settings if planner.may_learn(num_remaining)
                                 else replace(settings, loop=replace(cfg.loop, max_rounds=0)))
                try:
                    result = _solve_task(task, engine, pool, task_settings, store, planner, num_remaining, progress)
                except Exception as e:  # one broken task must not cost the others; its attempts stay stored
                    print(f"task {task.id} failed: {type(e).__name__}: {e}; it gets the answers of its stored "
                          "attempts, if any", file=sys.stderr)
                    _finish_from_store(task, store)
                else:
                    num_finished += 1
                    if wandb_run is not None:
                        wandb_run.log({"task": i, **asdict(result.scores), "seconds": result.seconds,
                                       **{f"time/{k}": sum(r.seconds[k] for r in result.rounds)
                                          for k in result.rounds[0].seconds}})
                _write_outputs(out, tasks, store)
                progress.update(1)
            progress.close()
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


def _solve_task(task: Task, engine, pool, settings: LoopSettings, store: Store, planner: DeadlinePlanner,
                num_remaining: int, progress) -> TaskResult:
    store.start_task(task.id)

    def on_round(new: list[Attempt], stats: RoundStats) -> None:
        store.add_attempts(new)
        store.add_phase_timings(task.id, stats.round, stats.seconds)
        planner.observe(stats)

    def on_phase(event: PhaseEvent) -> None:
        progress.set_postfix_str(progress_text(event))

    result = search_and_learn(task, engine, pool, settings, on_round=on_round, on_phase=on_phase,
                              deadline=lambda: planner.task_deadline(num_remaining))
    store.finish_task(task.id, result.scores, result.predictions)
    return result


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
