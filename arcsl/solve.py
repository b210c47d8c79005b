"""`arcsl solve`: search and learn over a dataset, with workers, a results store, deadlines, resume and reports.

This module is the parent of a run. It plans the workers (`workers.py`: one in this process, or one
process per GPU, or Ray actors), hands them tasks through the scheduler (`scheduler.py`: one queue in the
run's order, the deadline), and records what they report, owning every file: each round's attempts and
phase timings go to the results store as the round ends, and `submission.json` is rewritten after every
task, so that killing the run at any moment loses at most the rounds in flight and always leaves a valid
submission. Tasks already finished in the store are skipped with `--resume`; an unfinished one starts
over. Ctrl-C and SIGTERM stop every worker and leave the store consistent.

At start it prints a few lines: the tasks, the model and where it runs, the budget per task, the output
folder and where the resolved config was written (`--tasks-in-flight auto` and `--sort auto` resolved).
Progress is one line (it fits 80 columns): tasks done of all, time left, tasks in flight and solved, and
the round and phase in progress; a line per finished task is printed above it.

Deadline (`--deadline-s`, e.g. 12 h on Kaggle, less `--deadline-margin-s` kept for the final exports):
the rule is `scheduler.DeadlinePlanner`'s; the tasks never reached get the fallback answers of
`selection.py` in `submission.json`.

A task that fails (an exception from the engine or the sandbox, or two workers dying with it) is finished
with the answers its stored attempts give, and the run goes on; one that failed before storing any
attempt stays unfinished: it has the fallback answers, and `--resume` tries it again. With tasks in
flight, an exception in a round fails every task of that round (they share its sampling call and its
sandbox batch).

An error writing the results store ends the run (the store is the run's record; what is already in it
stays, and `--resume` continues from it).

What is not covered: the algorithm itself (`loop.py`), how workers run (`workers.py`).
"""

import functools
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from arcsl.config import DataConfig, SolveConfig
from arcsl.engine.planner import CPU_ROW_CAP, GPU_PREFERRED_ROWS
from arcsl.grids import Task, load_dataset
from arcsl.loop import (LoopSettings, PhaseEvent, RoundDone, TaskDone, TaskFailed, TaskResult, TaskStarted,
                        check_adapters, conclude, run_tasks)
from arcsl.prompting import PromptFormat
from arcsl.refine import check_refinement
from arcsl.scheduler import DeadlinePlanner, Scheduler
from arcsl.scoring import metrics_rows
from arcsl.store import Store, export_attempts_jsonl, export_metrics_csv, open_store
from arcsl.submission import build_submission, write_submission
from arcsl.workers import (Processes, Workers, WorkerLost, WorkerSpec, auto_tasks_in_flight, engine_config,
                           gpu_adapter_limit, plan_workers, smallest_gpu_bytes, visible_gpus)

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


def solve(cfg: SolveConfig, prompt_format: PromptFormat, engine=None, started: float | None = None) -> RunSummary:
    """Run search and learn on every selected task; see the module docstring.

    Args:
        prompt_format: the format `cfg.loop.prompt_format` names (resolved by the caller, `arcsl.catalog`).
        engine: an `Engine` to use instead of loading `cfg.model` (tests, other engine implementations);
            with tasks_in_flight > 1 it must hold that many adapters.
        started: time.monotonic() at which the deadline's clock started (the CLI gives the process's start,
            so imports and loading count); None: now.
    """
    if prompt_format.name != cfg.loop.prompt_format:
        raise ValueError(f"the prompt format given ({prompt_format.name!r}) is not the one the config names "
                         f"({cfg.loop.prompt_format!r})")
    check_refinement(cfg.loop, prompt_format)  # before anything is loaded or written
    started = time.monotonic() if started is None else started
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        return _solve(cfg, prompt_format, engine, started)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Stopped(KeyboardInterrupt):
    """The run was told to stop by a signal (SIGTERM); it unwinds as Ctrl-C does."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def _interrupt(signum, frame) -> None:
    """SIGTERM stops a run as Ctrl-C does: workers stopped, the store closed, the submission valid."""
    raise Stopped(signum)


def _solve(cfg: SolveConfig, prompt_format: PromptFormat, engine, started: float) -> RunSummary:
    from arcsl.report import print_summary, write_report
    from arcsl.sandbox import SandboxPool

    specs = _plan_workers(cfg, engine)
    if engine is not None:
        check_adapters(engine, cfg.run.tasks_in_flight, cfg.loop.task_group_size)  # before anything is written
    if cfg.data.sort == "auto":  # one queue for several workers: the largest tasks first, so none is left for last
        cfg = replace(cfg, data=replace(cfg.data, sort="large-first" if len(specs) > 1 else "none"))
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = _load_tasks(cfg.data)
    if cfg.run.tasks_in_flight == 0:  # auto: the figure chosen is recorded in config.json and printed below
        cfg = replace(cfg, run=replace(cfg.run, tasks_in_flight=_auto_tasks_in_flight(cfg, len(tasks), specs, engine)))
    _print_start(cfg, len(tasks), out, engine, specs)
    with open_store(out / STORE, resume=cfg.run.resume, config=asdict(cfg)) as store:  # refuses a mixed resume
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        wandb_run = start_wandb(asdict(cfg), out, "solve") if cfg.run.wandb else None
        done = store.finished_task_ids() & {t.id for t in tasks}
        _write_outputs(out, tasks, store)  # a valid submission exists from the first second
        todo = [t for t in tasks if t.id not in done]
        planner = DeadlinePlanner(cfg.run.deadline_s, cfg.run.deadline_margin_s, cfg.run.tasks_in_flight,
                                  len(specs), started)
        scheduler = Scheduler(todo, planner, cfg.loop.max_rounds)
        progress = Progress(len(todo), cfg.run.progress)
        if len(specs) == 1 and not cfg.run.ray_address:  # one worker, in this process: the driver's events as they come
            engine = engine or _load_engine(cfg)
            settings = LoopSettings(cfg.loop, cfg.relabel, cfg.sampling, cfg.finetune, prompt_format,
                                    cfg.model.model)
            with SandboxPool(cfg.sandbox, dsl_path=prompt_format.dsl_path) as pool:
                events = run_tasks(scheduler, engine, pool, settings, cfg.run.tasks_in_flight, progress.on_phase)
                num_finished = _record(events, out, tasks, store, progress, wandb_run)
        else:
            workers = Workers(specs, cfg, prompt_format, scheduler, progress.on_phase, _launcher(cfg))
            num_finished = _record(workers.events(), out, tasks, store, progress, wandb_run)
        progress.close()
        if scheduler.not_started:
            print(f"deadline: {len(scheduler.not_started)} tasks not started get fallback answers", file=sys.stderr)
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
    """Writes what the workers report: attempts and timings as each round ends, answers and the submission
    as each task ends. Returns the number of tasks finished."""
    num_finished = 0
    index = {t.id: i for i, t in enumerate(tasks)}
    for event in events:
        if isinstance(event, TaskStarted):
            store.start_task(event.task.id)  # a task put back after its worker died starts over
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
        elif isinstance(event, WorkerLost):
            print(f"worker {event.index} died (exit code {event.exit_code}) with tasks "
                  f"{', '.join(event.put_back + event.failed) or 'none'} in flight: "
                  f"{len(event.put_back)} go back to the queue, {len(event.failed)} failed (a second death); "
                  + ("a new worker takes its place" if event.is_replaced else "no work left for a new one"),
                  file=sys.stderr)
    return num_finished


def _plan_workers(cfg: SolveConfig, engine) -> list[WorkerSpec]:
    """The workers of this run: one in this process with an engine passed in, else one per GPU (or --workers),
    of this machine or of the Ray cluster."""
    if engine is not None:
        if cfg.run.workers > 1 or cfg.run.ray_address:
            raise ValueError("--workers / --ray-address: an engine passed in serves one worker, in this process")
        return plan_workers(1, [], 1, cfg.sandbox.sandbox_workers)
    if cfg.run.ray_address:
        gpus, cpus = _ray_launcher(cfg.run.ray_address).cluster()
        return plan_workers(cfg.run.workers, [str(i) for i in range(gpus)], cpus, cfg.sandbox.sandbox_workers,
                            assigned_gpus=True)
    return plan_workers(cfg.run.workers, visible_gpus(cfg.model.device), len(os.sched_getaffinity(0)),
                        cfg.sandbox.sandbox_workers)


def _launcher(cfg: SolveConfig):
    return _ray_launcher(cfg.run.ray_address) if cfg.run.ray_address else Processes()


@functools.cache
def _ray_launcher(address: str):
    """Connects to the cluster once per run (the workers are planned from its size, then started on it)."""
    try:
        from arcsl.ray_actors import RayActors
    except ImportError:
        raise ValueError("--ray-address needs Ray: pip install 'arcsl[ray]'") from None
    return RayActors(address)


def _auto_tasks_in_flight(cfg: SolveConfig, num_tasks: int, specs: list[WorkerSpec], engine) -> int:
    if engine is not None:  # an engine passed in (tests, benchmarks): sized as on a CPU, within its adapters
        return min(engine.num_adapters * cfg.loop.task_group_size,
                   auto_tasks_in_flight(cfg.loop.programs_per_round, CPU_ROW_CAP, num_tasks, 1))
    if not specs[0].device.startswith("cuda"):
        return auto_tasks_in_flight(cfg.loop.programs_per_round, CPU_ROW_CAP, num_tasks, len(specs))
    limit, why = gpu_adapter_limit(cfg.model, None if cfg.run.ray_address else smallest_gpu_bytes())
    count = auto_tasks_in_flight(cfg.loop.programs_per_round, GPU_PREFERRED_ROWS, num_tasks, len(specs),
                                 limit and limit * cfg.loop.task_group_size)  # an adapter holds a group
    print(f"arcsl solve: --tasks-in-flight auto = {count} per worker ({GPU_PREFERRED_ROWS} rows a decode step "
          f"at {cfg.loop.programs_per_round} programs a round; {why})", file=sys.stderr)
    return count


def _print_start(cfg: SolveConfig, num_tasks: int, out: Path, engine, specs: list[WorkerSpec]) -> None:
    in_flight = f", {cfg.run.tasks_in_flight} in flight" if cfg.run.tasks_in_flight > 1 else ""
    if engine is not None:
        where = "(engine passed in)"
    elif len(specs) > 1:
        where = (f"in {len(specs)} workers" + (", one GPU each" if specs[0].device.startswith("cuda") else " on the CPU")
                 + f", {specs[0].sandbox_workers} sandbox processes each"
                 + (f", Ray cluster {cfg.run.ray_address}" if cfg.run.ray_address else ""))
    else:
        where = f"on {_device(cfg)}"
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


def start_wandb(config: dict, out: Path, job_type: str):
    """A Weights & Biases run in project arcsl (`arcsl solve` and `arcsl finetune --wandb`), or one clear error."""
    try:
        import wandb
    except ImportError:
        raise ValueError("--wandb needs the wandb package: pip install 'arcsl[wandb]'") from None
    return wandb.init(project="arcsl", job_type=job_type, config=config, dir=str(out))


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
