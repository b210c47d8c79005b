"""Workers: the run driver (`loop.run_tasks`) with its own engine and sandbox, one per GPU, fed by the parent.

The parent process owns everything shared: the scheduler (one queue in the run's order, the deadline),
the results store, `submission.json` and the progress line. A worker writes nothing shared: it asks the
parent for its next task and for round deadlines, and reports what happens as the driver's events.

- One worker (`--workers 1`, and the default on a machine with at most one GPU) runs the driver in the
  parent's own process: `run_tasks(scheduler, ...)` itself.
- Several (`Workers`): one process each (`Processes`, started with `spawn`), each owning one GPU
  (`CUDA_VISIBLE_DEVICES`) and its share of the CPU cores for its sandbox and its torch threads, running
  `worker_main`: the same driver over a connection to the parent; or the same on a Ray cluster
  (`ray_actors.RayActors`). The parent merges their reports into one stream of events, in the order each
  worker sent them, so the code that records them is the same.

Faults: a worker that dies (killed, out of host memory, a segfault) is replaced while tasks remain, and the
tasks it had in flight go back to the front of the queue, once each; a task in flight on a second worker
that dies is reported failed (the parent answers it from its stored attempts). A worker that dies before
its engine is ready stops the run with its error: a replacement would die the same way. On Ctrl-C, SIGTERM
or any error in the parent, every worker is terminated and waited for.

What is not covered: several GPUs for one model, workers of unequal speed (the deadline costs every search
alike), a memory budget per GPU (each worker plans for the memory its GPU has free).
"""

import multiprocessing as mp
import os
import pickle
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait

from arcsl.config import ModelConfig, SolveConfig
from arcsl.grids import Task
from arcsl.loop import Event, LoopSettings, PhaseEvent, RoundDone, TaskDone, TaskFailed, adapters_needed, run_tasks
from arcsl.prompting import PromptFormat
from arcsl.scheduler import Scheduler

STOP_WAIT_S = 10.0  # how long a terminated worker gets to close its sandbox before it is killed


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    index: int
    device: str              # what its engine runs on: "cuda:0" (the one GPU it sees) or "cpu"
    visible_gpu: str | None  # the CUDA_VISIBLE_DEVICES it sets before torch starts; None: as given (Ray sets it)
    sandbox_workers: int     # sandbox processes of its own
    torch_threads: int       # CPU threads of its torch


@dataclass(frozen=True, slots=True)
class WorkerLost:
    """A worker process died: the tasks it had in flight went back to the queue, or failed (a second death)."""
    index: int
    exit_code: int | None
    put_back: list[str]
    failed: list[str]
    is_replaced: bool         # a new worker took its place (there was work left)


def engine_config(cfg: SolveConfig) -> ModelConfig:
    """The model settings a worker loads: at least one LoRA adapter per task (or task group) in flight."""
    needed = adapters_needed(cfg.run.tasks_in_flight, cfg.loop.task_group_size)
    return replace(cfg.model, num_adapters=max(cfg.model.num_adapters, needed))


def auto_tasks_in_flight(programs_per_round: int, preferred_rows: int, num_tasks: int, num_workers: int,
                         max_tasks: int | None = None) -> int:
    """--tasks-in-flight auto: as many tasks per worker as fill a decode step of `preferred_rows` with a round's
    programs each, but no more than each worker's share of the tasks, nor than `max_tasks` (what the adapters its
    GPU's memory holds take: one task each, or a task group)."""
    wanted = -(-preferred_rows // programs_per_round)
    return max(1, min(wanted, -(-num_tasks // num_workers), max_tasks or wanted))


def gpu_adapter_limit(model: ModelConfig, gpu_bytes: int | None) -> tuple[int | None, str]:
    """(adapters, why): how many LoRA adapters of `model`'s settings a GPU of `gpu_bytes` (or its
    --gpu-memory-gb) holds besides the weights (`planner.adapters_that_fit`); None where the memory or the
    model's shape cannot be told from here (a Ray cluster's GPUs, a model not on this machine)."""
    from arcsl.engine.planner import ModelShape, adapters_that_fit

    memory = model.gpu_memory_gb * 2**30 or gpu_bytes
    if not memory:
        return None, "GPU memory unknown here"
    try:
        from transformers import AutoConfig

        shape = ModelShape.from_config(AutoConfig.from_pretrained(model.model))
    except (OSError, ValueError, AttributeError) as e:
        return None, f"model shape unknown here ({type(e).__name__})"
    targets = model.target_modules
    count = adapters_that_fit(shape, memory, model.lora_rank, targets, 0.56 if model.load_in_4bit else 2)
    return count, f"{count} adapters of rank {model.lora_rank} fit in {memory / 2**30:.0f} GiB"


def smallest_gpu_bytes() -> int | None:
    """The memory of the smallest GPU this process sees, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))


def plan_workers(num_workers: int, gpus: list[str], num_cores: int, sandbox_workers: int,
                 assigned_gpus: bool = False) -> list[WorkerSpec]:
    """One spec per worker: worker i owns GPU `gpus[i]` (if there are GPUs), and the cores are shared out.

    Args:
        num_workers: as --workers gives it; 0 = one per GPU (1 without GPUs).
        gpus: the GPUs to use, as CUDA_VISIBLE_DEVICES names them (`visible_gpus`).
        sandbox_workers: sandbox processes per worker, as --sandbox-workers gives it; 0 = its share of the cores.
        assigned_gpus: something else (Ray) gives each worker its GPU; the workers leave CUDA_VISIBLE_DEVICES be.
    """
    n = num_workers or max(len(gpus), 1)
    if gpus and n > len(gpus):
        raise ValueError(f"--workers {n}: each worker owns one GPU, and {len(gpus)} are visible")
    share = max(1, num_cores // n)
    device = "cuda:0" if gpus else "cpu"
    return [WorkerSpec(i, device, None if assigned_gpus or not gpus else gpus[i], sandbox_workers or share, share)
            for i in range(n)]


def visible_gpus(device: str) -> list[str]:
    """The GPUs the workers may use, as CUDA_VISIBLE_DEVICES names them: every visible one, the one --device
    cuda:N pins, or none (--device cpu, or no GPU)."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = given.split(",")[:count] if given else [str(i) for i in range(count)]
    return [names[int(device.split(":")[1])]] if device.startswith("cuda:") else names


# --- the worker side ----------------------------------------------------------------------------

class RemoteSource:
    """The scheduler as a worker process sees it: every question goes to the parent over `conn`."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def next_task(self) -> tuple[Task, int] | None:
        self.conn.send(("next_task",))
        return self.conn.recv()

    def round_deadline(self) -> float | None:
        # seconds left, not the parent's clock: monotonic clocks of two processes need not agree
        self.conn.send(("round_deadline",))
        left = self.conn.recv()
        return None if left is None else time.monotonic() + left

    def observe(self, stats) -> None:
        pass  # the parent hears the round from its RoundDone event, before this worker's next question


def worker_main(spec: WorkerSpec, cfg: SolveConfig, prompt_format: PromptFormat, conn: Connection,
                set_signals: bool = True) -> None:
    """The body of a worker (a process, or a Ray actor: `set_signals=False`, Ray handles its signals): load the
    engine, then run the driver on what the parent hands out."""
    if set_signals:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers; a terminal's Ctrl-C is its
        signal.signal(signal.SIGTERM, _exit_on_sigterm)  # closes the sandbox (its processes) on the way out
    if spec.visible_gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = spec.visible_gpu  # before torch starts CUDA: this GPU is cuda:0
    try:
        import torch

        from arcsl.engine.hf import load_engine
        from arcsl.sandbox import SandboxPool

        torch.set_num_threads(spec.torch_threads)
        engine = load_engine(replace(engine_config(cfg), device=spec.device))
        sandbox = replace(cfg.sandbox, sandbox_workers=spec.sandbox_workers)
        settings = LoopSettings(cfg.loop, cfg.relabel, cfg.sampling, cfg.finetune, prompt_format, cfg.model.model)
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", str(engine.device)))
    with SandboxPool(sandbox, dsl_path=prompt_format.dsl_path) as pool:
        on_phase = lambda event: conn.send(("phase", event))  # noqa: E731
        for event in run_tasks(RemoteSource(conn), engine, pool, settings, cfg.run.tasks_in_flight, on_phase):
            conn.send(("event", _picklable(event)))
    conn.send(("done",))


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _picklable(event: Event) -> Event:
    """The event, with an exception that cannot cross to the parent replaced by its text."""
    if isinstance(event, TaskFailed):
        try:
            pickle.dumps(event.error)
        except Exception:
            return TaskFailed(event.task, RuntimeError(f"{type(event.error).__name__}: {event.error}"))
    return event


# --- the parent side ----------------------------------------------------------------------------

@dataclass(slots=True)
class WorkerHandle:
    """The parent's hold on one worker: its channel, its process or actor, what it has in flight."""
    spec: WorkerSpec
    conn: object                         # send / recv / poll, to the worker's `worker_main`
    handle: object                       # its process, or its Ray actor and the reference of its run
    is_ready: bool = False
    in_flight: dict[str, Task] = field(default_factory=dict)  # handed out and not yet done or failed


class Processes:
    """Workers as processes of this machine, started with `spawn` (a fresh interpreter: no CUDA state shared)."""

    def __init__(self):
        self.context = mp.get_context("spawn")

    def start(self, spec: WorkerSpec, cfg: SolveConfig, prompt_format: PromptFormat) -> WorkerHandle:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=worker_main, args=(spec, cfg, prompt_format, child),
                                       name=f"arcsl-worker-{spec.index}")
        process.start()
        child.close()  # the parent keeps its end only: a dead worker shows as EOF
        return WorkerHandle(spec, parent, process)

    def wait(self, workers: list[WorkerHandle], timeout: float) -> list[WorkerHandle]:
        """The workers with a message to read (or that died: reading then raises EOFError)."""
        by_conn = {w.conn: w for w in workers}
        return [by_conn[c] for c in wait(list(by_conn), timeout=timeout)]

    def exit_code(self, w: WorkerHandle) -> int | None:
        w.handle.join()
        return w.handle.exitcode

    def stop(self, workers: list[WorkerHandle]) -> None:
        """Terminates the workers and waits for them (killed after STOP_WAIT_S)."""
        for w in workers:
            if w.handle.is_alive():
                w.handle.terminate()
        deadline = time.monotonic() + STOP_WAIT_S
        for w in workers:
            w.handle.join(max(0.0, deadline - time.monotonic()))
            if w.handle.is_alive():
                w.handle.kill()
                w.handle.join()
            w.conn.close()


class Workers:
    """Several workers, merged into one stream of events (`events`); `launcher` starts and stops them
    (`Processes` on this machine, `ray_actors.RayActors` on a Ray cluster).

    Args:
        specs: one per worker (`plan_workers`).
        scheduler: the run's; the workers' questions are answered from it.
        on_phase: hears the phase events of every worker (the progress line).
    """

    def __init__(self, specs: list[WorkerSpec], cfg: SolveConfig, prompt_format: PromptFormat,
                 scheduler: Scheduler, on_phase: Callable[[PhaseEvent], None] | None = None, launcher=None):
        self.specs, self.cfg, self.prompt_format = specs, cfg, prompt_format
        self.scheduler, self.on_phase = scheduler, on_phase
        self.launcher = launcher or Processes()
        self.live: dict[int, WorkerHandle] = {}  # by spec index

    def events(self) -> Iterator[Event | WorkerLost]:
        """What every worker reports, as it arrives, until the queue is empty and every worker has finished."""
        try:
            for spec in self.specs:
                self._start(spec)
            while self.live:
                for w in self.launcher.wait(list(self.live.values()), timeout=1.0):
                    yield from self._serve(w)
        finally:
            workers, self.live = list(self.live.values()), {}
            self.launcher.stop(workers)

    def _start(self, spec: WorkerSpec) -> None:
        self.live[spec.index] = self.launcher.start(spec, self.cfg, self.prompt_format)

    def _serve(self, w: WorkerHandle) -> Iterator[Event | WorkerLost]:
        """Handles one message of worker `w`."""
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            yield from self._lost(w)
            return
        kind = message[0]
        if kind == "event":
            event = message[1]
            if isinstance(event, (TaskDone, TaskFailed)):
                w.in_flight.pop(event.task.id, None)
            elif isinstance(event, RoundDone):
                self.scheduler.observe(event.stats)
            yield event
        elif kind == "phase" and self.on_phase is not None:
            self.on_phase(message[1])
        elif kind == "next_task":
            handed = self.scheduler.next_task()
            if handed is not None:
                w.in_flight[handed[0].id] = handed[0]
            w.conn.send(handed)
        elif kind == "round_deadline":
            deadline = self.scheduler.round_deadline()
            w.conn.send(None if deadline is None else deadline - time.monotonic())
        elif kind == "ready":
            w.is_ready = True
        elif kind == "done":
            del self.live[w.spec.index]
            self.launcher.stop([w])
        elif kind == "error":
            raise RuntimeError(f"worker {w.spec.index} could not start:\n{message[1]}")

    def _lost(self, w: WorkerHandle) -> Iterator[WorkerLost | TaskFailed]:
        """Worker `w` died: its tasks go back to the queue (or fail, the second time), and a new worker
        takes its place while there is work left."""
        del self.live[w.spec.index]
        exit_code = self.launcher.exit_code(w)
        self.launcher.stop([w])
        if not w.is_ready:
            raise RuntimeError(f"worker {w.spec.index} died while starting (exit code {exit_code})")
        put_back, failed = [], []
        for task in w.in_flight.values():
            (put_back if self.scheduler.put_back(task) else failed).append(task)
        is_replaced = bool(self.scheduler.queue)
        if is_replaced:
            self._start(w.spec)
        yield WorkerLost(w.spec.index, exit_code, [t.id for t in put_back], [t.id for t in failed], is_replaced)
        for task in failed:
            yield TaskFailed(task, RuntimeError(f"two workers died with task {task.id} in flight"))
