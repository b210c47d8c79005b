"""Search and learn: the algorithm, top to bottom, and the driver that runs it over a list of tasks.

    search: sample programs from augmented views -> run them in the sandbox (each as soon as its sample
            stops, while the others are decoded) -> map outputs back -> score
    repeat up to max_rounds: relabel attempts (and refinements) in hindsight -> fine-tune the LoRA -> search
            again, part of it (refine_programs) refining earlier attempts shown with what they did
    stop early when solved (or out of time); select two attempts per test input; reset the LoRA

A round (`run_round`) advances several tasks in lockstep, each learning in its own LoRA adapter of the
engine, or with `task_group_size` K > 1 in its group's: K tasks that start together share one adapter, which
each round fine-tunes once on all of their relabelled attempts (one call, fuller micro-batches, K times fewer
adapters), and a task that stops leaves its group. Each adapter fine-tunes in turn, then ONE sampling call
decodes every task's prompts (each through its own adapter) and ONE sandbox batch runs every program, each as soon as its sample has
stopped (the engine's `on_complete`), the sandbox being serviced while the engine waits for its device
(`idle`). A program runs once per view: samples of one view with the same program share its result. A
decode step costs about the same for many rows as for few, so several tasks' rounds cost little more than
one's. A round returns what happened (each task's new attempts and `RoundStats`); it decides nothing.

One driver, `run_tasks`, the body of every worker, decides the rest: it takes tasks from a `TaskSource`
(the run's scheduler, which says which task comes next and whether it may learn or gets search only, and
by when a round must end), gives each group of tasks an adapter, and after each round decides which tasks
stop (solved, out of rounds, out of their own time, or out of the time owed to later tasks). It yields what happened
(`TaskStarted`, `RoundDone`, `TaskDone`, `TaskFailed`) and writes nothing: `arcsl solve` consumes the
events into its results store and submission, and `search_and_learn` is the same driver on one task. The
only callback, `on_phase`, is for display.

Every round records its phase timings (sampling, execution, relabelling, finetuning, reset, other);
"other" is whatever the round spent outside those phases: the overhead we keep near zero. "sampling" is
the engine call, with the execution it overlaps; "execution" is only the tail after it: the programs still
queued or running when the last sample stopped (all of them, with an engine that does not stream). A phase
shared by several tasks (their one sampling call, their one sandbox batch) and the round's "other"
are split equally among them, so the tasks' timings still add up to the round's wall time. The engine is
only used through its protocol (sample / finetune / reset), so a fake engine drives the same code in
tests, and the toy domain reuses it unchanged with its own prompt format and DSL.

Each task draws its views, their sampling seeds and its fine-tuning seeds (a group's: its first task's)
from its own random generator (seeded by the run seed and the task id), and the engine draws each prompt's
samples from that prompt's seed alone, so a task's attempts do not depend on which tasks share its rounds,
on a CPU exactly (with task groups they do depend on its group's tasks, which learn in its adapter).

The round deadline holds with any number of tasks in flight: a round does not start if its estimate (the
last round's search, plus each task's learning as seen so far: `RoundCosts`) would end past it, and in a
round that starts, the adapters' fine-tuning shares the time before the deadline less the search (`learn`
passes each its `stop_at`, after which the engine starts no optimizer step), and the sampling ends at the
deadline less the execution tail (the last round's), keeping the samples finished by then (the first
round's too: before any round is seen, nothing else tells its cost). A task's rounds therefore end by the
deadline, late by at most one fine-tuning step, a few decode steps and the execution tail estimate's error.

What is not covered: files and the results store (`solve.py`), the queue and the deadline arithmetic
(`scheduler.py`), processes (`workers.py`).
"""

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

import numpy as np

from arcsl.augment import augment, inverse, random_augmentation, restore_train_order
from arcsl.config import FinetuneConfig, LoopConfig, RelabelConfig, SamplingConfig
from arcsl.engine.types import Completion, Engine, Prompt
from arcsl.grids import Grid, Task
from arcsl.prompting import PromptFormat
from arcsl.refine import behaviour, check_refinement, choose_parents, parent_view
from arcsl.relabel import (refinement_examples, refinement_key, refinement_set, train_fingerprint, training_examples,
                           training_set)
from arcsl.sandbox import ExecutionResult, Job, SandboxPool
from arcsl.scheduler import DeadlinePlanner, Scheduler
from arcsl.scoring import Attempt, TaskScores, fingerprint, score_attempt, score_task
from arcsl.selection import prediction_grids, select_attempts

PHASES = ("sampling", "execution", "relabelling", "finetuning", "reset", "other")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """What every task of a run shares: the parts of the run config the loop uses, and the prompt format."""
    loop: LoopConfig
    relabel: RelabelConfig
    sampling: SamplingConfig
    finetune: FinetuneConfig
    prompt_format: PromptFormat
    model_id: str = ""

    def __post_init__(self):
        check_refinement(self.loop, self.prompt_format)


@dataclass(frozen=True, slots=True)
class RoundStats:
    round: int
    num_programs: int         # programs sampled in this round
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
    settings: LoopSettings         # shared with every task of the run
    rng: np.random.Generator       # the task's own: its views, relabelling order and fine-tuning seeds
    started: float                 # time.monotonic() at its start (cfg.task_time_s counts from it)
    adapter: int                   # the engine's LoRA adapter it learns in
    max_rounds: int                # its own: the run's, or 0 (search only) when the deadline is near
    attempts: list[Attempt] = field(default_factory=list)
    trained: set[str] = field(default_factory=set)  # train fingerprints (and refinement keys) fine-tuned on so far
    refined: dict[str, int] = field(default_factory=dict)  # parent behaviour -> times refined so far
    rounds: list[RoundStats] = field(default_factory=list)
    reason: str | None = None      # why it stopped (see TaskResult.stop_reason); None while it goes on

    @property
    def round(self) -> int:
        """The round in progress, or the next one between rounds."""
        return len(self.rounds)


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
                 round_: int, prompt_id: str, model_id: str, key: str = "", parent: str | None = None) -> Attempt:
    """An attempt in the original task's frame: outputs mapped back through the view's augmentation; `key` names
    it within the task, `parent` the attempt it refines."""
    train_outputs = test_outputs = None
    if result.outputs is not None:
        back = [inverse(g, view.augmentation) for g in result.outputs]
        train_outputs = restore_train_order(back[:len(view.train)], view.augmentation)
        test_outputs = back[len(view.train):]
    return Attempt(task_id=task.id, program=program, error=None if result.error is None else str(result.error),
                   train_outputs=train_outputs, test_outputs=test_outputs,
                   scores=score_attempt(task, train_outputs, test_outputs), round=round_,
                   augmentation=view.augmentation, prompt_hash=prompt_id, response=completion.text,
                   model_id=model_id, timings={"execution": result.elapsed_s}, message=result.message, key=key,
                   parent=parent)


def split_by_counts(items: Sequence[T], counts: Sequence[int], what: str) -> list[list[T]]:
    """`items` cut into consecutive parts of `counts` items, for handing one call's results back to their
    owners; the counts must add up to the items exactly."""
    assert sum(counts) == len(items), f"{what}: {len(items)} items for owners that asked for {sum(counts)} ({counts})"
    parts, start = [], 0
    for n in counts:
        parts.append(list(items[start:start + n]))
        start += n
    return parts


@dataclass(frozen=True, slots=True)
class SearchPlan:
    """What one task asks of a search: its views, their prompts, a sampling seed for each, and the attempt each
    refines (None: a fresh sample)."""
    views: list[Task]
    prompts: list[Prompt]          # one per view
    seeds: list[int]               # one per view: its samples depend on it alone, not on the tasks beside it
    parents: list[Attempt | None]  # one per view


def plan_search(run: TaskRun) -> SearchPlan:
    """The prompts of the run's current round, and their seeds, drawn from its own generator: after the first round,
    up to refine_programs / samples_per_view parents (`refine.choose_parents`), each in the view it was sampled
    from; fresh views for the rest."""
    cfg, fmt = run.settings.loop, run.settings.prompt_format
    num_views = (cfg.initial_programs if run.round == 0 else cfg.programs_per_round) // cfg.samples_per_view
    parents = []
    if run.round > 0 and cfg.refine_programs:
        parents = choose_parents(run.attempts, cfg.refine_programs // cfg.samples_per_view, cfg.refine_per_parent,
                                 run.refined)
    views = [augment(run.task, random_augmentation(run.task, run.rng, cfg.augment_dihedral, cfg.augment_colors,
                                                   cfg.augment_train_order))
             for _ in range(num_views - len(parents))]
    prompts = [fmt.build(v) for v in views]
    for parent in parents:
        view, feedback = parent_view(run.task, parent)
        views.append(view)
        prompts.append(fmt.refine(view, parent.program, feedback))
    seeds = [int(s) for s in run.rng.integers(2**31, size=len(views))]
    return SearchPlan(views, prompts, seeds, [None] * (len(views) - len(parents)) + parents)


def search(runs: list[TaskRun], engine: Engine, pool: SandboxPool, timers: list[PhaseTimer],
           sample_until: float | None = None) -> list[list[Attempt]]:
    """Sample programs for every run's task (fresh views, and after the first round refine prompts of its parents:
    `plan_search`), run and score them: one engine call, each prompt through its task's adapter and with its
    view's own seed; one sandbox batch. Returns each run's attempts. Sampling ends at `sample_until`
    (time.monotonic()) with the samples finished by then.

    Each program goes to the sandbox as soon as its sample stops (the engine's `on_complete`), and the
    sandbox is serviced while the engine waits for its device (`idle`), so execution overlaps decoding;
    what the engine returned without streaming it is submitted after the call. A program runs once per
    view: samples of one view that give the same program text share its result."""
    settings = runs[0].settings
    assert all(r.settings == settings for r in runs), "tasks searched together must share their settings"
    fmt, per_view = settings.prompt_format, settings.loop.samples_per_view
    plans = [plan_search(run) for run in runs]
    prompts = [p for plan in plans for p in plan.prompts]
    adapters = [run.adapter for run, plan in zip(runs, plans) for _ in plan.prompts]
    views = [v for plan in plans for v in plan.views]
    with pool.batch() as batch:
        jobs: dict[tuple[int, str | None], int] = {}  # (view, program) -> its job in the batch

        def submit(view: int, completion: Completion) -> int:
            program = fmt.extract(completion.text)
            if (view, program) not in jobs:
                grids = [q.input for q in views[view].train] + [q.input for q in views[view].test]
                jobs[view, program] = batch.submit(Job(program, grids))
            return jobs[view, program]

        with shared_phase(timers, "sampling"):  # execution overlaps it
            sampling = replace(settings.sampling, num_samples=per_view)
            seeds = [s for plan in plans for s in plan.seeds]
            completions = engine.sample(prompts, sampling, seed=seeds, adapters=adapters, stop=fmt.stop,
                                        stop_at=sample_until, on_complete=lambda i, _, c: submit(i, c),
                                        idle=batch.poll).completions
        with shared_phase(timers, "execution"):  # the tail: what runs after the last sample
            assert all(len(cs) <= per_view for cs in completions), \
                f"the engine gave more than {per_view} samples a prompt"
            indices = [[submit(i, c) for c in cs] for i, cs in enumerate(completions)]  # those not streamed too
            results = batch.finish()
            programs = [[batch.jobs[k].program for k in ks] for ks in indices]  # per prompt, its samples' programs
            prompts_per_run = [len(plan.prompts) for plan in plans]
            by_run = split_by_counts(completions, prompts_per_run, "completions by task")
            flat = [results[k] for ks in indices for k in ks]
            per_run = zip(by_run, split_by_counts(programs, prompts_per_run, "programs by task"),
                          split_by_counts(flat, [sum(map(len, cs)) for cs in by_run], "results by task"))
            return [run_attempts(run, plan, cs, ps, rs) for run, plan, (cs, ps, rs) in zip(runs, plans, per_run)]


def run_attempts(run: TaskRun, plan: SearchPlan, completions: list[list[Completion]],
                 programs: list[list[str | None]], results: list[ExecutionResult]) -> list[Attempt]:
    """One run's attempts, per view and sample, keyed "round.index"; `results` holds its programs' results in that
    order. A parent counts as refined (`run.refined`) once a refinement of it was sampled: a prompt the deadline
    cut before any sample leaves its parent for a later round."""
    for parent, cs in zip(plan.parents, completions):
        if parent is not None and cs:
            run.refined[behaviour(parent)] = run.refined.get(behaviour(parent), 0) + 1
    sampled = [(v, prompt_hash(prompt), parent, c, p)
               for v, prompt, parent, cs, ps in zip(plan.views, plan.prompts, plan.parents, completions, programs)
               for c, p in zip(cs, ps)]
    return [make_attempt(run.task, v, c, p, r, run.round, h, run.settings.model_id, key=f"{run.round}.{i}",
                         parent=None if parent is None else parent.key)
            for i, ((v, h, parent, c, p), r) in enumerate(zip(sampled, results, strict=True))]


# --- stopping -----------------------------------------------------------------------------------

def num_solutions(attempts: list[Attempt]) -> int:
    """Distinct programs, by test output, that are exact on every train pair."""
    return len({fingerprint(a.test_outputs) for a in attempts
                if a.scores.train.is_correct and a.test_outputs is not None})


def best_train_score(attempts: list[Attempt]) -> float:
    """The best train pixel score among `attempts`; 0 for none."""
    return max((a.scores.train.pixel_score for a in attempts), default=0.0)


def stop_reason(run: TaskRun, deadline: float | None, round_s: float) -> str | None:
    """Why `run` should stop after the round it just finished, or None to go on.

    Args:
        deadline: time.monotonic() by which the task's rounds must have ended; None = no limit.
        round_s: the estimate of the next round (`RoundCosts`): a round that would end after the deadline
            does not start (the deadline protects other tasks' time, unlike the task's own budget, which
            only stops new rounds once spent).
    """
    cfg = run.settings.loop
    needed = {"two-solutions": 2, "one-solution": 1, "never": None}[cfg.stop]
    if needed is not None and num_solutions(run.attempts) >= needed:
        return "solved"
    if run.round - 1 >= run.max_rounds:
        return "max-rounds"
    now = time.monotonic()
    if cfg.task_time_s != -1 and now - run.started >= cfg.task_time_s:
        return "task-time"
    if deadline is not None and now + round_s > deadline:
        return "deadline"
    return None


def conclude(task: Task, attempts: list[Attempt]) -> tuple[list[list[Grid]], TaskScores]:
    """A task's answers (two grids per test input, chosen from `attempts`) and its scores."""
    predictions = prediction_grids(select_attempts(task, attempts))
    return predictions, score_task(task, attempts, predictions)


# --- one round ----------------------------------------------------------------------------------

def start_run(task: Task, settings: LoopSettings, adapter: int = 0, max_rounds: int | None = None) -> TaskRun:
    """A task before its first round, learning in the engine's `adapter`, with up to `max_rounds` learning
    rounds (None: the run's); its generator comes from the seed and the task id alone."""
    rng = np.random.default_rng([settings.loop.seed, int(hashlib.sha256(task.id.encode()).hexdigest()[:8], 16)])
    rounds = settings.loop.max_rounds if max_rounds is None else max_rounds
    return TaskRun(task, settings, rng, time.monotonic(), adapter, rounds)


def learn(group: list[TaskRun], engine: Engine, timers: list[PhaseTimer], stop_at: float | None = None) -> list[int]:
    """Before a round's search, for the tasks of one adapter (a group; one task without task groups): in
    their round 0, a fresh LoRA in it; after it, each task's last-round attempts relabelled (and its
    refinements, as refinements), then ONE fine-tuning call of that LoRA on all of them, taking no step from
    `stop_at` (time.monotonic()) on. Returns the number of examples each task contributed."""
    adapter, first = group[0].adapter, group[0]
    assert all(r.adapter == adapter and r.round == first.round for r in group), \
        f"the tasks of adapter {adapter} must be in the same round: {[(r.task.id, r.round) for r in group]}"
    if first.round == 0:
        with shared_phase(timers, "reset"):
            engine.reset(adapter=adapter)  # a fresh LoRA and optimizer for every task (or group)
        return [0] * len(group)
    examples = []
    for run, timer in zip(group, timers):
        with timer("relabelling"):
            relabel, fmt = run.settings.relabel, run.settings.prompt_format
            chosen = training_set(run.task, run.attempts, run.round - 1, run.trained, relabel, run.rng)
            refined = refinement_set(run.task, run.attempts, run.round - 1, run.trained, relabel, run.rng)
            run.trained |= {train_fingerprint(a) for a in chosen} | {refinement_key(p, c) for p, c in refined}
            examples.append(training_examples(run.task, chosen, fmt, relabel.prune_programs)
                            + refinement_examples(run.task, refined, fmt, relabel.prune_programs))
    if any(examples):
        with shared_phase(timers, "finetuning"):
            engine.finetune([e for task_examples in examples for e in task_examples], first.settings.finetune,
                            seed=int(first.rng.integers(2**31)), adapter=adapter, stop_at=stop_at)
    return [len(e) for e in examples]


def adapter_groups(runs: list[TaskRun]) -> list[list[int]]:
    """The indices into `runs` of each adapter's tasks, adapters in order of their first task."""
    groups: dict[int, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(run.adapter, []).append(i)
    return list(groups.values())


@dataclass(frozen=True, slots=True)
class RoundDone:
    """A task finished a round: its new attempts and the round's stats (already added to its run)."""
    task: Task
    attempts: list[Attempt]
    stats: RoundStats


def run_round(runs: list[TaskRun], engine: Engine, pool: SandboxPool,
              on_phase: Callable[[PhaseEvent], None] | None = None, learn_until: float | None = None,
              sample_until: float | None = None) -> list[RoundDone]:
    """One round of every task in `runs`, in lockstep: each adapter's tasks learn (or start) in it, adapter by
    adapter; then one search for all of them. Adds each one's new attempts and stats to its run and returns them.

    `learn_until` and `sample_until` (time.monotonic(); None: no limit): when the round's fine-tuning and its
    sampling must be over. The learning adapters share the time until `learn_until` in turn, in slots in
    proportion to their tasks; the sampling keeps what has finished by `sample_until`.

    Shared phases and the round's "other" are split equally among the tasks (`shared_phase`,
    `finish_timers`), so their RoundStats add up to the round's wall time.
    """
    def announcer(run: TaskRun) -> Callable[[str], None] | None:
        if on_phase is None:
            return None
        return lambda phase: on_phase(PhaseEvent(run.task.id, run.round, phase, best_train_score(run.attempts)))

    timers = [PhaseTimer(on_start=announcer(run)) for run in runs]
    groups = adapter_groups(runs)
    num_learning, start = sum(len(g) for g in groups if runs[g[0]].round > 0), time.monotonic()
    num_examples, slots_used = [0] * len(runs), 0
    for group in groups:
        stop_at = None
        if learn_until is not None and runs[group[0]].round > 0:
            slots_used += len(group)  # a slot in proportion to the group's tasks
            stop_at = start + (learn_until - start) * slots_used / num_learning
        for i, n in zip(group, learn([runs[i] for i in group], engine, [timers[i] for i in group], stop_at)):
            num_examples[i] = n
    new = search(runs, engine, pool, timers, sample_until)
    done = []
    for run, examples, attempts, seconds in zip(runs, num_examples, new, finish_timers(timers)):
        run.attempts += attempts
        stats = RoundStats(run.round, len(attempts), examples, num_solutions(run.attempts),
                           best_train_score(run.attempts), seconds)
        run.rounds.append(stats)
        done.append(RoundDone(run.task, attempts, stats))
    return done


def finish_run(run: TaskRun) -> TaskResult:
    """A stopped task's result: its answers, scores and rounds."""
    assert run.reason is not None, f"task {run.task.id} has not stopped (round {run.round})"
    predictions, scores = conclude(run.task, run.attempts)
    return TaskResult(run.task.id, run.attempts, predictions, scores, run.rounds, run.reason,
                      time.monotonic() - run.started)


# --- the driver ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TaskStarted:
    task: Task
    max_rounds: int                # the run's, or 0: search only, the deadline being near


@dataclass(frozen=True, slots=True)
class TaskDone:
    task: Task
    result: TaskResult


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """An exception in the task's round (every task of a shared round fails with it) or in its conclusion."""
    task: Task
    error: Exception


Event = TaskStarted | RoundDone | TaskDone | TaskFailed

LEARNING_PHASES = ("relabelling", "finetuning")


@dataclass(slots=True)
class RoundCosts:
    """What a driver's rounds have cost, to cost the next one: the shared search (everything but learning) and
    its execution tail (the phase "execution": what ran after the sampling call), of the last round, and each
    task's learning in every learning round so far."""
    search_s: float = 0.0
    execution_s: float = 0.0
    learning_s: list[float] = field(default_factory=list)

    def observe(self, done: list[RoundDone]) -> None:
        learning = [sum(e.stats.seconds.get(p, 0.0) for p in LEARNING_PHASES) for e in done if e.stats.round > 0]
        self.search_s = sum(sum(e.stats.seconds.values()) for e in done) - sum(learning)
        self.execution_s = sum(e.stats.seconds.get("execution", 0.0) for e in done)
        self.learning_s += learning

    def next_round_s(self, num_tasks: int) -> float:
        """A round of `num_tasks` tasks that all learn: the search, and each one's learning at its mean so far.
        Before any learning is seen it is costed at nothing: the round's fine-tuning then gets what is left
        before the deadline (`run_round`'s `learn_until`), so a guess could only waste time, never overrun."""
        per_task = sum(self.learning_s) / len(self.learning_s) if self.learning_s else 0.0
        return self.search_s + num_tasks * per_task


class TaskSource(Protocol):
    """Where a worker's driver gets its tasks and deadlines: the run's `scheduler.Scheduler`, in the parent
    process or through a worker's connection to it."""

    def next_task(self) -> tuple[Task, int] | None:
        """The next task and its learning rounds, or None when there is none for this worker."""

    def round_deadline(self) -> float | None:
        """time.monotonic() (of this process) by which the next round of a task in flight must end, or None."""

    def observe(self, stats: "RoundStats") -> None:
        """A round ended (its time teaches the deadline what a search costs)."""


def adapters_needed(tasks_in_flight: int, task_group_size: int = 1) -> int:
    """LoRA adapters that `tasks_in_flight` tasks in groups of `task_group_size` learn in: one per group."""
    return -(-tasks_in_flight // task_group_size)


def check_adapters(engine: Engine, tasks_in_flight: int, task_group_size: int = 1) -> None:
    """Refuses an engine with fewer LoRA adapters than the groups of tasks in flight (one task each by default)."""
    needed = adapters_needed(tasks_in_flight, task_group_size)
    if engine.num_adapters < needed:
        groups = f" in groups of {task_group_size}" if task_group_size > 1 else ""
        raise ValueError(f"--tasks-in-flight {tasks_in_flight}{groups} needs an engine with one LoRA adapter per "
                         f"{'group' if groups else 'task'} in flight ({needed}); this one has "
                         f"num_adapters={engine.num_adapters}")


def run_tasks(source: TaskSource, engine: Engine, pool: SandboxPool, settings: LoopSettings,
              tasks_in_flight: int = 1, on_phase: Callable[[PhaseEvent], None] | None = None) -> Iterator[Event]:
    """Search and learn on the tasks `source` hands out, `tasks_in_flight` at a time in lockstep rounds, each in
    its own adapter (or, with the loop's task_group_size K, K tasks that start together in one); a task that
    stops hands its adapter to the next task at once (a group's, once the whole group has stopped). Yields
    what happens, in order. This is the body of every worker, in the parent process or in its own.

    The caller consumes each event before the next round runs (a `RoundDone` is stored before the driver
    asks for the round deadline). An exception in a round fails every task of it (they share its sampling
    call and sandbox batch); the next tasks go on.
    """
    group_size = settings.loop.task_group_size
    check_adapters(engine, tasks_in_flight, group_size)
    adapters = range(adapters_needed(tasks_in_flight, group_size))
    runs: list[TaskRun] = []
    costs = RoundCosts()
    while True:
        while len(runs) < tasks_in_flight and (free := set(adapters) - {r.adapter for r in runs}):  # fill free adapters
            group = []  # up to group_size new tasks in the lowest free adapter
            while (len(group) < group_size and len(runs) < tasks_in_flight
                   and (handed := source.next_task()) is not None):
                task, max_rounds = handed
                group.append(start_run(task, settings, min(free), max_rounds))
                runs.append(group[-1])
                yield TaskStarted(task, max_rounds)
            if not group:
                break
        if not runs:
            return
        deadline = source.round_deadline()
        try:  # fine-tuning leaves time for the search, sampling for the execution tail
            done = run_round(runs, engine, pool, on_phase, *((None, None) if deadline is None else
                                                             (deadline - costs.search_s, deadline - costs.execution_s)))
        except Exception as e:  # the round's tasks share its sampling call and sandbox batch: all of them fail
            for r in runs:
                yield TaskFailed(r.task, e)
            runs = []
            continue
        for event in done:
            source.observe(event.stats)
            yield event
        costs.observe(done)
        deadline, round_s = source.round_deadline(), costs.next_round_s(len(runs))
        for r in runs:
            r.reason = stop_reason(r, deadline, round_s)
        for r in [r for r in runs if r.reason is not None]:
            try:
                result = finish_run(r)
            except Exception as e:  # one broken task must not cost the others
                yield TaskFailed(r.task, e)
            else:
                yield TaskDone(r.task, result)
        runs = [r for r in runs if r.reason is None]


def search_and_learn(task: Task, engine: Engine, pool: SandboxPool, settings: LoopSettings,
                     on_phase: Callable[[PhaseEvent], None] | None = None) -> TaskResult:
    """Solve one task by rounds of search and hindsight learning in the engine's adapter 0 (reset before it
    starts), with no deadline: `run_tasks` on one task."""
    source = Scheduler([task], DeadlinePlanner(-1, 0), settings.loop.max_rounds)
    for event in run_tasks(source, engine, pool, settings, 1, on_phase):
        if isinstance(event, TaskFailed):
            raise event.error
        if isinstance(event, TaskDone):
            return event.result
    raise AssertionError(f"task {task.id}: the driver ended without a result")
