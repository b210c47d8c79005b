"""`arcsl solve`: search and learn over a dataset, with a results store, deadlines, resume and reports.

For every task (largest first if asked): `loop.search_and_learn`, its attempts and phase timings
written to the results store round by round, then `submission.json` rewritten, so that killing the
run at any moment loses at most the round in flight and always leaves a valid submission. Tasks
already finished in the store are skipped with `--resume`; an unfinished one starts over.

Deadline (`--deadline-s`, e.g. 12 h on Kaggle): once the time left no longer covers one search round
for every remaining task (estimated from the rounds seen so far), the remaining tasks get search
only; a task that would still overrun stops after its current round, and tasks never reached get the
documented fallback in `submission.json`.

What is not covered: multi-GPU sharding (one process, one engine), the algorithm itself (`loop.py`).
"""

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from arcsl.config import DataConfig, SolveConfig
from arcsl.grids import Task, load_dataset
from arcsl.loop import LoopSettings, RoundStats, TaskResult, search_and_learn
from arcsl.scoring import Attempt, metrics_rows
from arcsl.store import Store, export_attempts_jsonl, export_metrics_csv, open_store
from arcsl.submission import build_submission, write_submission

SUBMISSION = "submission.json"
STORE = "results.sqlite"


@dataclass(frozen=True, slots=True)
class RunSummary:
    output_dir: str
    num_tasks: int
    num_finished: int              # tasks finished in this run
    num_skipped: int               # already finished before a --resume
    mean_scores: dict              # the MEAN row of metrics.csv
    seconds: float


class DeadlinePlanner:
    """Decides, task by task, how much of the remaining time a task may use."""

    def __init__(self, deadline_s: float, margin_s: float):
        self.deadline = None if deadline_s == -1 else time.monotonic() + deadline_s - margin_s
        self.search_seconds: list[float] = []  # wall time of round-0 searches seen so far

    def observe(self, rounds: list[RoundStats]) -> None:
        if rounds:
            self.search_seconds.append(sum(rounds[0].seconds.values()))

    def plan(self, num_remaining: int) -> tuple[bool, float | None]:
        """(learning allowed, deadline for this task's rounds) given the tasks still to do, this one included."""
        if self.deadline is None:
            return True, None
        per_search = sum(self.search_seconds) / len(self.search_seconds) if self.search_seconds else 0.0
        reserve = per_search * (num_remaining - 1)  # one search round for each task after this one
        left = self.deadline - time.monotonic()
        return left > per_search * num_remaining * 2, self.deadline - reserve

    @property
    def is_past(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def domain_dsl(prompt_format: str) -> Path:
    """The DSL module that programs of this prompt format import as `common`."""
    from arcsl.sandbox import DSL_PATH

    return {"barc": DSL_PATH}[prompt_format]


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
        with SandboxPool(cfg.sandbox, dsl_path=domain_dsl(cfg.loop.prompt_format)) as pool:
            progress = _progress(len(todo), cfg.run.progress)
            for i, task in enumerate(todo):
                if planner.is_past:
                    print(f"deadline reached: {len(todo) - i} tasks not started get fallback answers", file=sys.stderr)
                    break
                may_learn, task_deadline = planner.plan(len(todo) - i)
                task_settings = settings if may_learn else replace(settings, loop=replace(cfg.loop, max_rounds=0))
                try:
                    result = _solve_task(task, engine, pool, task_settings, store, task_deadline, progress)
                except Exception as e:  # one broken task must not cost the others; its attempts stay stored
                    print(f"task {task.id} failed and gets fallback answers: {type(e).__name__}: {e}", file=sys.stderr)
                    continue
                planner.observe(result.rounds)
                _write_outputs(out, tasks, store)
                if wandb_run is not None:
                    wandb_run.log({"task": i, **asdict(result.scores), "seconds": result.seconds,
                                   **{f"time/{k}": sum(r.seconds[k] for r in result.rounds) for k in result.rounds[0].seconds}})
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
    return RunSummary(str(out), len(tasks), len(todo), len(done), mean, time.monotonic() - started)


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


def _solve_task(task: Task, engine, pool, settings: LoopSettings, store: Store, deadline: float | None,
                progress) -> TaskResult:
    store.start_task(task.id)

    def on_round(new: list[Attempt], stats: RoundStats) -> None:
        store.add_attempts(new)
        store.add_phase_timings(task.id, stats.round, stats.seconds)
        progress.set_postfix_str(f"{task.id} round {stats.round} best train {stats.best_train_score:.2f} "
                                 f"solutions {stats.num_solutions}")

    result = search_and_learn(task, engine, pool, settings, on_round=on_round, deadline=deadline)
    store.finish_task(task.id, result.scores, result.predictions)
    progress.update(1)
    return result


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="task", disable=not enabled, dynamic_ncols=True)
