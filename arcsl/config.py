"""Every setting of arcsl, as dataclasses: one file shows each knob and its default.

Components receive only the part they use (a sandbox gets a `SandboxConfig`, not the whole run).
Help texts live in `field(metadata={"help": ...})`; the CLI builds its flags from them.
"""

from dataclasses import dataclass, field


@dataclass(slots=True)
class SandboxConfig:
    sandbox_workers: int = field(default=0, metadata={
        "help": "sandbox processes of each worker; 0 = the CPU cores shared out among the workers",
        "aliases": ["num_workers"]})
    timeout_s: float = field(default=5.0, metadata={"help": "wall-clock limit per program (all its inputs), seconds"})
    memory_mb: int = field(default=2048, metadata={"help": "address-space cap per worker process, MB"})
    max_side: int = field(default=30, metadata={"help": "largest accepted output side; outputs beyond it are invalid"})
    check_determinism: bool = field(default=False, metadata={"help": "run each program twice and flag differing outputs"})

    def __post_init__(self):
        if self.sandbox_workers < 0:
            raise ValueError(f"sandbox_workers must be >= 0 (0 = a share of the cores), got {self.sandbox_workers}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.memory_mb < 256:
            raise ValueError(f"memory_mb must be >= 256 (a worker needs ~200 MB for numpy and scipy), got {self.memory_mb}")
        if not 1 <= self.max_side <= 1000:
            raise ValueError(f"max_side must be in 1..1000, got {self.max_side}")


SORT_ORDERS = ("auto", "none", "small-first", "large-first")


@dataclass(slots=True)
class DataConfig:
    dataset: str = field(default="arc-agi-1/evaluation", metadata={
        "help": "named dataset (arc-agi-1/training, arc-agi-1/evaluation, arc-agi-2/training, arc-agi-2/evaluation, "
                "kaggle-2024/..., kaggle-2025/...), a Kaggle *_challenges.json, or a directory of per-task JSON files"})
    solutions: str | None = field(default=None, metadata={
        "help": "solutions JSON; default: *_solutions.json beside a *_challenges.json, if present"})
    task_ids: list[str] | None = field(default=None, metadata={"help": "only these task ids (in this order)"})
    limit: int = field(default=-1, metadata={"help": "keep the first N tasks after selection and sorting; -1 = all"})
    sort: str = field(default="auto", metadata={
        "help": "order tasks by size (total cells, a proxy for prompt length): none (as listed), small-first, "
                "large-first, or auto: large-first when several workers share the queue, else none"})
    skip_invalid: bool = field(default=False, metadata={
        "help": "skip tasks that fail validation (each one is listed) instead of stopping with an error"})

    def __post_init__(self):
        if self.sort not in SORT_ORDERS:
            raise ValueError(f"sort must be one of {', '.join(SORT_ORDERS)}; got {self.sort!r}")
        if self.limit < -1 or self.limit == 0:
            raise ValueError(f"limit must be a positive number of tasks or -1 (all); got {self.limit}")


LORA_TARGETS = {"all-linear": "all-linear", "attention": ["q_proj", "k_proj", "v_proj", "o_proj"]}
TRAINING_KERNELS = ("auto", "liger", "none")  # engine.training_kernels applies them


@dataclass(slots=True)
class ModelConfig:
    model: str = field(default="barc0/Llama-3.1-ARC-Potpourri-Induction-8B", metadata={
        "help": "Hugging Face causal LM: hub id or local directory (with its tokenizer and chat template)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available, else cpu), cuda, cuda:N or cpu"})
    load_in_4bit: bool = field(default=False, metadata={
        "help": "4-bit NF4 base weights via bitsandbytes (GPU only), to fine-tune on small GPUs"})
    lora_rank: int = field(default=32, metadata={"help": "LoRA rank r"})
    lora_alpha: float = field(default=32.0, metadata={
        "help": "LoRA alpha; the update is scaled by alpha/sqrt(r) with rsLoRA, alpha/r without"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input (0 is faster)"})
    lora_targets: str = field(default="all-linear", metadata={
        "help": "layers that get a LoRA: all-linear, attention (q/k/v/o projections), or comma-separated module names"})
    use_rslora: bool = field(default=True, metadata={"help": "rank-stabilised LoRA scaling (alpha/sqrt(r))"})
    use_dora: bool = field(default=False, metadata={"help": "weight-decomposed LoRA (DoRA); slower"})
    lora_seed: int = field(default=0, metadata={"help": "seed of the LoRA initialisation (reset restores this state)"})
    gpu_memory_gb: float = field(default=0.0, metadata={
        "help": "GPU memory this engine may use, GB (GiB); the process is capped there, sampling batches are "
                "planned within it and fine-tuning checkpoints what would not fit, so that e.g. 24 on a bigger GPU "
                "behaves as a 24 GB card; 0 = all of the GPU"})
    adapter: str = field(default="", metadata={
        "help": "a saved LoRA adapter (peft folder, e.g. from arcsl finetune) every task starts from, and returns "
                "to between tasks, instead of zero; it must have this run's LoRA settings (--lora-rank ...)"})
    merge_adapter: bool = field(default=False, metadata={
        "help": "merge --adapter into the base weights at load instead: each task's LoRA then starts from zero "
                "on top of it, at the fast path's full speed, and any adapter rank will do"})
    num_adapters: int = field(default=1, metadata={
        "help": "LoRA adapters the engine holds, each trained on its own and all starting from the same values; "
                "one sampling call can decode prompts of several adapters in one batch"})
    training_kernels: str = field(default="auto", metadata={
        "help": "fused kernels in fine-tuning: auto (Liger's RMSNorm, SwiGLU and rotary kernels when liger-kernel "
                "is installed and the model is on a GPU; +24 to 30 percent tokens/s measured, unless checkpointed), "
                "liger (require them) or none"})

    def __post_init__(self):
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
        if self.num_adapters < 1:
            raise ValueError(f"num_adapters must be >= 1, got {self.num_adapters}")
        if self.gpu_memory_gb < 0:
            raise ValueError(f"gpu_memory_gb must be >= 0 (0 = all of the GPU), got {self.gpu_memory_gb}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.merge_adapter and not self.adapter:
            raise ValueError("--merge-adapter needs --adapter DIR (the adapter to merge)")
        if self.training_kernels not in TRAINING_KERNELS:
            raise ValueError(f"training_kernels must be one of {', '.join(TRAINING_KERNELS)}; "
                             f"got {self.training_kernels!r}")
        if not self.lora_targets.strip(", "):
            raise ValueError(f"lora_targets must be all-linear, attention or module names; got {self.lora_targets!r}")

    @property
    def target_modules(self) -> str | list[str]:
        """The `target_modules` argument of peft's LoraConfig."""
        return LORA_TARGETS.get(self.lora_targets) or [t.strip() for t in self.lora_targets.split(",") if t.strip()]


@dataclass(slots=True)
class SamplingConfig:
    num_samples: int = field(default=8, metadata={"help": "samples per prompt (the prompt is prefilled once for all)"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature; 0 = greedy"})
    top_p: float = field(default=0.95, metadata={
        "help": "nucleus sampling: keep the most likely tokens until their mass reaches this; 1 = off"})
    min_p: float = field(default=0.0, metadata={
        "help": "keep only tokens at least this fraction as likely as the most likely one (SOAR: 0.05); 0 = off"})
    max_new_tokens: int = field(default=1024, metadata={"help": "most tokens generated per sample"})
    ignore_eos: bool = field(default=False, metadata={
        "help": "benchmarks only: every sample gets exactly max_new_tokens (no stop at EOS or at the prompt "
                "format's stop rule)"})
    max_batch_size: int = field(default=0, metadata={
        "help": "most sequences decoded together; 0 = as many as fit in GPU memory (64 on CPU)"})
    cuda_graphs: bool = field(default=True, metadata={"help": "replay the decode step as a CUDA graph (GPU only)"})
    compile_decode: bool = field(default=True, metadata={
        "help": "fuse the decode step's small operations with torch.compile (GPU only; compiled once per process)"})
    merge_lora: bool = field(default=True, metadata={
        "help": "add the LoRA into the base weights while sampling (base-model decode speed); they are restored "
                "exactly afterwards from a copy in host memory, asynchronously. A call that mixes adapters never merges"})

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1] (0 = off), got {self.min_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0 (0 = sized to memory), got {self.max_batch_size}")


LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass(slots=True)
class FinetuneConfig:
    learning_rate: float = field(default=1e-4, metadata={
        "help": "AdamW learning rate (after the warm-up; then as --lr-schedule says)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=0, metadata={
        "help": "optimizer steps of linear warm-up, counted from the last reset (not per call)"})
    lr_schedule: str = field(default="constant", metadata={
        "help": "the learning rate after the warm-up: constant, or decaying to 0 (linear or cosine) over "
                "--schedule-steps"})
    schedule_steps: int = field(default=0, metadata={
        "help": "optimizer steps, from the last reset, over which linear/cosine decay to 0; 0 = the steps of each "
                "call (a per-task round decays within its own fine-tuning; arcsl finetune: the whole training)"})
    num_epochs: int = field(default=1, metadata={"help": "passes over the examples per finetune call"})
    examples_per_step: int = field(default=1, metadata={
        "help": "examples per optimizer step (gradients are accumulated over micro-batches)"})
    max_tokens_per_micro_batch: int = field(default=10240, metadata={
        "help": "most tokens (padding included) in one forward/backward; length-sorted examples are grouped up to it"})
    packing: bool = field(default=False, metadata={
        "help": "pack a micro-batch's examples into one row without padding, each attending only to itself "
                "(position ids restart per example); off = rows padded to the micro-batch's longest. Under SDPA "
                "it was 2.7x slower (a dense block mask; docs/gpu.md)"})
    max_seq_len: int = field(default=10240, metadata={
        "help": "longer examples (prompt + completion) are dropped (the longest BARC example has ~9.7k tokens)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm; 0 = off"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass: much less memory, about a third slower; without it, "
                "micro-batches that run out of memory switch it on for their length and longer"})

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.max_grad_norm < 0:
            raise ValueError(f"weight_decay, warmup_steps and max_grad_norm must be >= 0; got "
                             f"{self.weight_decay}, {self.warmup_steps}, {self.max_grad_norm}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {self.lr_schedule!r}")
        if self.schedule_steps < 0 or 0 < self.schedule_steps <= self.warmup_steps:
            raise ValueError(f"schedule_steps must be 0 (each call's steps) or more than warmup_steps "
                             f"({self.warmup_steps}), got {self.schedule_steps}")
        if self.num_epochs < 1 or self.examples_per_step < 1:
            raise ValueError(f"num_epochs and examples_per_step must be >= 1; got {self.num_epochs}, {self.examples_per_step}")
        if self.max_seq_len < 2 or self.max_tokens_per_micro_batch < self.max_seq_len:
            raise ValueError(f"need 2 <= max_seq_len <= max_tokens_per_micro_batch; got max_seq_len={self.max_seq_len}, "
                             f"max_tokens_per_micro_batch={self.max_tokens_per_micro_batch}")


RELABEL_ROUNDS = ("last", "all")
EXAMPLE_ORDERS = ("worst-first", "best-first", "random")


@dataclass(slots=True)
class RelabelConfig:
    relabel_rounds: str = field(default="last", metadata={
        "help": "attempts that become training examples: last (the round just searched) or all (every round so far)"})
    skip_trained: bool = field(default=True, metadata={
        "help": "skip outputs already trained on in earlier rounds of the same task"})
    drop_identity: bool = field(default=False, metadata={
        "help": "drop programs that return every train input unchanged"})
    prune_programs: bool = field(default=False, metadata={
        "help": "train on each program without the lines that change no train output, where the prompt format "
                "can tell (toy); programs of other formats are trained on as written"})
    max_examples: int = field(default=-1, metadata={
        "help": "examples per round, the best by train score kept; -1 = no cap"})
    example_order: str = field(default="worst-first", metadata={
        "help": "order of a round's examples: worst-first, best-first (by train score) or random"})
    refine_examples: int = field(default=-1, metadata={
        "help": "refinement examples per round besides the others (a refined program whose train outputs differ "
                "from its parent's, as the correct refinement of the task relabelled to them), the best by train "
                "score kept, in the same order; -1 = no cap, 0 = none"})

    def __post_init__(self):
        if self.relabel_rounds not in RELABEL_ROUNDS:
            raise ValueError(f"relabel_rounds must be one of {', '.join(RELABEL_ROUNDS)}; got {self.relabel_rounds!r}")
        if self.example_order not in EXAMPLE_ORDERS:
            raise ValueError(f"example_order must be one of {', '.join(EXAMPLE_ORDERS)}; got {self.example_order!r}")
        if self.max_examples < -1 or self.max_examples == 0:
            raise ValueError(f"max_examples must be a positive number or -1 (no cap); got {self.max_examples}")
        if self.refine_examples < -1:
            raise ValueError(f"refine_examples must be >= 0 or -1 (no cap); got {self.refine_examples}")


STOP_CRITERIA = ("two-solutions", "one-solution", "never")
AUG_COLORS = ("none", "keep-background", "all")


@dataclass(slots=True)
class LoopConfig:
    initial_programs: int = field(default=64, metadata={
        "help": "programs sampled in the first search of a task", "aliases": ["initial_predictions"]})
    programs_per_round: int = field(default=64, metadata={
        "help": "programs sampled after each fine-tuning round", "aliases": ["predictions_per_round"]})
    max_rounds: int = field(default=3, metadata={"help": "learning rounds (fine-tune, then search) per task; 0 = search only"})
    samples_per_view: int = field(default=8, metadata={
        "help": "programs sampled per augmented view; a search uses programs / samples_per_view views"})
    stop: str = field(default="two-solutions", metadata={
        "help": "stop a task early when solved: two-solutions (2 programs with distinct test outputs solve every "
                "train pair), one-solution, or never"})
    task_time_s: float = field(default=-1.0, metadata={
        "help": "time budget per task, seconds: no new round starts after it; -1 = none"})
    prompt_format: str = field(default="barc", metadata={
        "help": "how tasks are shown to the model and programs read from its answers: one of the names in braces"})
    augment_dihedral: bool = field(default=True, metadata={"help": "views use random rotations and flips"})
    augment_colors: str = field(default="keep-background", metadata={
        "help": "view colour permutation: none, keep-background (0 stays black) or all"})
    augment_train_order: bool = field(default=True, metadata={"help": "views shuffle the order of the train pairs"})
    seed: int = field(default=0, metadata={"help": "seed of views, sampling and fine-tuning: a CPU run is exactly reproducible"})
    refine_programs: int = field(default=0, metadata={
        "help": "programs of each round after the first that refine an earlier attempt (shown with its outputs "
                "beside the expected ones, or its error) instead of starting afresh; a multiple of "
                "samples_per_view (one prompt per parent); parents as arcsl/refine.py chooses them; 0 = off"})
    refine_per_parent: int = field(default=1, metadata={
        "help": "times one behaviour (train outputs, or error) may be refined in a task, each time samples_per_view "
                "programs"})
    task_group_size: int = field(default=1, metadata={
        "help": "tasks that learn together in one LoRA adapter: they start together, each round fine-tunes it once "
                "on all of their relabelled attempts, and a task that stops leaves the group; 1 = each its own"})

    def __post_init__(self):
        if self.task_group_size < 1:
            raise ValueError(f"task_group_size must be >= 1 (1 = an adapter per task), got {self.task_group_size}")
        if self.samples_per_view < 1:
            raise ValueError(f"samples_per_view must be >= 1, got {self.samples_per_view}")
        for name in ("initial_programs", "programs_per_round"):
            value = getattr(self, name)
            if value < 1 or value % self.samples_per_view:
                raise ValueError(f"{name} must be a positive multiple of samples_per_view ({self.samples_per_view}); "
                                 f"got {value}")
        if self.max_rounds < 0:
            raise ValueError(f"max_rounds must be >= 0 (0 = search only), got {self.max_rounds}")
        if self.refine_programs < 0 or self.refine_programs % self.samples_per_view \
                or self.refine_programs > self.programs_per_round:
            raise ValueError(f"refine_programs must be a multiple of samples_per_view ({self.samples_per_view}) from "
                             f"0 to programs_per_round ({self.programs_per_round}); got {self.refine_programs}")
        if self.refine_per_parent < 1:
            raise ValueError(f"refine_per_parent must be >= 1, got {self.refine_per_parent}")
        if self.stop not in STOP_CRITERIA:
            raise ValueError(f"stop must be one of {', '.join(STOP_CRITERIA)}; got {self.stop!r}")
        if self.augment_colors not in AUG_COLORS:
            raise ValueError(f"augment_colors must be one of {', '.join(AUG_COLORS)}; got {self.augment_colors!r}")
        if self.task_time_s != -1 and self.task_time_s <= 0:
            raise ValueError(f"task_time_s must be > 0 seconds or -1 (none); got {self.task_time_s}")

    @property
    def total_programs(self) -> int:
        """The programs a task samples if it never stops early."""
        return self.initial_programs + self.max_rounds * self.programs_per_round


@dataclass(slots=True)
class RunConfig:
    output_dir: str = field(default="out/solve", metadata={
        "help": "where the results store, submission.json, metrics.csv, plots and report go"})
    resume: bool = field(default=False, metadata={
        "help": "continue the run in output-dir: finished tasks are skipped, an unfinished one starts over"})
    deadline_s: float = field(default=-1.0, metadata={
        "help": "wall-clock budget of the whole run, seconds from the start of the process (Kaggle: 43200); near "
                "it, tasks get search only and submission.json is complete before it; -1 = none"})
    deadline_margin_s: float = field(default=60.0, metadata={
        "help": "seconds kept free before the deadline for the final exports"})
    workers: int = field(default=0, metadata={
        "help": "worker processes, each with its own engine on its own GPU, taking tasks from one queue (largest "
                "first when there are several); 0 = one per visible GPU, 1 on a CPU. 1 runs in this process"})
    ray_address: str = field(default="", metadata={
        "help": "run the workers as Ray actors on this cluster (auto, or HOST:PORT), one per GPU Ray assigns; "
                "needs pip install 'arcsl[ray]'; empty = processes on this machine"})
    tasks_in_flight: int = field(default=0, metadata={
        "help": "tasks each worker searches together in lockstep rounds, each learning in its own LoRA adapter, or its "
                "group's with --task-group-size (the engine is loaded with that many): a round's sampling for all of them is one engine call, and a "
                "task that stops hands its adapter to the next at once; auto (0) = as many as fill a decode step "
                "(128 rows on a GPU, 64 on a CPU) with --programs-per-round each, and on a GPU no more than the "
                "adapters that half of the memory the weights leave holds (times --task-group-size)", "words": {"auto": 0}})
    progress: bool = field(default=True, metadata={"help": "show a progress bar over tasks"})
    wandb: bool = field(default=False, metadata={
        "help": "log to Weights & Biases (pip install wandb; WANDB_MODE=offline works without network)"})

    def __post_init__(self):
        if self.tasks_in_flight < 0:
            raise ValueError(f"tasks_in_flight must be >= 1, or auto (0); got {self.tasks_in_flight}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = one per GPU), got {self.workers}")
        if self.deadline_s != -1 and self.deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0 seconds or -1 (none); got {self.deadline_s}")
        if self.deadline_margin_s < 0:
            raise ValueError(f"deadline_margin_s must be >= 0, got {self.deadline_margin_s}")
        if self.deadline_s != -1 and self.deadline_margin_s >= self.deadline_s:
            raise ValueError(f"--deadline-margin-s {self.deadline_margin_s:g} leaves nothing of --deadline-s "
                             f"{self.deadline_s:g}: give a margin below the deadline (the default margin is 60 s)")


@dataclass(slots=True)
class SolveConfig:
    """Everything `arcsl solve` needs, grouped as each component receives it (one group per dataclass)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    relabel: RelabelConfig = field(default_factory=RelabelConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    run: RunConfig = field(default_factory=RunConfig)


SELECT_RULES = ("best", "worst", "spread")


@dataclass(slots=True)
class OfflineConfig:
    """`arcsl finetune`: which runs' attempts to learn from, how many per task, and where the adapter goes."""
    from_run: list[str] = field(default_factory=list, metadata={
        "help": "output folders of earlier arcsl solve runs (config.json and results.sqlite) to learn from"})
    output_dir: str = field(default="out/finetune", metadata={
        "help": "where the adapter (adapter_model.safetensors, adapter_config.json) and manifest.json go"})
    examples_per_task: int = field(default=8, metadata={
        "help": "relabelled attempts kept per task (one per distinct output); -1 = all"})
    select: str = field(default="spread", metadata={
        "help": "which ones, by train score: best, worst, or spread evenly from best to worst"})
    seed: int = field(default=0, metadata={"help": "seed of the training order"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar with the loss and tokens/s"})
    wandb: bool = field(default=False, metadata={
        "help": "log each step's loss, tokens/s and learning rate to Weights & Biases (pip install wandb)"})
    checkpoint_every: int = field(default=100, metadata={
        "help": "optimizer steps between checkpoints (adapter and optimizer state in OUTPUT_DIR/checkpoint); "
                "Ctrl-C or SIGTERM also writes one after the current step; 0 = only then"})
    resume: bool = field(default=False, metadata={
        "help": "go on from OUTPUT_DIR/checkpoint (the same runs and settings) instead of starting afresh"})
    num_processes: int = field(default=1, metadata={
        "help": "processes that train the LoRA together (data parallel), one per GPU, started here through "
                "torch.distributed.run; under torchrun or accelerate launch, their processes are used instead"})

    def __post_init__(self):
        if self.num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {self.num_processes}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0 = only when stopped), got {self.checkpoint_every}")
        if not self.from_run:
            raise ValueError("--from-run: give at least one run folder to learn from")
        if self.examples_per_task < -1 or self.examples_per_task == 0:
            raise ValueError(f"examples_per_task must be >= 1 or -1 (all); got {self.examples_per_task}")
        if self.select not in SELECT_RULES:
            raise ValueError(f"select must be one of {', '.join(SELECT_RULES)}; got {self.select!r}")


# What a resumed run may change: where and how fast the work runs, and which tasks are selected, not what a
# task's rounds compute (each task's seed comes from the run's seed and its id). Any other difference makes
# --resume refuse: two configurations would mix in one store.
RESUMABLE_SECTIONS = frozenset({"run"})
RESUMABLE_SETTINGS = frozenset({
    "data.task_ids", "data.limit", "data.sort", "model.gpu_memory_gb", "model.num_adapters",
    "sampling.max_batch_size", "sampling.cuda_graphs", "sampling.compile_decode", "sampling.merge_lora",
    "finetune.max_tokens_per_micro_batch", "finetune.gradient_checkpointing", "sandbox.sandbox_workers",
})


def config_changes(before: dict, after: dict) -> list[str]:
    """The settings of `after` (a SolveConfig as a dict) that differ from `before` and that a resumed run may
    not change, as "section.field: before -> after". A setting `before` did not record (an older version)
    is not compared."""
    changes = []
    for section, values in after.items():
        if section in RESUMABLE_SECTIONS or not isinstance(values, dict):
            continue
        for name, value in values.items():
            old = before.get(section, {}).get(name, value)
            if old != value and f"{section}.{name}" not in RESUMABLE_SETTINGS:
                changes.append(f"{section}.{name}: {old!r} -> {value!r}")
    return changes
