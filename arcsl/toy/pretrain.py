"""Pretrain the toy model from scratch on generated tasks with 1-5 drawing calls.

Examples:
    python -m arcsl.toy.pretrain --tiny --max-steps 20 --output-dir out/toy-tiny          # CPU, seconds
    python -m arcsl.toy.pretrain --max-minutes 7 --output-dir out/toy                    # one GPU
    python -m arcsl.toy.pretrain --init-from arcsl/toy/shipped_model --min-calls 2 --lr 6e-4 --warmup-steps 50 --max-minutes 7 \
        --output-dir out/toy-more                                                          # continue the shipped model
    python -m arcsl.toy.pretrain --init-from arcsl/toy/shipped_model --max-line-gap 32 --prior-fraction 0.25 --lr 1e-3 \
        --warmup-steps 100 --max-minutes 7.6 --output-dir out/toy5                        # how run 5 was made
    python -m arcsl.toy.pretrain --init-from arcsl/toy/shipped_model --max-line-gap 32 --prior-fraction 0.25 \
        --refine-fraction 0.35 --lr 1e-3 --warmup-steps 100 --max-minutes 8 --output-dir out/toy6  # run 6 (shipped)
    python -m arcsl.toy.pretrain --tiny --max-steps 20 --refine-fraction 0.5 --output-dir out/toy-tiny-refine  # CPU
    accelerate launch --num_processes 4 -m arcsl.toy.pretrain --max-minutes 9 --output-dir out/toy

Tasks are generated on the fly by data-loader processes (an endless stream; nothing is stored), so a
run is bounded by time, not by data. Every run stops after `--max-minutes`, saves a resumable
checkpoint (model, optimizer, step, schedule) and exports the model; running the same command again
resumes. With `--max-steps -1` the schedule's length is measured: after the first steps the run
counts its steps per second and fits the cosine schedule to the minutes it has.

Written to the output folder:
    checkpoint/         accelerate state + meta.json (step, schedule length, elapsed time)
    model/              the Hugging Face model and tokenizer, ready for `from_pretrained`
    train_log.jsonl     one line per `--log-every` steps: loss, lr, samples/s, tokens/s

With `--refine-fraction`, some sequences are refinement examples (`prompt.refine_prompt`): a task, a wrong
parent program (`tasks.random_parent`) with what it drew, and the task's program as the completion. The
parent sits in the prompt, so its line starts get no line gaps: those open completion lines only.

Multi-GPU: each process draws its own task stream (seeded by its rank), so the data loader is not
prepared by accelerate; gradients are averaged by DDP as usual. Loss is on the completion only.
"""

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from transformers import LlamaForCausalLM

from arcsl.toy.config import ModelConfig, PretrainConfig, TaskConfig
from arcsl.toy.model import TINY, build_model, num_parameters
from arcsl.toy.prompt import refine_example, training_example
from arcsl.toy.tasks import FOOTER, LINE_PREFIXES, generate_task, random_parent, random_program
from arcsl.toy.tokenizer import build_tokenizer

IGNORE = -100  # label of prompt and padding tokens: no loss there
TINY_TASKS = TaskConfig(min_side=3, max_side=5)
CALIBRATION_STEPS = (20, 120)  # steps between which the run measures its speed (after start-up and warm-up)
RESERVE_S = 20.0  # seconds kept for the final checkpoint and export
POOL_BATCHES = 8  # batches drawn together and grouped by length


# --- data ---------------------------------------------------------------------------------------

def line_starts(tokenizer) -> set[int]:
    """Ids of the tokens that open a program line (each call's `    g = name(g, ` and the closing `    return g`)."""
    return set(tokenizer.convert_tokens_to_ids([*LINE_PREFIXES, FOOTER]))


def completion_positions(completion: list[int], start: int, starts: set[int], max_line_gap: int,
                         rng: np.random.Generator) -> list[int]:
    """Positions of a completion's tokens from `start`, with a random gap (0..max_line_gap) before each line."""
    positions, pos = [], start
    for token in completion:
        if max_line_gap and token in starts:
            pos += int(rng.integers(0, max_line_gap + 1))
        positions.append(pos)
        pos += 1
    return positions


def encode_batch(examples: list[tuple[str, str]], tokenizer, cfg: PretrainConfig, rng: np.random.Generator) -> dict:
    """Tokenize (prompt, completion) pairs into a right-padded batch.

    Returns tensors of shape (batch, length): input_ids, labels (IGNORE on prompt and padding) and
    position_ids. Half the completions start `gap` positions after their prompt (1 <= gap <=
    cfg.max_position_gap): the model then sees the long prompt-to-program distances of long programs.
    Independently, half have gaps between their lines (`cfg.max_line_gap`), so position does not count lines.
    """
    prompts = tokenizer([p for p, _ in examples]).input_ids
    completions = tokenizer([c for _, c in examples], add_special_tokens=False).input_ids
    starts = line_starts(tokenizer)
    rows = []
    for p, c in zip(prompts, completions):
        c = c + [tokenizer.eos_token_id]
        gap = int(rng.integers(1, cfg.max_position_gap + 1)) if cfg.max_position_gap > 0 and rng.random() < 0.5 else 0
        line_gap = cfg.max_line_gap if rng.random() < 0.5 else 0
        positions = list(range(len(p))) + completion_positions(c, len(p) + gap, starts, line_gap, rng)
        rows.append((p + c, [IGNORE] * len(p) + c, positions))
    length = -(-max(len(ids) for ids, _, _ in rows) // 16) * 16  # multiple of 16: friendlier kernels
    input_ids = np.full((len(rows), length), tokenizer.pad_token_id, dtype=np.int64)
    labels = np.full((len(rows), length), IGNORE, dtype=np.int64)
    position_ids = np.zeros((len(rows), length), dtype=np.int64)
    for i, (ids, targets, positions) in enumerate(rows):
        n = len(ids)
        input_ids[i, :n], labels[i, :n], position_ids[i, :n] = ids, targets, positions
        position_ids[i, n:] = np.arange(positions[-1] + 1, positions[-1] + 1 + length - n)
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def draw_example(cfg: PretrainConfig, task_cfg: TaskConfig, rng: np.random.Generator) -> tuple[str, str]:
    """One (prompt, completion) pair: a task with min..max_calls calls, (prior_fraction) a program alone, or
    (refine_fraction) a task with a wrong parent program to correct."""
    # one draw picks the kind: with refine_fraction 0 the stream is the same as before refinement existed
    kind = rng.random()
    if kind < cfg.prior_fraction:
        return "", random_program(int(rng.integers(1, cfg.prior_max_calls + 1)), rng, task_cfg)
    toy = generate_task("pretrain", int(rng.integers(cfg.min_calls, cfg.max_calls + 1)), rng, task_cfg)
    if kind < cfg.prior_fraction + cfg.refine_fraction:
        parent = random_parent(toy, rng, task_cfg)
        return refine_example(toy.task, parent.program, parent.feedback, toy.program)
    return training_example(toy.task, toy.program)


class TaskStream(IterableDataset):
    """An endless stream of batches of freshly generated tasks; each worker seeds its own generator."""

    def __init__(self, cfg: PretrainConfig, task_cfg: TaskConfig, seed: list[int]):
        self.cfg, self.task_cfg, self.seed = cfg, task_cfg, seed

    def __iter__(self):
        worker = get_worker_info()
        rng = np.random.default_rng(self.seed + [worker.id if worker else 0])
        tokenizer = build_tokenizer()
        while True:
            # draw several batches at once and group similar lengths: far less padding than random batches
            pool = [draw_example(self.cfg, self.task_cfg, rng) for _ in range(self.cfg.batch_size * POOL_BATCHES)]
            pool.sort(key=lambda e: len(e[0]) + len(e[1]))
            chunks = [pool[i:i + self.cfg.batch_size] for i in range(0, len(pool), self.cfg.batch_size)]
            for i in rng.permutation(len(chunks)):
                yield encode_batch(chunks[i], tokenizer, self.cfg, rng)


# --- schedule and checkpoints -------------------------------------------------------------------

def learning_rate(step: int, max_steps: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to lr_min_ratio * lr at max_steps (-1: schedule not yet known)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if max_steps == -1:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, cfg: PretrainConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95), fused=fused)


def save_checkpoint(accelerator: Accelerator, folder: Path, meta: dict) -> None:
    """Save the resumable state atomically: write beside, then swap in."""
    tmp = folder.with_name(folder.name + ".tmp")
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every rank has written its part before the folder moves
    if accelerator.is_main_process:
        (tmp / "meta.json").write_text(json.dumps(meta))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    accelerator.wait_for_everyone()


def export_model(accelerator: Accelerator, model, tokenizer, folder: Path) -> None:
    """The model (float32 safetensors) and tokenizer in one folder, for `from_pretrained`."""
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.generation_config.pad_token_id = tokenizer.pad_token_id
        unwrapped.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(str(folder))
    accelerator.wait_for_everyone()


def calibrated_steps(accelerator: Accelerator, step: int, rate: float, elapsed_s: float, cfg: PretrainConfig) -> int:
    """The schedule's length: the steps done plus those that fit in the time left (same on every rank)."""
    left_s = cfg.max_minutes * 60 - elapsed_s - RESERVE_S
    value = [step + max(1, int(0.97 * rate * left_s))]  # 3% slack: the rate drifts
    return broadcast_object_list(value)[0]


# --- training -----------------------------------------------------------------------------------

def pretrain(cfg: PretrainConfig, model_cfg: ModelConfig, task_cfg: TaskConfig) -> dict:
    """Run (or resume) pretraining until the schedule ends or `max_minutes` pass; returns the last log line."""
    start = time.time()
    on_gpu = torch.cuda.is_available() and not cfg.tiny
    accelerator = Accelerator(mixed_precision="bf16" if on_gpu else "no", cpu=not on_gpu)
    out = Path(cfg.output_dir)
    checkpoint = out / "checkpoint"
    meta = {"step": 0, "max_steps": cfg.max_steps, "elapsed_s": 0.0, "samples": 0, "tokens": 0}
    is_resuming = cfg.resume and (checkpoint / "meta.json").exists()
    if is_resuming:
        meta |= json.loads((checkpoint / "meta.json").read_text())
        if cfg.max_steps != -1:
            meta["max_steps"] = cfg.max_steps
    set_seed(cfg.seed + meta["step"])

    tokenizer = build_tokenizer()
    model = (LlamaForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32) if cfg.init_from and not is_resuming
             else build_model(model_cfg, tokenizer))
    model, optimizer = accelerator.prepare(model, make_optimizer(model, cfg, fused=on_gpu))
    if is_resuming:
        accelerator.load_state(str(checkpoint))
    num_workers = cfg.num_workers
    if num_workers == -1:
        num_workers = max(0, (os.cpu_count() or 1) // accelerator.num_processes - 1)
    stream = TaskStream(cfg, task_cfg, [cfg.seed, accelerator.process_index, meta["step"]])
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=on_gpu,
                        prefetch_factor=4 if num_workers else None)

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        print(json.dumps({"config": asdict(cfg), "model": accelerator.unwrap_model(model).config.to_diff_dict(),
                          "tasks": asdict(task_cfg),
                          "parameters": num_parameters(accelerator.unwrap_model(model)),
                          "processes": accelerator.num_processes, "num_workers": num_workers,
                          "device": str(accelerator.device), "resumed_at": meta["step"]}), flush=True)
    log_file = out / "train_log.jsonl"
    first_step = step = meta["step"]
    max_steps = meta["max_steps"]
    elapsed_before, run_start = meta["elapsed_s"], time.time()
    window_loss, window_steps, window_samples, window_tokens = torch.zeros((), device=accelerator.device), 0, 0, 0
    window_start, last_save, calibration_start, last_log = time.time(), time.time(), None, {}
    model.train()
    for batch in loader:
        if max_steps != -1 and step >= max_steps:
            break
        num_tokens = int((batch["input_ids"] != tokenizer.pad_token_id).sum())  # on the CPU: no device sync
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, max_steps, cfg)
        with accelerator.autocast():
            # an all-ones mask: padding is on the right, so causal attention alone is exact; it also
            # stops transformers from reading the position gap as a packed-sequence boundary
            loss = model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"]),
                         position_ids=batch["position_ids"], labels=batch["labels"]).loss
        accelerator.backward(loss)
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_loss += loss.detach()
        window_steps += 1
        window_samples += batch["input_ids"].shape[0] * accelerator.num_processes
        window_tokens += num_tokens * accelerator.num_processes

        if max_steps == -1 and step - first_step == CALIBRATION_STEPS[0]:
            if on_gpu:
                torch.cuda.synchronize()
            calibration_start = time.time()
        elif max_steps == -1 and step - first_step == CALIBRATION_STEPS[1]:
            if on_gpu:
                torch.cuda.synchronize()
            rate = (CALIBRATION_STEPS[1] - CALIBRATION_STEPS[0]) / (time.time() - calibration_start)
            max_steps = calibrated_steps(accelerator, step, rate, time.time() - start, cfg)
            accelerator.print(f"measured {rate:.2f} steps/s: the schedule has {max_steps} steps")

        is_last = max_steps != -1 and step >= max_steps
        if step % cfg.log_every == 0 or is_last:
            loss_value = accelerator.reduce(window_loss, reduction="mean").item() / window_steps
            seconds = time.time() - window_start
            last_log = {"step": step, "loss": round(loss_value, 4), "lr": learning_rate(step - 1, max_steps, cfg),
                        "samples_per_s": round(window_samples / seconds, 1),
                        "tokens_per_s": round(window_tokens / seconds), "elapsed_s": round(
                            elapsed_before + time.time() - run_start, 1)}
            meta["samples"] += window_samples
            meta["tokens"] += window_tokens
            if accelerator.is_main_process:
                print(json.dumps(last_log), flush=True)
                with log_file.open("a") as f:
                    f.write(json.dumps(last_log) + "\n")
            window_loss.zero_()
            window_steps = window_samples = window_tokens = 0
            window_start = time.time()
            # rank 0 decides for everyone: a checkpoint is a collective call, a rank that skips it hangs the rest
            is_out_of_time, is_save_due = broadcast_object_list([time.time() - start > cfg.max_minutes * 60 - RESERVE_S,
                                                                 time.time() - last_save > cfg.save_every_minutes * 60])
            if is_out_of_time:
                break
            if is_save_due:
                meta |= {"step": step, "max_steps": max_steps, "elapsed_s": elapsed_before + time.time() - run_start}
                save_checkpoint(accelerator, checkpoint, meta)
                last_save = time.time()

    meta |= {"step": step, "max_steps": max_steps, "elapsed_s": elapsed_before + time.time() - run_start}
    save_checkpoint(accelerator, checkpoint, meta)
    export_model(accelerator, model, tokenizer, out / "model")
    accelerator.print(json.dumps({"finished": max_steps != -1 and step >= max_steps, **meta}), flush=True)
    return last_log


def make_parser() -> argparse.ArgumentParser:
    from arcsl.cli import add_config_args

    parser = argparse.ArgumentParser(prog="python -m arcsl.toy.pretrain", description=__doc__.split("\n")[0])
    add_config_args(parser, PretrainConfig)
    add_config_args(parser, ModelConfig)
    add_config_args(parser, TaskConfig, skip=("call_weights",))
    return parser


def main(argv: list[str] | None = None) -> int:
    from arcsl.cli import config_from_args

    args = make_parser().parse_args(argv)
    cfg = config_from_args(PretrainConfig, args)
    model_cfg, task_cfg = config_from_args(ModelConfig, args), config_from_args(TaskConfig, args)
    if cfg.tiny:
        model_cfg, task_cfg = TINY, TINY_TASKS
        cfg = replace(cfg, batch_size=min(cfg.batch_size, 4), num_workers=0, log_every=min(cfg.log_every, 1))
    pretrain(cfg, model_cfg, task_cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
