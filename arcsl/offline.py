"""`arcsl finetune`: learn across tasks, one LoRA on the hindsight-relabelled attempts of earlier runs.

The seeds' offline experiment (fine-tune the induction model once on the relabelled predictions of every
evaluation task, then search again) as one command:

    arcsl finetune --from-run out/run1 [out/run2 ...] --output-dir out/adapter --examples-per-task 8
    arcsl solve ... --adapter out/adapter

Each run's results store gives its finished tasks' attempts; the run's config.json gives its dataset (to
rebuild each task's views) and prompt format. Per task, the candidates are the loop's own (`relabel.
training_set` over all rounds: attempts with valid outputs, one per distinct train output, the shortest
program; identity programs dropped and programs pruned as the relabelling flags say); `--select` keeps
`--examples-per-task` of them by train score: the best, the worst, or spread evenly between. Programs
correct on train are ordinary examples. Refinements the runs made (`--refine-programs`) add their hindsight
examples (`relabel.refinement_set` over all rounds, the best children first, up to `--refine-examples` per
task; -1 = all). One LoRA is trained on all of them with the engine's Finetuner (one
code path with the per-task loop) and written as a peft adapter, with `manifest.json`: the source runs,
the examples per task, the settings and the losses.

Training runs one engine call per optimizer step (`train`), so a progress bar shows the loss and tokens/s.
Checkpoints (adapter, optimizer state, progress) go to OUTPUT_DIR/checkpoint every `--checkpoint-every` steps
and when the run is stopped (Ctrl-C, SIGTERM: after the current step); `--resume` goes on from the last one,
refusing if the examples or a setting that changes the result differ.

`--num-processes N` (or torchrun / accelerate launch) trains data parallel: each process runs its share of a
step's examples and the gradients are summed (`engine.finetune.DataParallel`). A linear or cosine
`--lr-schedule` decays over the whole training (`--schedule-steps`, by default all of its steps), not per
engine call.
"""

import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from arcsl.config import DataConfig, FinetuneConfig, ModelConfig, OfflineConfig, RelabelConfig
from arcsl.engine.finetune import DataParallel, num_steps
from arcsl.grids import Task, load_dataset
from arcsl.prompting import PromptFormat
from arcsl.relabel import refinement_examples, refinement_set, training_examples, training_set
from arcsl.scoring import Attempt


def select_examples(task: Task, attempts: list[Attempt], count: int, how: str, relabel: RelabelConfig) -> list[Attempt]:
    """Up to `count` of the task's relabelling candidates (all rounds), by train score: "best", "worst" or
    "spread" (evenly from best to worst); in the order best first. -1: all of them."""
    rules = replace(relabel, relabel_rounds="all", skip_trained=False, max_examples=-1, example_order="best-first")
    ranked = training_set(task, attempts, -1, set(), rules, np.random.default_rng(0))  # no randomness used
    if count == -1 or len(ranked) <= count:
        return ranked
    if how == "best":
        return ranked[:count]
    if how == "worst":
        return ranked[-count:]
    return [ranked[i] for i in np.linspace(0, len(ranked) - 1, count).round().astype(int)]


def select_refinements(task: Task, attempts: list[Attempt], relabel: RelabelConfig) -> list[tuple[Attempt, Attempt]]:
    """The task's (parent, child) refinements of all rounds, the best children first, up to relabel.refine_examples."""
    rules = replace(relabel, relabel_rounds="all", skip_trained=False, example_order="best-first")
    return refinement_set(task, attempts, -1, set(), rules, np.random.default_rng(0))  # no randomness used


def examples_from_runs(runs: list[str], cfg: OfflineConfig, relabel: RelabelConfig,
                       formats: dict[str, PromptFormat]) -> tuple[list[tuple], dict[str, int], str]:
    """(prompt, completion) examples from the runs' stores, the examples per task ("run:task"), and the
    runs' prompt format name. Every run must have used one prompt format."""
    from arcsl.store import open_store

    examples, counts, format_name = [], {}, None
    for run in runs:
        run_dir = Path(run)
        config_file = run_dir / "config.json"
        if not config_file.is_file() or not (run_dir / "results.sqlite").is_file():
            raise ValueError(f"--from-run {run}: not a run folder (it needs config.json and results.sqlite)")
        config = json.loads(config_file.read_text())
        name = config["loop"]["prompt_format"]
        if format_name not in (None, name):
            raise ValueError(f"--from-run {run}: prompt format {name!r}, but an earlier run used {format_name!r}")
        format_name, fmt = name, formats[name]
        data = config["data"]
        tasks = {t.id: t for t in load_dataset(DataConfig(dataset=data["dataset"], solutions=data.get("solutions"),
                                                          skip_invalid=data.get("skip_invalid", False))).tasks}
        with open_store(run_dir / "results.sqlite", resume=True) as store:
            for task_id in sorted(store.finished_task_ids()):
                if task_id not in tasks:
                    raise ValueError(f"--from-run {run}: task {task_id} is not in its dataset {data['dataset']}")
                task = tasks[task_id]
                attempts = store.attempts(task_id)
                chosen = select_examples(task, attempts, cfg.examples_per_task, cfg.select, relabel)
                examples += training_examples(task, chosen, fmt, relabel.prune_programs)
                refined = select_refinements(task, attempts, relabel) if fmt.refine is not None else []
                examples += refinement_examples(task, refined, fmt, relabel.prune_programs)
                counts[f"{run}:{task_id}"] = len(chosen) + len(refined)
    if not examples:
        raise ValueError(f"--from-run {' '.join(runs)}: no attempt with valid outputs to learn from")
    return examples, counts, format_name


CHECKPOINT, PROGRESS = "checkpoint", "progress.json"
# settings a resumed training may change: where and how it runs, not what it computes
RESUMABLE = {"offline": {"progress", "wandb", "checkpoint_every", "resume", "num_processes"},
             "model": {"device", "gpu_memory_gb"},
             "finetune": {"max_tokens_per_micro_batch", "gradient_checkpointing"}}


def finetune_offline(cfg: OfflineConfig, model: ModelConfig, finetune: FinetuneConfig, relabel: RelabelConfig,
                     formats: dict[str, PromptFormat], engine=None) -> dict:
    """Reads the runs, trains one LoRA on their relabelled attempts, writes it and its manifest to
    `cfg.output_dir`; returns the manifest. `engine`: one to train instead of loading `model` (tests).

    Every `cfg.checkpoint_every` optimizer steps, and after the current step when SIGINT or SIGTERM
    arrives (a second one stops at once), the adapter, its optimizer state and the progress go to
    OUTPUT_DIR/checkpoint; `cfg.resume` goes on from there, with the order and seeds an uninterrupted
    training would have had (on a CPU the result is the same to the bit).
    """
    out = Path(cfg.output_dir)
    if (out / "adapter_model.safetensors").exists():
        raise ValueError(f"--output-dir {out}: it already holds an adapter; choose another folder")
    settings = json.loads(json.dumps({"offline": asdict(cfg), "model": asdict(model), "finetune": asdict(finetune),
                                      "relabel": asdict(relabel)}))  # as a checkpoint records them
    checkpoint = latest_checkpoint(out)
    done = json.loads((checkpoint / PROGRESS).read_text()) if checkpoint else None
    if cfg.resume and done is None:
        raise ValueError(f"--resume: {out / CHECKPOINT} holds no checkpoint to go on from")
    if done is not None and not cfg.resume:
        raise ValueError(f"--output-dir {out}: it holds a checkpoint at step {done['step']} of {done['num_steps']}; "
                         "add --resume to go on from it, or choose another folder")
    examples, counts, format_name = examples_from_runs(cfg.from_run, cfg, relabel, formats)
    if done is not None:
        check_resumable(done, settings, examples_digest(examples), checkpoint)
    with data_parallel(model) as (parallel, model):
        is_main = parallel is None or parallel.rank == 0  # the one that reports and writes
        log = (lambda text: print(f"arcsl finetune: {text}", file=sys.stderr)) if is_main else (lambda text: None)
        log(f"{len(examples)} examples from {len(counts)} tasks of {len(cfg.from_run)} runs (prompt format "
            f"{format_name})" + (f", {parallel.world_size} processes" if parallel else "")
            + (f"; resuming at step {done['step']}" if done else ""))
        wandb_run = None  # before the model loads: a missing package is one line at once
        if cfg.wandb and is_main:
            from arcsl.solve import start_wandb

            out.mkdir(parents=True, exist_ok=True)
            wandb_run = start_wandb(settings, out, "finetune")
        if engine is None:
            from arcsl.engine.hf import load_engine

            engine = load_engine(model)
        engine.finetuner.data_parallel = parallel
        if done is not None:
            engine.load_checkpoint(checkpoint)
        progress = done or {"step": 0, "losses": [], "num_dropped": 0, "seconds": 0.0, "settings": settings,
                            "examples": examples_digest(examples)}
        progress["num_steps"] = num_steps(len(examples), finetune)
        started, seconds_before, resumed_at = time.monotonic(), progress["seconds"], done["step"] if done else None

        def after_step(step: int, stats, stop: list[int]) -> None:
            if wandb_run is not None and stats.losses:
                wandb_run.log({"loss": stats.losses[-1], "tokens_per_s": stats.tokens_per_s,
                               "learning_rate": engine.finetuner.optimizers[0].param_groups[0]["lr"]}, step=step)
            progress["step"] = step
            progress["losses"] += stats.losses
            progress["num_dropped"] += stats.num_dropped
            progress["seconds"] = seconds_before + time.monotonic() - started
            stop_signal = agreed_stop(stop, parallel)
            if is_main and (stop_signal is not None or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0
                                                        and step < progress["num_steps"])):
                write_checkpoint(engine, out, progress)
            if stop_signal is not None:
                from arcsl.solve import Stopped

                log(f"checkpoint at step {step} of {progress['num_steps']} in {out / CHECKPOINT}")
                raise Stopped(stop_signal)

        # one engine call per step: a decay's horizon is the whole training's, not a call's
        finetune = replace(finetune, schedule_steps=finetune.schedule_steps or progress["num_steps"])
        try:
            with stop_after_step() as stop:
                train(engine, examples, finetune, cfg.seed, cfg.progress and is_main, progress["step"],
                      lambda step, stats: after_step(step, stats, stop))
        except BaseException:  # stopped (a checkpoint was written) or failed: the wandb run ends with it
            if wandb_run is not None:
                wandb_run.finish()
            raise
        losses = progress["losses"]
        if not losses:
            raise ValueError(f"--max-seq-len {finetune.max_seq_len}: no example fits; nothing was trained")
        manifest = {"from_run": cfg.from_run, "prompt_format": format_name, "examples_per_task": counts,
                    "num_examples": len(examples), "num_dropped": progress["num_dropped"] // finetune.num_epochs,
                    "num_steps": len(losses), "losses": losses, "final_loss": losses[-1],
                    "seconds": progress["seconds"], "resumed_at_step": resumed_at,
                    "num_processes": parallel.world_size if parallel else 1, "settings": settings}
        if is_main:
            out.mkdir(parents=True, exist_ok=True)
            engine.save_adapter(out)
            (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
            for folder in (out / CHECKPOINT, out / f"{CHECKPOINT}.old"):  # the adapter supersedes them
                shutil.rmtree(folder, ignore_errors=True)
        if wandb_run is not None:
            wandb_run.summary.update({"final_loss": manifest["final_loss"], "num_examples": len(examples)})
            wandb_run.finish()
        log(f"{len(losses)} steps, loss {manifest['final_loss']}, adapter in {out}")
        return manifest


@contextmanager
def data_parallel(model: ModelConfig) -> Iterator[tuple[DataParallel | None, ModelConfig]]:
    """Under torchrun (or accelerate launch: the same environment), this process's `DataParallel` and the
    model settings for its device (GPU `LOCAL_RANK`; NCCL between GPUs, gloo on CPUs), with the process
    group up for the block; else (None, `model`)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield None, model
        return
    import torch
    import torch.distributed as dist

    on_gpu = model.device.startswith("cuda") or (model.device == "auto" and torch.cuda.is_available())
    if on_gpu:
        model = replace(model, device=f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    dist.init_process_group("nccl" if on_gpu else "gloo")
    try:
        yield DataParallel(dist.get_rank(), world_size), model
    finally:
        dist.destroy_process_group()


def agreed_stop(stop: list[int], parallel: DataParallel | None) -> int | None:
    """The signal that stops training after this step, as every process agrees (any process that got one)."""
    if parallel is None:
        return stop[0] if stop else None
    import torch
    import torch.distributed as dist

    flag = torch.tensor([stop[0] if stop else 0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag) or None


def examples_digest(examples: list[tuple]) -> str:
    """A fingerprint of the training set, so that a resumed training refuses examples that changed (e.g. a
    source run that was resumed meanwhile)."""
    return hashlib.sha256(json.dumps(examples, default=str).encode()).hexdigest()[:16]


def check_resumable(done: dict, settings: dict, digest: str, checkpoint: Path) -> None:
    changes = [f"{section}.{name}: {old!r} -> {settings[section].get(name)!r}"
               for section, values in done["settings"].items() for name, old in values.items()
               if name not in RESUMABLE.get(section, ()) and settings[section].get(name) != old]
    if done["examples"] != digest:
        changes.append("the training examples (the source runs' stores changed)")
    if changes:
        raise ValueError(f"--resume: {checkpoint} was trained with other settings: {'; '.join(changes)}")


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint folder with a complete progress file: the current one, or the one a stop between two
    renames left as .old."""
    for folder in (out / CHECKPOINT, out / f"{CHECKPOINT}.old"):
        if (folder / PROGRESS).is_file():
            return folder
    return None


def write_checkpoint(engine, out: Path, progress: dict) -> None:
    """Adapter, optimizer state and progress into OUTPUT_DIR/checkpoint, replacing the last one only once the
    new one is complete (progress.json is written last)."""
    new, current, old = out / f"{CHECKPOINT}.new", out / CHECKPOINT, out / f"{CHECKPOINT}.old"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    engine.save_checkpoint(new)
    (new / PROGRESS).write_text(json.dumps(progress))
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        current.rename(old)
    new.rename(current)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def stop_after_step() -> Iterator[list[int]]:
    """SIGINT and SIGTERM recorded (the list gets the signal) instead of raising, so that training stops after
    its current step with a checkpoint; a second signal acts as usual. Only in the main thread."""
    stop: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in signals}

    def record(signum, frame) -> None:
        stop.append(signum)
        for s in signals:
            signal.signal(s, previous[s])

    for s in signals:
        signal.signal(s, record)
    try:
        yield stop
    finally:
        for s in signals:
            signal.signal(s, previous[s])


def train(engine, examples: list[tuple], cfg: FinetuneConfig, seed: int, progress: bool = True,
          start_step: int = 0, after_step: Callable[[int, object], None] | None = None) -> list:
    """`cfg.num_epochs` epochs over `examples` in a fresh order each (from `seed`), one engine call per
    optimizer step, so that a progress bar shows the loss and tokens/s as it goes (the engine's warm-up
    and optimizer state carry over between its calls); returns each call's FinetuneStats. `start_step`:
    the steps before it are skipped (their order and seeds still drawn, so later steps get the same);
    `after_step(steps done, stats)` follows every step."""
    from tqdm import tqdm

    rng, per_step = np.random.default_rng(seed), cfg.examples_per_step
    one_epoch = replace(cfg, num_epochs=1)
    stats, step = [], 0
    with tqdm(total=num_steps(len(examples), cfg), initial=start_step, desc="arcsl finetune", unit="step",
              disable=not progress, dynamic_ncols=True) as bar:
        for _ in range(cfg.num_epochs):
            order = [examples[i] for i in rng.permutation(len(examples))]
            for i in range(0, len(order), per_step):
                step_seed = int(rng.integers(2**31))
                step += 1
                if step <= start_step:
                    continue
                stats.append(engine.finetune(order[i:i + per_step], one_epoch, seed=step_seed))
                bar.update(1)
                if stats[-1].losses:
                    bar.set_postfix(loss=f"{stats[-1].losses[-1]:.4f}", tok_s=f"{stats[-1].tokens_per_s:,.0f}")
                if after_step is not None:
                    after_step(step, stats[-1])
    return stats
