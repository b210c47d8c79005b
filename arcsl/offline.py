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
correct on train are ordinary examples. One LoRA is trained on all of them with the engine's Finetuner (one
code path with the per-task loop) and written as a peft adapter, with `manifest.json`: the source runs,
the examples per task, the settings and the losses.

Training runs one engine call per optimizer step (`train`), so a progress bar shows the loss and tokens/s.

What is not covered yet: checkpoints and resuming, data parallelism over several GPUs, packing (issue 18
lists them).
"""

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from arcsl.config import DataConfig, FinetuneConfig, ModelConfig, OfflineConfig, RelabelConfig
from arcsl.grids import Task, load_dataset
from arcsl.prompting import PromptFormat
from arcsl.relabel import training_examples, training_set
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
                chosen = select_examples(task, store.attempts(task_id), cfg.examples_per_task, cfg.select, relabel)
                examples += training_examples(task, chosen, fmt, relabel.prune_programs)
                counts[f"{run}:{task_id}"] = len(chosen)
    if not examples:
        raise ValueError(f"--from-run {' '.join(runs)}: no attempt with valid outputs to learn from")
    return examples, counts, format_name


def finetune_offline(cfg: OfflineConfig, model: ModelConfig, finetune: FinetuneConfig, relabel: RelabelConfig,
                     formats: dict[str, PromptFormat], engine=None) -> dict:
    """Reads the runs, trains one LoRA on their relabelled attempts, writes it and its manifest to
    `cfg.output_dir`; returns the manifest. `engine`: one to train instead of loading `model` (tests)."""
    out = Path(cfg.output_dir)
    if (out / "adapter_model.safetensors").exists():
        raise ValueError(f"--output-dir {out}: it already holds an adapter; choose another folder")
    examples, counts, format_name = examples_from_runs(cfg.from_run, cfg, relabel, formats)
    print(f"arcsl finetune: {len(examples)} examples from {len(counts)} tasks of {len(cfg.from_run)} runs "
          f"(prompt format {format_name})", file=sys.stderr)
    if engine is None:
        from arcsl.engine.hf import load_engine

        engine = load_engine(model)
    started = time.monotonic()
    steps = train(engine, examples, finetune, cfg.seed, cfg.progress)
    if not any(s.num_steps for s in steps):
        raise ValueError(f"--max-seq-len {finetune.max_seq_len}: no example fits; nothing was trained")
    out.mkdir(parents=True, exist_ok=True)
    engine.save_adapter(out)
    losses = [loss for s in steps for loss in s.losses]
    manifest = {"from_run": cfg.from_run, "prompt_format": format_name, "examples_per_task": counts,
                "num_examples": len(examples), "num_dropped": sum(s.num_dropped for s in steps) // finetune.num_epochs,
                "num_steps": len(losses), "losses": losses, "final_loss": losses[-1] if losses else None,
                "seconds": time.monotonic() - started,
                "settings": {"offline": asdict(cfg), "model": asdict(model), "finetune": asdict(finetune),
                             "relabel": asdict(relabel)}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"arcsl finetune: {len(losses)} steps, loss {manifest['final_loss']}, adapter in {out}", file=sys.stderr)
    return manifest


def train(engine, examples: list[tuple], cfg: FinetuneConfig, seed: int, progress: bool = True) -> list:
    """`cfg.num_epochs` epochs over `examples` in a fresh order each (from `seed`), one engine call per
    optimizer step, so that a progress bar shows the loss and tokens/s as it goes (the engine's warm-up
    and optimizer state carry over between its calls); returns each call's FinetuneStats."""
    from tqdm import tqdm

    rng, per_step = np.random.default_rng(seed), cfg.examples_per_step
    one_epoch = replace(cfg, num_epochs=1)
    num_steps = cfg.num_epochs * -(-len(examples) // per_step)
    stats = []
    with tqdm(total=num_steps, desc="arcsl finetune", unit="step", disable=not progress, dynamic_ncols=True) as bar:
        for _ in range(cfg.num_epochs):
            order = [examples[i] for i in rng.permutation(len(examples))]
            for i in range(0, len(order), per_step):
                step = engine.finetune(order[i:i + per_step], one_epoch, seed=int(rng.integers(2**31)))
                stats.append(step)
                bar.update(1)
                if step.losses:
                    bar.set_postfix(loss=f"{step.losses[-1]:.4f}", tok_s=f"{step.tokens_per_s:,.0f}")
    return stats
