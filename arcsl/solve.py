"""`arcsl solve`: search and learn over a dataset, with a results store, deadlines, resume and reports.

The run driver (`loop.run_tasks`) decides which task runs when and which stops; this module consumes
what it reports and owns every file: each round's attempts and phase timings go to the results store
as the round ends, and `submission.json` is rewritten after every task, so that killing the run at any
moment loses at most the round in flight and always leaves a valid submission. Tasks already finished
in the store are skipped with `--resume`; an unfinished one starts over.

At start it prints a few lines: the tasks, the model and its device, the output folder and where the
resolved config was written. Progress is one line (it fits 80 columns): tasks done of all, time left,
tasks in flight and solved, and the round and phase in progress; a line per finished task is printed
above it.

Deadline (`--deadline-s`, e.g. 12 h on Kaggle, less `--deadline-margin-s` kept for the final exports):
the rule is `arcsl.deadline`'s; the tasks never reached get the fallback answers of `selection.py` in
`submission.json`.

Tasks in flight (`--tasks-in-flight K`, K > 1): K tasks are searched together in lockstep rounds, each
learning in its own LoRA adapter of the engine (loaded with K adapters), so that each round's sampling
for all of them is one engine call; a task that stops hands its adapter to the next task at once. Each
task's attempts, rounds, timings and answers are stored as with K = 1.

A task that fails (an exception from the engine or the sandbox) is finished with the answers its
stored attempts give, and the run goes on; one that failed before storing any attempt stays
unfinished: it has the fallback answers, and `--resume` tries it again. With K > 1 an exception in
a round fails every task of that round (they share its sampling call and its sandbox batch).

What is not covered: multi-GPU sharding (one process, one engine), the algorithm itself (`loop.py`).
"""

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from arcsl.config import DataConfig, ModelConfig, SolveConfig
from arcsl.deadline import DeadlinePlanner
from arcsl.grids import Task, load_dataset
from arcsl.loop import (LoopSettings, PhaseEvent, RoundDone, TaskDone, TaskFailed, TaskResult, TasksNotStarted,
                        TaskStarted, conclude, run_tasks)
from arcsl.prompting import PromptFormat
from arcsl.scoring import metrics_rows
from arcsl.store import Store, export_attempts_jsonl, export_metrics_csv, open_store
from arcsl.submission import build_submission, write_submission

SUBMISSION = "submission.json"
STORE = "results.sqlite"
BAR_FORMAT = "{n_fmt}/{total_fmt} tasks |{bar}| {remaining} left{postfix}"  # tqdm puts ", " before the postfix


@dataclass(frozen=True, slots=True)
class RunSummary:
    output_dir: str
    num_tasks: int
    num_finished: int              # tasks finished in this run (a failed task is not counted)
    num_skipped: int               # already finished before a --resume
    mean_scores: dict              # the MEAN row of metrics.csv
    seconds: float


class Progress:
    """The run's one progress line: tasks done, time left, tasks in flight and solved (a program exact on
    every train pair), the round and phase in progress."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, disable=not enabled, dynamic_ncols=True, bar_format=BAR_FORMAT)
        self.in_flight: set[str] = set()
        self.num_solved = 0
        self.phase = "starting"

    def status(self) -> str:
        return status_text(len(self.in_flight), self.num_solved, self.phase)

    def on_phase(self, event: PhaseEvent) -> None:
        self.phase = f"round {event.round} {event.phase}"
        self.bar.set_postfix_str(self.status())

    def started(self, task_id: str) -> None:
        self.in_flight.add(task_id)

    def finished(self, task_id: str, line: str, is_solved: bool = False) -> None:
        self.in_flight.discard(task_id)
        self.num_solved += is_solved
        if not self.bar.disable:
            self.bar.write(line, file=sys.stderr)
        self.bar.set_postfix_str(self.status(), refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def status_text(num_in_flight: int, num_solved: int, phase: str) -> str:
    """What the progress line shows beside the bar."""
    return f"{num_in_flight} in flight, {num_solved} solved, {phase}"


def result_line(result: TaskResult) -> str:
    """One line per finished task, printed above the progress line."""
    test = result.scores.solved_at_2
    return (f"{result.task_id}: {result.stop_reason} after {len(result.rounds)} rounds, best train "
            f"{result.rounds[-1].best_train_score:.2f}" + ("" if test is None else f", test {test:.2f}"))


def _write_outputs(out: Path, tasks: list[Task], store: Store) -> None:
    write_submission(out / SUBMISSION, build_submission(tasks, store.predictions()))


def engine_config(cfg: SolveConfig) -> ModelConfig:
    """The model settings to load for `cfg`: at least one LoRA adapter per task in flight."""
    return replace(cfg.model, num_adapters=max(cfg.model.num_adapters, cfg.run.tasks_in_flight))


def solve(cfg: SolveConfig, prompt_format: PromptFormat, engine=None) -> RunSummary:
    """Run search and learn on every selected task; see the module docstring.

    Args:
        prompt_format: the format `cfg.loop.prompt_format` names (resolved by the caller, `arcsl.catalog`).
        engine: an `Engine` to use instead of loading `cfg.model` (tests, other engine implementations);
            with tasks_in_flight > 1 it must hold that many adapters.
    """
    from arcsl.report import print_summary, write_report
    from arcsl.sandbox import SandboxPool

    if prompt_format.name != cfg.loop.prompt_format:
        raise ValueError(f"the prompt format given ({prompt_format.name!r}) is not the one the config names "
                         f"({cfg.loop.prompt_format!r})")
    started = time.monotonic()
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = _load_tasks(cfg.data)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    _print_start(cfg, len(tasks), out, engine)
    wandb_run = _start_wandb(cfg, out) if cfg.run.wandb else None
    with open_store(out / STORE, resume=cfg.run.resume, config=asdict(cfg)) as store:
        done = store.finished_task_ids() & {t.id for t in tasks}
        _write_outputs(out, tasks, store)  # a valid submission exists from the first second
        engine = engine or _load_engine(cfg)
        settings = LoopSettings(cfg.loop, cfg.relabel, cfg.sampling, cfg.finetune, prompt_format, cfg.model.model)
        todo = [t for t in tasks if t.id not in done]
        planner = DeadlinePlanner(cfg.run.deadline_s, cfg.run.deadline_margin_s, cfg.run.tasks_in_flight)
        progress = Progress(len(todo), cfg.run.progress)
        with SandboxPool(cfg.sandbox, dsl_path=prompt_format.dsl_path) as pool:
            events = run_tasks(todo, engine, pool, settings, planner, cfg.run.tasks_in_flight, progress.on_phase)
            num_finished = _record(events, out, tasks, store, progress, wandb_run)
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


def _record(events, out: Path, tasks: list[Task], store: Store, progress: Progress, wandb_run) -> int:
    """Writes what the driver reports: attempts and timings as each round ends, answers and the submission
    as each task ends. Returns the number of tasks finished."""
    num_finished = 0
    index = {t.id: i for i, t in enumerate(tasks)}
    for event in events:
        if isinstance(event, TaskStarted):
            store.start_task(event.task.id)
            progress.started(event.task.id)
        elif isinstance(event, RoundDone):
            store.add_attempts(event.attempts)
            store.add_phase_timings(event.task.id, event.stats.round, event.stats.seconds)
        elif isinstance(event, TaskDone):
            result = event.result
            try:
                store.finish_task(result.task_id, result.scores, result.predictions)
            except Exception as e:  # one broken task must not cost the others; its attempts stay stored
                _fail_task(event.task, store, e, progress)
            else:
                num_finished += 1
                _log_result(wandb_run, index[result.task_id], result)
                progress.finished(result.task_id, result_line(result), result.rounds[-1].num_solutions > 0)
            _write_outputs(out, tasks, store)
        elif isinstance(event, TaskFailed):
            _fail_task(event.task, store, event.error, progress)
            _write_outputs(out, tasks, store)
        elif isinstance(event, TasksNotStarted):
            print(f"deadline: {len(event.tasks)} tasks not started get fallback answers", file=sys.stderr)
    return num_finished


def _print_start(cfg: SolveConfig, num_tasks: int, out: Path, engine) -> None:
    in_flight = f", {cfg.run.tasks_in_flight} in flight" if cfg.run.tasks_in_flight > 1 else ""
    where = f"on {_device(cfg)}" if engine is None else "(engine passed in)"
    loop = cfg.loop
    rounds = (f"then up to {loop.max_rounds} rounds of fine-tuning and {loop.programs_per_round} more"
              if loop.max_rounds else "search only")
    lines = [f"arcsl solve: {num_tasks} tasks from {cfg.data.dataset}{in_flight}",
             f"  model: {cfg.model.model} {where}, prompt format {loop.prompt_format}",
             f"  per task: {loop.initial_programs} programs, {rounds}",
             f"  output: {out} (settings in {out / 'config.json'})"]
    print("\n".join(lines), file=sys.stderr)


def _device(cfg: SolveConfig) -> str:
    from arcsl.engine.hf import resolve_device

    return str(resolve_device(cfg.model.device))


def _load_engine(cfg: SolveConfig):
    from arcsl.engine.hf import load_engine

    return load_engine(engine_config(cfg))


def _fail_task(task: Task, store: Store, error: Exception, progress: Progress) -> None:
    print(f"task {task.id} failed: {type(error).__name__}: {error}; it gets the answers of its stored "
          "attempts, if any", file=sys.stderr)
    _finish_from_store(task, store)
    progress.finished(task.id, f"{task.id}: failed")


def _log_result(wandb_run, index: int, result: TaskResult) -> None:
    if wandb_run is not None:
        wandb_run.log({"task": index, **asdict(result.scores), "seconds": result.seconds,
                       **{f"time/{k}": sum(r.seconds[k] for r in result.rounds) for k in result.rounds[0].seconds}})


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


def _finish_from_store(task: Task, store: Store) -> None:
    """Finish a failed task with the answers its stored attempts give; one without any stays unfinished
    (it has the fallback in the submission, and a --resume tries it again)."""
    attempts = store.attempts(task.id)
    if not attempts or store.task_status(task.id) != "running":
        return
    predictions, scores = conclude(task, attempts)
    store.finish_task(task.id, scores, predictions)
