"""Search and learn on one task: the algorithm, top to bottom.

    search: sample programs from augmented views -> run them in the sandbox -> map outputs back -> score
    repeat up to max_rounds: relabel attempts in hindsight -> fine-tune the LoRA -> search again
    stop early when solved (or out of time); select two attempts per test input; reset the LoRA

Every round records its phase timings (sampling, execution, relabelling, finetuning, reset, other);
"other" is whatever the round spent outside those phases: the overhead we keep near zero. Callers
hear of the task's progress through two callbacks: `on_phase` as each phase starts (a progress
display), `on_round` as each round ends (to store its attempts). The engine is only used through
its protocol (sample / finetune / reset), so a fake engine drives the same code in tests, and the
toy domain reuses it unchanged with its own prompt format and DSL.

What is not covered: running many tasks, sharing a run's deadline among them, files (`solve.py`).
"""

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from arcsl.augment import augment, inverse, random_augmentation, restore_train_order
from arcsl.config import FinetuneConfig, LoopConfig, RelabelConfig, SamplingConfig
from arcsl.engine import Completion, Engine
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


class PhaseTimer:
    """Accumulates wall time per phase; `other` is the rest of the time since the timer started.

    `on_start`, if given, hears each phase's name as the phase starts; its own time counts as "other".
    """

    def __init__(self, on_start: Callable[[str], None] | None = None):
        self.start = time.perf_counter()
        self.seconds = {p: 0.0 for p in PHASES}
        self.on_start = on_start

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        assert phase in self.seconds and phase != "other", f"unknown phase {phase!r}; phases: {PHASES[:-1]}"
        if self.on_start is not None:
            self.on_start(phase)
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t

    def finish(self) -> dict[str, float]:
        measured = sum(v for k, v in self.seconds.items() if k != "other")
        return self.seconds | {"other": max(0.0, time.perf_counter() - self.start - measured)}


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


def search(task: Task, engine: Engine, pool: SandboxPool, num_predictions: int, round_: int,
           settings: LoopSettings, rng: np.random.Generator, timer: PhaseTimer) -> list[Attempt]:
    """Sample `num_predictions` programs over fresh views of `task`, run and score them."""
    cfg = settings.loop
    views = [augment(task, random_augmentation(task, rng, cfg.augment_dihedral, cfg.augment_colors,
                                               cfg.augment_train_order))
             for _ in range(num_predictions // cfg.samples_per_view)]
    fmt = PROMPT_FORMATS[cfg.prompt_format]
    prompts = [fmt.build(v) for v in views]
    with timer("sampling"):
        sampling = replace(settings.sampling, num_samples=cfg.samples_per_view)
        completions = engine.sample(prompts, sampling, seed=int(rng.integers(2**31))).completions
    with timer("execution"):
        programs = [[fmt.extract(c.text) for c in cs] for cs in completions]
        jobs = [Job(p, [q.input for q in v.train] + [q.input for q in v.test])
                for v, ps in zip(views, programs) for p in ps]
        results = iter(pool.run(jobs))
        return [make_attempt(task, v, c, p, next(results), round_, prompt_hash(prompt), settings.model_id)
                for v, prompt, cs, ps in zip(views, prompts, completions, programs) for c, p in zip(cs, ps)]


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

def search_and_learn(task: Task, engine: Engine, pool: SandboxPool, settings: LoopSettings,
                     on_round: Callable[[list[Attempt], RoundStats], None] | None = None,
                     on_phase: Callable[[PhaseEvent], None] | None = None,
                     deadline: Callable[[], float | None] | None = None) -> TaskResult:
    """Solve one task by rounds of search and hindsight learning; the engine is reset before it starts.

    Args:
        on_round: called after every round with that round's new attempts and stats (e.g. to store them).
        on_phase: called as each phase of a round starts (e.g. to show progress).
        deadline: asked after every round (after on_round, so its answer may use that round's
            timings): the time.monotonic() by which the task's rounds must have ended, or None.
    """
    cfg = settings.loop
    rng = np.random.default_rng([cfg.seed, int(hashlib.sha256(task.id.encode()).hexdigest()[:8], 16)])
    started = time.monotonic()
    attempts: list[Attempt] = []
    trained: set[str] = set()
    rounds: list[RoundStats] = []

    def announce(phase: str) -> None:  # reads round_ and attempts as they are when the phase starts
        if on_phase is not None:
            on_phase(PhaseEvent(task.id, round_, phase, best_train_score(attempts)))

    for round_ in range(cfg.max_rounds + 1):
        timer = PhaseTimer(on_start=announce)
        examples = []
        if round_ == 0:
            with timer("reset"):
                engine.reset()  # a fresh LoRA and optimizer for every task
        else:
            with timer("relabelling"):
                chosen = training_set(task, attempts, round_ - 1, trained, settings.relabel, rng)
                trained |= {train_fingerprint(a) for a in chosen}
                to_prompt = PROMPT_FORMATS[cfg.prompt_format].build
                examples = [(to_prompt(relabelled_task(task, a)), a.response) for a in chosen]
            if examples:
                with timer("finetuning"):
                    engine.finetune(examples, settings.finetune, seed=int(rng.integers(2**31)))
        num_predictions = cfg.initial_predictions if round_ == 0 else cfg.predictions_per_round
        new = search(task, engine, pool, num_predictions, round_, settings, rng, timer)
        attempts += new
        stats = RoundStats(round_, len(new), len(examples), num_solutions(attempts), best_train_score(attempts),
                           timer.finish())
        rounds.append(stats)
        if on_round is not None:
            on_round(new, stats)
        reason = stop_reason(attempts, cfg, round_, started, deadline() if deadline is not None else None,
                             sum(stats.seconds.values()))
        if reason:
            break
    predictions, scores = conclude(task, attempts)
    return TaskResult(task.id, attempts, predictions, scores, rounds, reason,
                      time.monotonic() - started)
