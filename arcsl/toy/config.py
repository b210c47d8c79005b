"""Every setting of the toy domain, as dataclasses (kept beside the domain: `arcsl solve` never needs them).

`TaskConfig` shapes the generated tasks, `ModelConfig` the small Llama, `PretrainConfig` the
pretraining run and `EvalConfig` the evaluation. Help texts live in `field(metadata={"help": ...})`
so that `arcsl.cli.add_config_args` builds the flags from them.
"""

from dataclasses import dataclass, field
from pathlib import Path

CALL_NAMES = ("pixel", "line", "rect", "border")
SHIPPED_MODEL_DIR = Path(__file__).with_name("shipped_model")  # the model `arcsl demo` uses; in the wheel too


@dataclass(slots=True)
class TaskConfig:
    min_side: int = field(default=4, metadata={"help": "smallest grid side (rows and columns drawn independently)"})
    max_side: int = field(default=10, metadata={"help": "largest grid side"})
    num_train: int = field(default=2, metadata={"help": "train pairs per task (shown in the prompt)"})
    num_test: int = field(default=1, metadata={"help": "test pairs per task (held out)"})
    noise_probability: float = field(default=0.5, metadata={
        "help": "chance that an input is a noisy canvas rather than a single colour"})
    max_noise_density: float = field(default=0.5, metadata={
        "help": "largest fraction of random cells on a noisy canvas"})
    black_probability: float = field(default=0.3, metadata={
        "help": "chance that a canvas' background is black (else a random colour)"})
    call_weights: tuple[float, ...] = field(default=(0.25, 0.3, 0.25, 0.2), metadata={
        "help": "relative frequency of pixel, line, rect, border calls"})
    max_shape_side: int = field(default=-1, metadata={
        "help": "longest line / rectangle side in cells; -1 = the grid's side (smaller shapes let many calls fit)"})
    line_order: str = field(default="canonical", metadata={
        "help": "order of a program's lines: canonical (reading order of first points) or random (any order that "
                "keeps the outputs); with random, samples of one task draw different subsets of its shapes"})

    def __post_init__(self):
        if not 3 <= self.min_side <= self.max_side <= 30:
            raise ValueError(f"need 3 <= min_side <= max_side <= 30, got {self.min_side}..{self.max_side}")
        if self.num_train < 1 or self.num_test < 0:
            raise ValueError(f"need num_train >= 1 and num_test >= 0, got {self.num_train}, {self.num_test}")
        if len(self.call_weights) != len(CALL_NAMES) or min(self.call_weights) < 0 or sum(self.call_weights) <= 0:
            raise ValueError(f"call_weights must be {len(CALL_NAMES)} non-negative numbers ({', '.join(CALL_NAMES)}), "
                             f"got {self.call_weights}")
        if self.line_order not in ("canonical", "random"):
            raise ValueError(f"line_order must be canonical or random, got {self.line_order!r}")
        if self.max_shape_side != -1 and self.max_shape_side < 3:
            raise ValueError(f"max_shape_side must be >= 3 or -1 (grid side), got {self.max_shape_side}")


@dataclass(slots=True)
class ModelConfig:
    hidden_size: int = field(default=256, metadata={"help": "model width"})
    num_layers: int = field(default=6, metadata={"help": "transformer blocks"})
    num_heads: int = field(default=8, metadata={"help": "attention heads (head size = hidden_size / num_heads)"})
    intermediate_size: int = field(default=512, metadata={"help": "MLP width"})
    max_positions: int = field(default=4096, metadata={"help": "longest sequence the config declares (RoPE, no table)"})

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")


@dataclass(slots=True)
class PretrainConfig:
    output_dir: str = field(default="out/toy-pretrain", metadata={
        "help": "run folder: checkpoint/ (resumable state), model/ (the HF model + tokenizer), train_log.jsonl"})
    min_calls: int = field(default=1, metadata={"help": "fewest drawing calls per training task"})
    max_calls: int = field(default=5, metadata={"help": "most drawing calls per training task"})
    batch_size: int = field(default=256, metadata={"help": "sequences per step per process"})
    max_steps: int = field(default=-1, metadata={
        "help": "steps of the whole schedule; -1 = as many as fit in --max-minutes, measured after warm-up"})
    max_minutes: float = field(default=10.0, metadata={
        "help": "stop this run (and checkpoint) after this many minutes; a later run resumes"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (AdamW), cosine decay to lr_min_ratio * lr"})
    lr_min_ratio: float = field(default=0.05, metadata={"help": "final learning rate as a fraction of lr"})
    warmup_steps: int = field(default=200, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (matrices only)"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip; 0 = off"})
    max_position_gap: int = field(default=384, metadata={
        "help": "completions of half the samples start up to this many positions after their prompt, so the "
                "model meets prompt-to-program distances that longer programs need; 0 = off"})
    max_line_gap: int = field(default=0, metadata={
        "help": "in half the completions, each program line starts up to this many positions after the previous "
                "one, so that a line's distance from the program's start does not tell its index; 0 = off"})
    prior_fraction: float = field(default=0.0, metadata={
        "help": "fraction of sequences that are a random program alone, with no task (a code prior: programs of "
                "1..prior_max_calls lines, never a task with more than max_calls)"})
    prior_max_calls: int = field(default=30, metadata={"help": "longest program of the code prior, in calls"})
    refine_fraction: float = field(default=0.0, metadata={
        "help": "fraction of sequences that are refinement examples: a task of min..max_calls calls, a parent program "
                "with 1-3 calls wrong, missing, extra or off by one and what it drew, and the task's program as the "
                "completion"})
    num_workers: int = field(default=-1, metadata={
        "help": "data-loader processes per GPU; -1 = cores / GPUs - 1, 0 = inline"})
    seed: int = field(default=0, metadata={"help": "seed of the model init and the task stream"})
    log_every: int = field(default=50, metadata={"help": "log loss and throughput every N steps"})
    save_every_minutes: float = field(default=3.0, metadata={"help": "checkpoint every N minutes (and at the end)"})
    resume: bool = field(default=True, metadata={"help": "resume from output_dir/checkpoint when it exists"})
    init_from: str | None = field(default=None, metadata={
        "help": "start from this saved model folder (e.g. arcsl/toy/shipped_model) with a fresh optimizer and schedule; "
                "ignored when resuming a checkpoint. The model sizes come from that folder"})
    tiny: bool = field(default=False, metadata={
        "help": "a model and batch small enough for a CPU test in seconds (overrides model and batch sizes)"})

    def __post_init__(self):
        if not 1 <= self.min_calls <= self.max_calls:
            raise ValueError(f"need 1 <= min_calls <= max_calls, got {self.min_calls}..{self.max_calls}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be positive or -1 (fit --max-minutes), got {self.max_steps}")
        if self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")
        if not 0 <= self.prior_fraction < 1:
            raise ValueError(f"prior_fraction must be in [0, 1), got {self.prior_fraction}")
        if not 0 <= self.refine_fraction < 1 - self.prior_fraction:
            raise ValueError(f"refine_fraction must be >= 0 and refine_fraction + prior_fraction < 1 (some plain "
                             f"tasks), got {self.refine_fraction} and {self.prior_fraction}")
        if self.prior_max_calls < 1 or self.max_line_gap < 0:
            raise ValueError(f"need prior_max_calls >= 1 and max_line_gap >= 0, got {self.prior_max_calls}, "
                             f"{self.max_line_gap}")


@dataclass(slots=True)
class EvalConfig:
    model_dir: str = field(default=str(SHIPPED_MODEL_DIR), metadata={
        "help": "saved model + tokenizer folder; default: the shipped model"})
    num_tasks: int = field(default=50, metadata={"help": "tasks per in-distribution row of the table"})
    num_ood_tasks: int = field(default=20, metadata={"help": "tasks per out-of-distribution row"})
    num_samples: int = field(default=8, metadata={"help": "programs sampled per task (the k of pass@k)"})
    temperature: float = field(default=0.5, metadata={
        "help": "sampling temperature (0.5 solved a few more tasks than 0.7 and 1.0 at k = 8)"})
    in_calls: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5], metadata={
        "help": "numbers of calls evaluated in distribution"})
    ood_calls: list[int] = field(default_factory=lambda: [6, 8, 10, 15, 20, 25], metadata={
        "help": "numbers of calls evaluated out of distribution (10x10 grids, small shapes)"})
    ood_sides: list[int] = field(default_factory=lambda: [12, 15], metadata={
        "help": "larger grid sides evaluated out of distribution (1-5 calls)"})
    tasks_per_batch: int = field(default=2, metadata={
        "help": "tasks sampled together (x num_samples sequences); small batches are fastest on 2 CPU cores"})
    seed: int = field(default=1, metadata={"help": "seed of the evaluation tasks and of sampling"})
    output: str = field(default="docs/toy_eval.json", metadata={"help": "where the results JSON goes"})
    plot: str = field(default="docs/toy_eval.png", metadata={"help": "where the plot goes"})
