"""Search and learn on one task: the algorithm, top to bottom.

    search: sample programs from augmented views -> run them in the sandbox -> map outputs back -> score
    repeat up to max_rounds: relabel attempts in hindsight -> fine-tune the LoRA -> search again
    stop early when solved (or out of time); select two attempts per test input; reset the LoRA

A round (`run_round`) can also advance several tasks in lockstep, each learning in its own LoRA adapter
of the engine: each task fine-tunes its adapter in turn, then ONE sampling call decodes every task's
prompts (each through its own adapter) and ONE sandbox batch runs every program. A decode step costs
about the same for many rows as for few, so several tasks' rounds cost little more than one's.
`search_and_learn` is the same round run on one task.

Every round records its phase timings (sampling, execution, relabelling, finetuning, reset, other);
"other" is whatever the round spent outside those phases: the overhead we keep near zero. A phase
shared by several tasks (their one sampling call, their one sandbox batch) and the round's "other"
are split equally among them, so the tasks' timings still add up to the round's wall time. Callers
hear of a task's progress through two callbacks: `on_phase` as each phase starts (a progress
display), `on_round` as each round ends (to store its attempts). The engine is only used through
its protocol (sample / finetune / reset), so a fake engine drives the same code in tests, and the
toy domain reuses it unchanged with its own prompt format and DSL.

Each task draws its views and fine-tuning seeds from its own random generator, so they do not depend
on which tasks share its rounds. Its sampled texts can: the engine takes one seed per call (the first
task's) and may batch rows of different tasks together.

What is not covered: choosing which tasks run together, sharing a run's deadline among tasks, files
(`solve.py`).
"""

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from arcsl.augment import augment, inverse, random_augmentation, restore_train_order
from arcsl.config import FinetuneConfig, LoopConfig, RelabelConfig, SamplingConfig
from arcsl.engine import Completion, Engine, Prompt
from arcsl.grids import Grid, Task
from arcsl.prompting import PROMPT_FORMATS
from arcsl.relabel import relabelled_task, train_fingerprint, training_set
from arcsl.sandbox import ExecutionResult, Job, SandboxPool
from arcsl.scoring import Attempt, TaskScores, fingerprint, score_attempt, score_task
from arcsl.selection import prediction_grids, select_attempts

PHASES = ("sampling", "execution", "relabelling", "finetuning", "reset", "other")


@dataclass(slots=True)
class LoopSettings:
    """The parts of the run config that one task's loop uses."""
    loop: LoopConfig
    relabel: RelabelConfig
    sampling: SamplingConfig
    finetune: FinetuneConfig
    model_id: str = ""


@dataclass(frozen=True, slots=True)
class RoundStats:
    round: int
    num_predictions: int      # programs sampled in this round
    num_examples: int         # relabelled examples fine-tuned on before this round's search (0 in round 0)
    num_solutions: int        # distinct programs (by test output) exact on every train pair, so far
    best_train_score: float   # best train pixel score so far
    seconds: dict[str, float] # by phase (PHASES)


@dataclass(frozen=True, slots=True)
class PhaseEvent:
    """A phase of a round is starting: what a progress display shows."""
    task_id: str
    round: int
    phase: str                # one of PHASES, never "other"
    best_train_score: float   # best train pixel score of the task so far; 0 before its first search


@dataclass(frozen=True, slots=True)
class TaskResult:
    task_id: str
    attempts: list[Attempt]
    predictions: list[list[Grid]]  # two grids per test input
    scores: TaskScores
    rounds: list[RoundStats]
    stop_reason: str               # solved, max-rounds, task-time or deadline
    seconds: float


@dataclass(slots=True)
class TaskRun:
    """One task's search and learn in progress: what carries over from one round to the next."""
    task: Task
    settings: LoopSettings
    rng: np.random.Generator       # the task's own: its views, relabelling order and fine-tuning seeds
    started: float                 # time.monotonic() at its start (cfg.task_time_s counts from it)
    slot: int = 0                  # the engine's LoRA adapter it learns in
    on_round: Callable[[list[Attempt], RoundStats], None] | None = None
    on_phase: Callable[[PhaseEvent], None] | None = None
    attempts: list[Attempt] = field(default_factory=list)
    trained: set[str] = field(default_factory=set)  # train fingerprints fine-tuned on so far
    rounds: list[RoundStats] = field(default_factory=list)
    reason: str | None = None      # why it stopped (see TaskResult.stop_reason); None while it goes on

    @property
    def round(self) -> int:
        """The round in progress, or the next one between rounds."""
        return len(self.rounds)

    def announce(self, phase: str) -> None:
        """Tell on_phase that `phase` of the current round starts (with the best score before it)."""
        if self.on_phase is not None:
            self.on_phase(PhaseEvent(self.task.id, self.round, phase, best_train_score(self.attempts)))


class PhaseTimer:
    """Accumulates wall time per phase; `other` is the rest of the time since the timer started.

    `on_start`, if given, hears each phase's name as the phase starts; its own time counts as "other".
    """

    def __init__(self, on_start: Callable[[str], None] | None = None):
        self.start = time.perf_counter()
        self.seconds = {p: 0.0 for p in PHASES}
        self.on_start = on_start

    def __call__(self, phase: str):
        return shared_phase([self], phase)

    def finish(self) -> dict[str, float]:
        return finish_timers([self])[0]


@contextmanager
def shared_phase(timers: list[PhaseTimer], phase: str) -> Iterator[None]:
    """A phase that several tasks' rounds spend together (one sampling call, one sandbox batch): every
    timer hears it start, and each gets an equal share (1/len(timers)) of its wall time."""
    assert phase in PHASES and phase != "other", f"unknown phase {phase!r}; phases: {PHASES[:-1]}"
    for timer in timers:
        if timer.on_start is not None:
            timer.on_start(phase)
    t = time.perf_counter()
    try:
        yield
    finally:
        share = (time.perf_counter() - t) / len(timers)
        for timer in timers:
            timer.seconds[phase] += share


def finish_timers(timers: list[PhaseTimer]) -> list[dict[str, float]]:
    """Each timer's seconds by phase; the wall time since the first started that no phase measured is split
    equally among them as "other", so that all of them together add up to that wall time."""
    wall = time.perf_counter() - min(t.start for t in timers)
    measured = sum(v for t in timers for k, v in t.seconds.items() if k != "other")
    other = max(0.0, wall - measured) / len(timers)
    return [t.seconds | {"other": other} for t in timers]


# --- one search ---------------------------------------------------------------------------------

def prompt_hash(prompt) -> str:
    text = json.dumps(prompt if isinstance(prompt, (str, list)) else [prompt.messages, prompt.assistant_prefix])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_attempt(task: Task, view: Task, completion: Completion, program: str | None, result: ExecutionResult,
                 round_: int, prompt_id: str, model_id: str) -> Attempt:
    """An attempt in the original task's frame: outputs mapped back through the view's augmentation."""
    train_outputs = test_outputs = None
    if result.outputs is not None:
        back = [inverse(g, view.augmentation) for g in result.outputs]
        train_outputs = restore_train_order(back[:len(view.train)], view.augmentation)
        test_outputs = back[len(view.train):]
    return Attempt(task.id, program, None if result.error is None else str(result.error), train_outputs,
                   test_outputs, score_attempt(task, train_outputs, test_outputs), round_, view.augmentation,
                   prompt_id, completion.text, model_id, {"execution": result.elapsed_s})


@dataclass(frozen=True, slots=True)
class SearchPlan:
    """What one task asks of a search: its views, their prompts, and its sampling seed."""
    views: list[Task]
    prompts: list[Prompt]          # one per view
    seed: int


def plan_search(run: TaskRun) -> SearchPlan:
    """Fresh views of the run's task for its current round, drawn from its own generator."""
    cfg = run.settings.loop
    num_predictions = cfg.initial_predictions if run.round == 0 else cfg.predictions_per_round
    views = [augment(run.task, random_augmentation(run.task, run.rng, cfg.augment_dihedral, cfg.augment_colors,
                                                   cfg.augment_train_order))
             for _ in range(num_predictions // cfg.samples_per_view)]
    prompts = [PROMPT_FORMATS[cfg.prompt_format].build(v) for v in views]
    return SearchPlan(views, prompts, int(run.rng.integers(2**31)))


def search(runs: list[TaskRun], engine: Engine, pool: SandboxPool, timers: list[PhaseTimer]) -> list[list[Attempt]]:
    """Sample programs over fresh views of every run's task, run and score them: one engine call, each
    prompt through its task's adapter, seeded by the first run; one sandbox batch. Returns each run's attempts.

    The runs share their settings but for max_rounds (solve gives late tasks search only), so the first
    run's sampling and prompt settings are everyone's.
    """
    cfg = runs[0].settings.loop
    plans = [plan_search(run) for run in runs]
    prompts = [p for plan in plans for p in plan.prompts]
    adapters = [run.slot for run, plan in zip(runs, plans) for _ in plan.prompts]
    with shared_phase(timers, "sampling"):
        sampling = replace(runs[0].settings.sampling, num_samples=cfg.samples_per_view)
        completions = iter(engine.sample(prompts, sampling, seed=plans[0].seed, adapters=adapters).completions)
    with shared_phase(timers, "execution"):
        fmt = PROMPT_FORMATS[cfg.prompt_format]
        per_run = [[next(completions) for _ in plan.prompts] for plan in plans]  # split back by task
        programs = [[[fmt.extract(c.text) for c in cs] for cs in run_completions] for run_completions in per_run]
        jobs = [Job(p, [q.input for q in v.train] + [q.input for q in v.test])
                for plan, run_programs in zip(plans, programs) for v, ps in zip(plan.views, run_programs) for p in ps]
        results = iter(pool.run(jobs))
        return [run_attempts(run, plan, cs, ps, results) for run, plan, cs, ps in zip(runs, plans, per_run, programs)]


def run_attempts(run: TaskRun, plan: SearchPlan, completions: list[list[Completion]], programs: list[list[str | None]],
                 results: Iterator[ExecutionResult]) -> list[Attempt]:
    """One run's attempts, per view and sample; its programs' results are the next ones of `results`."""
    return [make_attempt(run.task, v, c, p, next(results), run.round, prompt_hash(prompt), run.settings.model_id)
            for v, prompt, cs, ps in zip(plan.views, plan.prompts, completions, programs) for c, p in zip(cs, ps)]


# --- stopping -----------------------------------------------------------------------------------

def num_solutions(attempts: list[Attempt]) -> int:
    """Distinct programs, by test output, that are exact on every train pair."""
    return len({fingerprint(a.test_outputs) for a in attempts
                if a.scores.train.is_correct and a.test_outputs is not None})


def best_train_score(attempts: list[Attempt]) -> float:
    """The best train pixel score among `attempts`; 0 for none."""
    return max((a.scores.train.pixel_score for a in attempts), default=0.0)


def stop_reason(attempts: list[Attempt], cfg: LoopConfig, round_: int, started: float,
                deadline: float | None, round_s: float) -> str | None:
    """Why the task should stop after `round_`, or None to go on.

    Args:
        started: time.monotonic() when the task started (cfg.task_time_s counts from it).
        deadline: time.monotonic() by which the task's rounds must have ended; None = no limit.
        round_s: seconds the round just finished took, the estimate of the next one: a round that
            would end after the deadline does not start (the deadline protects other tasks' time,
            unlike the task's own budget, which only stops new rounds once spent).
    """
    needed = {"two-solutions": 2, "one-solution": 1, "never": None}[cfg.stop]
    if needed is not None and num_solutions(attempts) >= needed:
        return "solved"
    if round_ >= cfg.max_rounds:
        return "max-rounds"
    now = time.monotonic()
    if cfg.task_time_s != -1 and now - started >= cfg.task_time_s:
        return "task-time"
    if deadline is not None and now + round_s > deadline:
        return "deadline"
    return None


def conclude(task: Task, attempts: list[Attempt]) -> tuple[list[list[Grid]], TaskScores]:
    """A task's answers (two grids per test input, chosen from `attempts`) and its scores."""
    predictions = prediction_grids(select_attempts(task, attempts))
    return predictions, score_task(task, attempts, predictions)


# --- the algorithm ------------------------------------------------------------------------------

def start_run(task: Task, settings: LoopSettings, slot: int = 0,
              on_round: Callable[[list[Attempt], RoundStats], None] | None = None,
              on_phase: Callable[[PhaseEvent], None] | None = None) -> TaskRun:
    """A task before its first round, learning in the engine's adapter `slot`; its generator comes from
    the seed and the task id alone."""
    rng = np.random.default_rng([settings.loop.seed, int(hashlib.sha256(task.id.encode()).hexdigest()[:8], 16)])
    return TaskRun(task, settings, rng, time.monotonic(), slot, on_round, on_phase)


def learn(run: TaskRun, engine: Engine, timer: PhaseTimer) -> int:
    """Before a round's search: in round 0, a fresh LoRA in the run's slot; after it, fine-tune that LoRA
    on the last round's attempts, relabelled. Returns the number of examples fine-tuned on."""
    if run.round == 0:
        with timer("reset"):
            engine.reset(adapter=run.slot)  # a fresh LoRA and optimizer for every task
        return 0
    with timer("relabelling"):
        chosen = training_set(run.task, run.attempts, run.round - 1, run.trained, run.settings.relabel, run.rng)
        run.trained |= {train_fingerprint(a) for a in chosen}
        fmt = PROMPT_FORMATS[run.settings.loop.prompt_format]
        prune = fmt.prune if run.settings.relabel.prune_programs else None
        examples = []
        for a in chosen:
            relabelled = relabelled_task(run.task, a)
            examples.append((fmt.build(relabelled), prune(a.response, relabelled) if prune else a.response))
    if examples:
        with timer("finetuning"):
            engine.finetune(examples, run.settings.finetune, seed=int(run.rng.integers(2**31)), adapter=run.slot)
    return len(examples)


def run_round(runs: list[TaskRun], engine: Engine, pool: SandboxPool,
              deadline: Callable[[], float | None] | None = None) -> None:
    """One round of every task in `runs`, in lockstep; each one's `reason` says afterwards if it stops.

    Each task learns (or starts) in its own adapter, in turn; then one search for all of them; each
    records its round (on_round). Shared phases and the round's "other" are split equally among the
    tasks (`shared_phase`, `finish_timers`), so their RoundStats add up to the round's wall time.

    Args:
        deadline: asked once after every task's on_round (so its answer may use this round's timings):
            the time.monotonic() by which the tasks' rounds must have ended, or None. The next round is
            costed at this round's wall time, all tasks together.
    """
    timers = [PhaseTimer(on_start=run.announce) for run in runs]
    num_examples = [learn(run, engine, timer) for run, timer in zip(runs, timers)]
    new = search(runs, engine, pool, timers)
    seconds = finish_timers(timers)
    for run, examples, attempts, round_seconds in zip(runs, num_examples, new, seconds):
        run.attempts += attempts
        stats = RoundStats(run.round, len(attempts), examples, num_solutions(run.attempts),
                           best_train_score(run.attempts), round_seconds)
        run.rounds.append(stats)
        if run.on_round is not None:
            run.on_round(attempts, stats)
    limit = deadline() if deadline is not None else None
    round_s = sum(sum(s.values()) for s in seconds)
    for run in runs:
        run.reason = stop_reason(run.attempts, run.settings.loop, run.round - 1, run.started, limit, round_s)


def finish_run(run: TaskRun) -> TaskResult:
    """A stopped task's result: its answers, scores and rounds."""
    assert run.reason is not None, f"task {run.task.id} has not stopped (round {run.round})"
    predictions, scores = conclude(run.task, run.attempts)
    return TaskResult(run.task.id, run.attempts, predictions, scores, run.rounds, run.reason,
                      time.monotonic() - run.started)


def search_and_learn(task: Task, engine: Engine, pool: SandboxPool, settings: LoopSettings,
                     on_round: Callable[[list[Attempt], RoundStats], None] | None = None,
                     on_phase: Callable[[PhaseEvent], None] | None = None,
                     deadline: Callable[[], float | None] | None = None) -> TaskResult:
    """Solve one task by rounds of search and hindsight learning in the engine's adapter 0, which is reset
    before it starts.

    Args:
        on_round: called after every round with that round's new attempts and stats (e.g. to store them).
        on_phase: called as each phase of a round starts (e.g. to show progress).
        deadline: asked after every round (after on_round, so its answer may use that round's timings):
            the time.monotonic() by which the task's rounds must have ended, or None.
    """
    run = start_run(task, settings, 0, on_round, on_phase)
    while run.reason is None:
        run_round([run], engine, pool, deadline)
    return finish_run(run)
